"""The Debian packaging sources (packaging/debian): what the build relies on, checked fast.

The build itself (``python3 packaging/build deb --install-check``: dpkg-buildpackage,
lintian, an install and purge in a clean chroot) takes minutes and runs outside the test
suite; docs/install.md says how long.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.paths import REPO

DEBIAN = REPO / "packaging" / "debian"
BUILD = REPO / "packaging" / "build" / "__main__.py"


def control() -> str:
    return (DEBIAN / "control").read_text(encoding="utf-8")


def test_two_packages_with_debhelper_13_and_mosquitto_recommended() -> None:
    text = control()
    assert "debhelper-compat (= 13)" in text
    assert text.count("Package: ") == 2
    assert "Package: edgefed-edge" in text and "Package: edgefed-server" in text
    assert text.count("Recommends: mosquitto") == 2


@pytest.mark.parametrize("role", ["edge", "server"])
@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_scripts_parse_and_leave_systemctl_to_debhelper(role: str, script: str) -> None:
    path = DEBIAN / f"edgefed-{role}.{script}"
    assert subprocess.run(["sh", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text(encoding="utf-8")
    assert "#DEBHELPER#" in text and "systemctl" not in text  # generated code guards it


@pytest.mark.parametrize("role", ["edge", "server"])
def test_every_lintian_override_says_why(role: str) -> None:
    reason = False  # a comment block gives the reason for the overrides right after it
    for line in (DEBIAN / f"edgefed-{role}.lintian-overrides").read_text().splitlines():
        if line.startswith("#"):
            reason = True
        elif not line.strip():
            reason = False
        else:
            assert reason, f"override {line!r} has no reason above it"


def test_the_builder_ships_every_unit_and_config_it_names() -> None:
    proc = subprocess.run(
        [sys.executable, str(BUILD), "--help"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0 and "--install-check" in proc.stdout
    units = {p.name for p in (REPO / "packaging" / "systemd").glob("*.service")}
    text = BUILD.read_text(encoding="utf-8")
    assert all(f'"{u}"' in text for u in units)
    installs = (DEBIAN / "edgefed-edge.install").read_text() + (
        DEBIAN / "edgefed-server.install"
    ).read_text()
    shipped = (BUILD.parent / "wheelhouse.py").read_text(encoding="utf-8")  # CONFIGS
    for name in ("edged.yaml", "serverd.yaml", "npu-driver.yaml"):
        assert f"etc/edgefed/{name}" in installs and f'"{name}"' in shipped
