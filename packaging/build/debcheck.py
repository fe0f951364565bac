"""Install the two .debs in a clean Debian chroot, use them, purge them, count what is left.

``python3 packaging/build deb --install-check``: a minimal bookworm made once with
debootstrap (kept in ``artifacts/deb/chroot-base``, with python3, adduser and systemd for
``systemd-analyze``) is copied afresh; inside the copy, ``dpkg -i`` both packages, run
``edged --version``, ``edged check-config /etc/edgefed/edged.yaml``, ``serverd
check-config /etc/edgefed/serverd.yaml`` and ``systemd-analyze verify`` on the installed
units (no output allowed), then ``dpkg -P`` both and compare the file list with the one
taken before the install. Left behind may only be the backups adduser makes of the
account files (the ``edgefed`` system user stays, as Debian policy asks); gone may only be
``/opt``, which no package of the chroot owns.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "python3,python3.11,adduser,systemd"
# not files of the system under test: package manager caches and logs
IGNORED = (
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "var/cache",
    "var/log",
    "var/lib/dpkg",
    "var/lib/apt",
)
ACCOUNT_BACKUPS = {"etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/subuid-"}
# /opt belongs to no package of a minbase chroot: dpkg removes it with the last package
# that shipped it, as it should
EMPTIED_DIRS = {"opt"}
UNITS = ("edged.service", "edgefed-deviceplugin.service", "serverd.service")


class CheckError(Exception):
    """The installed packages misbehaved; the message says where."""


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckError(f"{what}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def base_chroot(cache: Path, packages: str = BASE_PACKAGES) -> Path:
    """A minbase bookworm with ``packages``, made once in ``cache`` (the OCI base, too)."""
    if (cache / "etc" / "debian_version").is_file():
        return cache
    tmp = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _run(
        ["debootstrap", "--variant=minbase", f"--include={packages}", SUITE, str(tmp), MIRROR],
        "debootstrap",
    )
    tmp.rename(cache)
    return cache


def files(root: Path) -> set[str]:
    out = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if not any(rel == i or rel.startswith(i + "/") for i in IGNORED):
            out.add(rel)
    return out


def install_check(debs: list[Path], work: Path, step: Callable[[str], None]) -> None:
    base = base_chroot(work / "chroot-base")
    step(f"clean chroot {base.relative_to(work.parent.parent)} ({SUITE} minbase)")
    root = work / "chroot"
    shutil.rmtree(root, ignore_errors=True)
    _run(["cp", "-a", str(base), str(root)], "copy the base chroot")
    before = files(root)
    for deb in debs:
        shutil.copy(deb, root / "tmp" / deb.name)
    chroot = ["chroot", str(root)]
    _run([*chroot, "dpkg", "-i", *(f"/tmp/{d.name}" for d in debs)], "dpkg -i")
    version = _run([*chroot, "edged", "--version"], "edged --version").strip()
    _run([*chroot, "edged", "check-config", "/etc/edgefed/edged.yaml"], "edged check-config")
    _run([*chroot, "serverd", "check-config", "/etc/edgefed/serverd.yaml"], "serverd check-config")
    units = [str(root / "lib" / "systemd" / "system" / u) for u in UNITS]
    said = _run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *units], "verify")
    if said.strip():
        raise CheckError(f"systemd-analyze verify warned:\n{said}")
    step(f"dpkg -i, {version}, check-config of both, systemd-analyze verify: clean")
    _run([*chroot, "dpkg", "-P", "edgefed-edge", "edgefed-server"], "dpkg -P")
    for deb in debs:
        (root / "tmp" / deb.name).unlink()
    left = files(root) - before - ACCOUNT_BACKUPS
    gone = before - files(root) - EMPTIED_DIRS
    if left or gone:
        raise CheckError(f"dpkg -P left {sorted(left)} and removed {sorted(gone)}")
    step(f"dpkg -P: no file left behind ({len(before)} files compared)")
    shutil.rmtree(root)
