"""Health checks that ``install_image`` runs after switching slots (``--health-cmd``,
``--health-url``): the daemon must come up healthy on the new image, or the install is
undone. A check raises ImageError with the reason; it never raises anything else."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from edgefed.errors import ImageError

from .install import HealthCheck
from .manifest import Manifest


def command(argv: Sequence[str], timeout: float) -> HealthCheck:
    """Run ``argv`` (no shell) with EDGEFED_IMAGE, _NAME and _VERSION set; exit 0 = healthy.

    For a daemon that loads images at start: ``systemctl restart edged``.
    """

    def check(manifest: Manifest, path: Path) -> None:
        env = os.environ | {
            "EDGEFED_IMAGE": str(path),
            "EDGEFED_IMAGE_NAME": manifest.name,
            "EDGEFED_IMAGE_VERSION": manifest.version,
        }
        try:
            proc = subprocess.run(
                list(argv), env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise ImageError(f"{argv[0]} did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise ImageError(f"{argv[0]} could not run: {exc.strerror or exc}") from exc
        if proc.returncode != 0:
            said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
            raise ImageError(
                f"{argv[0]} exited {proc.returncode}" + (f": {said[0]}" if said else "")
            )

    return check


def http(url: str, timeout: float, interval: float = 0.5) -> HealthCheck:
    """Poll ``url`` (edged: ``http://127.0.0.1:8080/readyz``) until it answers 200."""

    def check(_manifest: Manifest, _path: Path) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=max(interval, 1.0)) as reply:
                    if reply.status == 200:
                        return
                    last = f"HTTP {reply.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            if time.monotonic() + interval > deadline:
                raise ImageError(f"{url} not healthy within {timeout:g} s (last: {last})")
            time.sleep(interval)

    return check


def chain(checks: Sequence[HealthCheck]) -> HealthCheck | None:
    """All of ``checks`` in order (the command first, then the URL); None if there are none."""
    if not checks:
        return None

    def check(manifest: Manifest, path: Path) -> None:
        for one in checks:
            one(manifest, path)

    return check
