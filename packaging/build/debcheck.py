"""Install the two .debs in a clean Debian chroot, use them, purge them, count what is left.

``python3 packaging/build deb --install-check``: a minimal bookworm made once with
debootstrap (kept in ``artifacts/deb/chroot-base-<tag>``, with python3, the server's
libraries, adduser and systemd for ``systemd-analyze``; the tag follows the package
list) is copied afresh; inside the copy, ``dpkg -i`` both packages, run
``edged --version``, ``edged check-config /etc/edgefed/edged.yaml``, ``serverd
check-config /etc/edgefed/serverd.yaml`` (once serverd's broker certificates are made as
docs/security.md says: ``edged certs init`` and ``issue serverd``; deleted before the
purge, as a site's own files would be) and ``systemd-analyze verify`` on the installed
units (no output allowed), check the owners and modes postinst gives (``MODES``), then
``dpkg -P`` both and compare the file list with the one taken before the install. Left
behind may only be the backups adduser makes of the account files (the ``edgefed`` system
user stays, as Debian policy asks); gone may only be ``/opt``, which no package of the
chroot owns.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# the packages' dependencies that minbase lacks (dpkg -i installs none), and systemd
BASE_PACKAGES = "python3,python3.11,python3-venv,libpython3.11,adduser,systemd"
BASE_TAG = hashlib.sha256(BASE_PACKAGES.encode()).hexdigest()[:8]  # a new list, a new chroot
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
TLS = "/etc/edgefed/tls"  # the broker certificates of `edged certs` (docs/security.md)
# what postinst sets up (docs/install.md): the services, user edgefed, read secrets in
# keys/ and the configs; the state root is passable by the device plugin (root without
# capabilities); each daemon's state is its own
MODES = {
    "etc/edgefed/edged.yaml": ("root", "edgefed", 0o640),
    "etc/edgefed/serverd.yaml": ("root", "edgefed", 0o640),
    "etc/edgefed/keys": ("root", "edgefed", 0o750),
    "etc/edgefed/tls": ("root", "root", 0o755),
    "var/lib/edgefed": ("edgefed", "edgefed", 0o755),
    "var/lib/edgefed/edged": ("edgefed", "edgefed", 0o750),
    "var/lib/edgefed/serverd": ("edgefed", "edgefed", 0o750),
    "var/lib/edgefed/images": ("edgefed", "edgefed", 0o755),
    "var/lib/edgefed/images/slots": ("edgefed", "edgefed", 0o755),
}


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


def wrong_modes(root: Path) -> list[str]:
    """Paths of ``MODES`` whose owner, group or mode in ``root`` differ, as messages."""

    def names(table: str) -> dict[int, str]:
        lines = (root / "etc" / table).read_text(encoding="utf-8").splitlines()
        return {int(f[2]): f[0] for f in (line.split(":") for line in lines) if len(f) > 2}

    users, groups = names("passwd"), names("group")
    wrong = []
    for rel, want in MODES.items():
        info = (root / rel).stat()
        got = (users.get(info.st_uid), groups.get(info.st_gid), stat.S_IMODE(info.st_mode))
        if got != want:
            wrong.append(
                f"/{rel}: {got[0]}:{got[1]} {got[2]:04o}, not {want[0]}:{want[1]} {want[2]:04o}"
            )
    return wrong


def install_check(debs: list[Path], base: Path, work: Path, step: Callable[[str], None]) -> None:
    """``debs`` installed, used and purged in a copy of ``base`` (``base_chroot``) made in
    ``work``."""
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
    for certs in (["init", TLS], ["issue", TLS, "serverd"]):  # what serverd.yaml names
        _run([*chroot, "edged", "certs", *certs], f"edged certs {certs[0]}")
    _run([*chroot, "serverd", "check-config", "/etc/edgefed/serverd.yaml"], "serverd check-config")
    units = [str(root / "lib" / "systemd" / "system" / u) for u in UNITS]
    said = _run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *units], "verify")
    if said.strip():
        raise CheckError(f"systemd-analyze verify warned:\n{said}")
    wrong = wrong_modes(root)
    if wrong:
        raise CheckError("postinst left wrong modes:\n" + "\n".join(wrong))
    step(f"dpkg -i, {version}, check-config of both, systemd-analyze verify, modes: clean")
    for made in (root / TLS.lstrip("/")).iterdir():
        made.unlink()
    _run([*chroot, "dpkg", "-P", "edgefed-edge", "edgefed-server"], "dpkg -P")
    for deb in debs:
        (root / "tmp" / deb.name).unlink()
    left = files(root) - before - ACCOUNT_BACKUPS
    gone = before - files(root) - EMPTIED_DIRS
    if left or gone:
        raise CheckError(f"dpkg -P left {sorted(left)} and removed {sorted(gone)}")
    step(f"dpkg -P: no file left behind ({len(before)} files compared)")
    shutil.rmtree(root)
