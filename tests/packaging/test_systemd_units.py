"""The systemd units under packaging/systemd: notify + watchdog, hardening, and a clean
``systemd-analyze verify`` (no warnings) in a root that holds the installed binaries."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgefed.errors import EXIT_CONFIG
from tests.support.paths import REPO

UNITS = REPO / "packaging" / "systemd"
DAEMONS = ("edged.service", "serverd.service")
ALL_UNITS = (*DAEMONS, "edgefed-deviceplugin.service")
HARDENING = {
    "ProtectSystem": "strict",
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "DevicePolicy": "closed",
}


def read_unit(name: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


@pytest.mark.parametrize("name", DAEMONS)
def test_daemons_are_notify_units_with_a_watchdog(name: str) -> None:
    unit = read_unit(name)
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"] and unit["Restart"] == ["on-failure"]
    assert unit["User"] == ["edgefed"]
    daemon = name.split(".")[0]
    role = "edge" if daemon == "edged" else "server"  # the venv of each .deb
    assert unit["ExecStart"][0].startswith(f"/opt/edgefed/{role}/bin/{daemon} run -c /etc/")


def test_the_device_plugin_is_a_notify_unit_with_a_watchdog() -> None:
    unit = read_unit("edgefed-deviceplugin.service")
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["WatchdogSec"] == ["30s"] and unit["Restart"] == ["always"]
    assert "--poll-interval" not in unit["ExecStart"][0]  # 1 s: well below half of 30 s


@pytest.mark.parametrize("name", ALL_UNITS)
def test_every_unit_is_hardened(name: str) -> None:
    unit = read_unit(name)
    for key, value in HARDENING.items():
        assert unit.get(key) == [value], f"{name}: {key}"
    assert unit["ReadWritePaths"], name
    assert all(d.startswith("char-") for d in unit["DeviceAllow"]), name


@pytest.mark.parametrize("name", ALL_UNITS)
def test_a_config_error_is_not_restarted_for_ever(name: str) -> None:
    """Restart= would start a daemon with a bad config again every 5 s, for ever."""
    assert read_unit(name)["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]


@pytest.mark.parametrize(
    "argv",
    [
        ["edged", "run", "-c", "{config}"],
        ["serverd", "run", "-c", "{config}"],
        ["drivers.deviceplugin", "--driver-config={config}"],
        ["edged", "run", "--no-such-option"],
    ],
    ids=["edged", "serverd", "deviceplugin", "usage"],
)
def test_the_daemons_exit_with_the_status_the_units_keep_from_restarting(
    argv: list[str], tmp_path: Path
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("no_such_section: {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", *(a.format(config=config) for a in argv)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_CONFIG, proc.stderr


def test_edged_may_open_cameras_and_npus() -> None:
    assert read_unit("edged.service")["DeviceAllow"] == ["char-video4linux rw", "char-accel rw"]


def analyze_root(tmp_path: Path) -> Path:
    """A root with the system's own units and stand-ins for the binaries the .debs install."""
    tool = shutil.which("systemd-analyze")
    assert tool is not None, "systemd-analyze is missing: packaging/dev/setup.sh installs systemd"
    root = tmp_path / "root"
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    (root / "usr" / "lib" / "systemd" / "system").symlink_to("/lib/systemd/system")
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    for exe in ("edge/bin/edged", "edge/bin/python", "server/bin/serverd"):
        path = root / "opt" / "edgefed" / exe
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    for name in ALL_UNITS:
        shutil.copy(UNITS / name, root / "etc" / "systemd" / "system" / name)
    return root


def verify(root: Path, *names: str) -> subprocess.CompletedProcess[str]:
    paths = [str(root / "etc" / "systemd" / "system" / n) for n in names]
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *paths],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_analyze_verify_has_no_warnings(tmp_path: Path) -> None:
    proc = verify(analyze_root(tmp_path), *ALL_UNITS)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_verify_would_see_a_bad_key_and_a_missing_binary(tmp_path: Path) -> None:
    root = analyze_root(tmp_path)
    unit = root / "etc" / "systemd" / "system" / "serverd.service"
    unit.write_text(unit.read_text().replace("[Service]", "[Service]\nWatchDogSec=5s"))
    assert "Unknown key 'WatchDogSec'" in verify(root, "serverd.service").stderr
    (root / "opt" / "edgefed" / "edge" / "bin" / "edged").unlink()
    proc = verify(root, "edged.service")
    assert proc.returncode != 0 and "/opt/edgefed/edge/bin/edged is not executable" in proc.stderr
