"""Pinned registry wheels: fetched with ``pip download --no-deps``, checked by sha256.

Wheels are only ever opened as zip archives: nothing from them is installed into
or imported by the daemon's environment.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from edgefed.errors import ImageError

from .recipe import WheelPin
from .verify import sha256_file


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_matches(path: Path, pin: WheelPin) -> bool:
    """True when a wheel file name is for the pin's project and version."""
    parts = path.name.split("-")
    return (
        path.suffix == ".whl"
        and len(parts) >= 5
        and canonical_name(parts[0]) == canonical_name(pin.package)
        and parts[1] == pin.version
    )


class PipDownloader:
    """Runs ``pip download --no-deps PACKAGE==VERSION`` with the given interpreter."""

    def __init__(self, python: str = sys.executable, extra_args: Sequence[str] = ()) -> None:
        self._python = python
        self._extra_args = list(extra_args)

    def download(self, pin: WheelPin, dest: Path) -> None:
        cmd = [
            self._python,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            str(dest),
            *self._extra_args,
            f"{pin.package}=={pin.version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
            cause = (errors or proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ImageError(f"pip download {pin.package}=={pin.version} failed: {cause}")


class WheelCache:
    """A folder of verified wheels; missing ones are downloaded on demand."""

    def __init__(self, folder: Path, downloader: PipDownloader) -> None:
        self.folder = folder
        self._downloader = downloader

    def get(self, pin: WheelPin) -> Path:
        """The cached wheel for ``pin``, downloading it when absent or corrupt."""
        for path in sorted(self.folder.glob("*.whl")):
            if wheel_matches(path, pin) and sha256_file(path) == pin.sha256:
                return path
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.folder, prefix=".download-") as tmp:
            self._downloader.download(pin, Path(tmp))
            got = [p for p in Path(tmp).glob("*.whl") if wheel_matches(p, pin)]
            if len(got) != 1:
                raise ImageError(
                    f"pip download {pin.package}=={pin.version} gave {len(got)} matching wheels"
                )
            actual = sha256_file(got[0])
            if actual != pin.sha256:
                raise ImageError(
                    f"{got[0].name}: sha256 {actual} does not match the pinned {pin.sha256}"
                )
            final = self.folder / got[0].name
            got[0].replace(final)
        return final


def extract_member(wheel: Path, member: str, dest: Path) -> None:
    """Copy one member of a wheel to ``dest``."""
    with _open(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError as exc:
            raise ImageError(f"{wheel.name} has no member {member}") from exc
        with zf.open(info) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


def read_text_member(wheel: Path, member: str) -> str:
    with _open(wheel) as zf:
        try:
            return zf.read(member).decode("utf-8")
        except KeyError as exc:
            raise ImageError(f"{wheel.name} has no member {member}") from exc
        except UnicodeDecodeError as exc:
            raise ImageError(f"{wheel.name}: {member} is not UTF-8 text") from exc


def _open(wheel: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ImageError(f"{wheel}: not a readable wheel ({exc})") from exc
