"""Reading Kubernetes pod specs and the images' entry points in the manifest tests."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import yaml

from tests.support.paths import REPO

CONTAINERFILE = REPO / "packaging" / "oci" / "Containerfile"


def triton_entry_point() -> list[str]:
    """The ENTRYPOINT of the edgefed-serverd-triton image (what its pods run)."""
    text = CONTAINERFILE.read_text().split("FROM serverd AS serverd-triton")[1]
    line = next(line for line in text.splitlines() if line.startswith("ENTRYPOINT "))
    entry: list[str] = yaml.safe_load(line.removeprefix("ENTRYPOINT "))
    return entry


def secret_of(pod: dict[str, Any], container: dict[str, Any], path: str) -> str:
    """The Secret whose volume ``container`` mounts, read-only and whole (no subPath, so
    a changed Secret reaches the file), at the directory holding ``path``."""
    directory = str(PurePosixPath(path).parent)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly") is True and "subPath" not in mount, mount
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret: str = volume["secret"]["secretName"]
    return secret
