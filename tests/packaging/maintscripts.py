"""The .debs' maintainer scripts as dpkg runs them, without building the packages.

``generate`` stages the debhelper tree exactly as ``packaging/build deb`` does
(``stage_debian``), then runs the two debhelper steps that write the scripts: the
``override_dh_installsystemd`` target of ``debian/rules`` and ``dh_installdeb``, which puts
the generated snippets in place of ``#DEBHELPER#`` (well under a second; no venv is built).
``build`` builds the two .debs themselves from the same tree with ``dpkg-buildpackage``,
the venvs left out (a few seconds).

``Sandbox`` runs a script with the file system paths it touches moved under a temporary
root and the system tools it calls replaced by stand-ins that record each call:
``deb-systemd-invoke``, ``deb-systemd-helper``, ``systemctl``, ``adduser``, ``getent``,
``install`` (which only makes the directory) and ``dpkg-statoverride`` (which keeps its
overrides in a file). ``/run/systemd/system`` exists in the sandbox: systemd "runs".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from tests.support.builder import builder_module

PACKAGES = ("edgefed-edge", "edgefed-server")
MOVED = ("/run/systemd/system", "/opt/edgefed", "/var/lib/edgefed", "/etc/edgefed")
STAND_INS = {
    "deb-systemd-invoke": "",
    "deb-systemd-helper": "",
    "systemctl": "",
    "adduser": "",
    "getent": "exit 2",  # no video or render group here
    "install": 'for last; do :; done; mkdir -p "$last"',  # install -d ... DIR
    "dpkg-statoverride": """db="$SANDBOX/statoverride"; touch "$db"
case "$1" in
    --list) grep -q " $2\\$" "$db" ;;
    --update) echo "$3 $4 $5 $6" >> "$db" ;;
    --remove) grep -v " $2\\$" "$db" > "$db.new" || true; mv "$db.new" "$db" ;;
esac""",
}


def units() -> dict[str, tuple[str, ...]]:
    """Which unit goes into which package: the builder's own table."""
    return dict(_builder().UNITS)


def _builder() -> ModuleType:
    return builder_module("edgefed_deb_builder", "__main__.py")


def generate(out: Path) -> dict[str, Path]:
    """The DEBIAN/ folder of each package, holding its final maintainer scripts."""
    for tool in ("dh_installsystemd", "dh_installdeb"):
        assert shutil.which(tool), f"{tool} is missing: packaging/dev/setup.d/60-deb-tools.sh"
    builder = _builder()
    (out / "wheels").mkdir(parents=True, exist_ok=True)
    tree: Path = builder.stage_debian(out, "0.1.0")
    for argv in (["make", "-f", "debian/rules", "override_dh_installsystemd"], ["dh_installdeb"]):
        proc = subprocess.run(argv, cwd=tree, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return {package: tree / "debian" / package / "DEBIAN" for package in PACKAGES}


def build(out: Path) -> dict[str, Path]:
    """Each package's .deb, built as ``packaging/build deb`` builds it but for the venvs:
    ``make-venv`` makes only their ``bin/`` (the real one installs ~400 MB of wheels)."""
    assert shutil.which("dpkg-buildpackage"), "packaging/dev/setup.d/60-deb-tools.sh"
    (out / "wheels").mkdir(parents=True, exist_ok=True)
    tree: Path = _builder().stage_debian(out, "0.1.0")
    (tree / "debian" / "make-venv").write_text('mkdir -p "$1/opt/edgefed/$2/bin"\n')
    argv = ["dpkg-buildpackage", "-us", "-uc", "-b", "-d"]  # -d: no python3-venv needed
    proc = subprocess.run(argv, cwd=tree, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {package: out / f"{package}_0.1.0_amd64.deb" for package in PACKAGES}


@dataclass
class Sandbox:
    """A temporary root for maintainer scripts; ``calls`` are the stand-ins' command lines."""

    root: Path

    def __post_init__(self) -> None:
        self.bin = self.root / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        for name, body in STAND_INS.items():
            tool = self.bin / name
            tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "$SANDBOX/calls"\n{body}\n')
            tool.chmod(0o755)
        for path in MOVED:
            self.path(path).mkdir(parents=True, exist_ok=True)
        for package in PACKAGES:
            self.path(f"/opt/edgefed/{package.split('-')[1]}").mkdir(exist_ok=True)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def run(self, script: Path, *args: str) -> None:
        """Run ``script`` with ``args`` as dpkg would; it must succeed."""
        if not script.exists():  # debhelper writes no script that would be empty
            return
        text = script.read_text(encoding="utf-8")
        for path in MOVED:
            text = text.replace(path, str(self.path(path)))
        moved = self.root / f"{script.name}.sh"
        moved.write_text(text, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k != "DPKG_ROOT"}
        env |= {"PATH": f"{self.bin}:/usr/bin:/bin", "SANDBOX": str(self.root)}
        proc = subprocess.run(
            ["sh", str(moved), *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"{script.name} {' '.join(args)}: {proc.stderr}"

    def calls(self, tool: str | None = None) -> list[str]:
        log = self.root / "calls"
        lines = log.read_text().splitlines() if log.exists() else []
        return [line for line in lines if tool is None or line.split(" ", 1)[0] == tool]

    def forget(self) -> None:
        """Start a new record of calls."""
        (self.root / "calls").unlink(missing_ok=True)

    def directories(self) -> dict[str, tuple[str, str, int]]:
        """Each directory the scripts made with ``install -d``: (owner, group, mode)."""
        made = {}
        for line in self.calls("install"):
            args = line.split()[1:]
            assert args[0] == "-d", f"unexpected call {line!r}"
            options = {"-o": "root", "-g": "root", "-m": "0755"}  # install's defaults
            rest = args[1:]
            while rest and rest[0] in options:
                options[rest[0]], rest = rest[1], rest[2:]
            for path in rest:
                made[self._unmoved(path)] = (options["-o"], options["-g"], int(options["-m"], 8))
        return made

    def overrides(self) -> dict[str, tuple[str, str, int]]:
        """The ``dpkg-statoverride`` entries in force: path -> (owner, group, mode)."""
        db = self.root / "statoverride"
        entries = {}
        for line in db.read_text().splitlines() if db.exists() else []:
            owner, group, mode, path = line.split()
            entries[self._unmoved(path)] = (owner, group, int(mode, 8))
        return entries

    def _unmoved(self, path: str) -> str:
        return "/" + Path(path).relative_to(self.root).as_posix()
