"""The Debian packaging sources (packaging/debian): what the build relies on, checked fast,
and the two .debs built from them with the venvs left out (``maintscripts.build``).

The build itself (``python3 packaging/build deb --install-check``: dpkg-buildpackage with
the venvs, lintian, an install and purge in a clean chroot) takes minutes and runs outside
the test suite; docs/install.md says how long.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.packaging.maintscripts import build, units
from tests.packaging.test_systemd_units import read_unit
from tests.support.builder import builder_module
from tests.support.paths import REPO

DEBIAN = REPO / "packaging" / "debian"
BUILD = REPO / "packaging" / "build" / "__main__.py"


def control() -> str:
    return (DEBIAN / "control").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("deb"))


def field(deb: Path, name: str) -> list[str]:
    """A relationship field of a built package, one package name per entry."""
    proc = subprocess.run(["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [re.split(r"[ (]", entry.strip(), maxsplit=1)[0] for entry in proc.stdout.split(",")]


def files(deb: Path) -> dict[str, bytes]:
    """The regular files a built package installs: absolute path -> content."""
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
    assert tar.returncode == 0, tar.stderr
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        for member in archive:
            extracted = archive.extractfile(member) if member.isfile() else None
            if extracted is not None:
                out[member.name.removeprefix(".")] = extracted.read()
    return out


def test_two_packages_with_debhelper_13() -> None:
    text = control()
    assert "debhelper-compat (= 13)" in text
    assert text.count("Package: ") == 2
    assert "Package: edgefed-edge" in text and "Package: edgefed-server" in text


def test_the_built_packages_depend_on_what_they_run(debs: dict[str, Path]) -> None:
    """Both run the venv's Python 3.11; serverd's models run in Triton's python backend,
    whose stub links libpython3.11.so.1.0: the Triton image's base adds the library for
    it, and a server without it cannot load a model."""
    oci = builder_module("oci", "oci.py")
    assert "libpython3.11" in oci.BASE_PACKAGES.split(",")
    for package, deb in debs.items():
        assert field(deb, "Recommends") == ["mosquitto"]
        depends = field(deb, "Depends")
        assert {"python3", "python3.11", "adduser"} <= set(depends)
        server = package == "edgefed-server"  # its setup_env.sh makes Triton's venv
        assert ("libpython3.11" in depends) == ("python3-venv" in depends) == server, package


def test_every_units_documentation_is_installed_by_its_package(debs: dict[str, Path]) -> None:
    for package, names in units().items():
        installed = files(debs[package])
        for name in names:
            for link in read_unit(name)["Documentation"]:
                path = link.removeprefix("file://")
                assert installed.get(path) == (REPO / "README.md").read_bytes(), (name, path)


def test_the_shipped_serverd_config_says_which_broker_file_is_missing(
    debs: dict[str, Path], tmp_path: Path
) -> None:
    """The .deb's /etc/edgefed/serverd.yaml connects with TLS as serverd (docs/security.md):
    check-config names the first file not made yet, then passes once ``edged certs`` has
    made them as the docs say (here in a temporary directory, not /etc/edgefed/tls)."""
    shipped = files(debs["edgefed-server"])["/etc/edgefed/serverd.yaml"].decode()
    assert "/etc/edgefed/tls/" in shipped
    tls = tmp_path / "tls"
    config = tmp_path / "serverd.yaml"
    config.write_text(shipped.replace("/etc/edgefed/tls/", f"{tls}/"))

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60, cwd=REPO
        )

    missing = run("serverd", "check-config", str(config))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert f"mqtt tls: ca {tls}/ca.pem is not a file" in missing.stderr
    for certs in (["init", str(tls)], ["issue", str(tls), "serverd"]):
        assert run("edged", "certs", *certs).returncode == 0
    checked = run("serverd", "check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "port: 8883" in checked.stdout and f"cert: {tls}/serverd.pem" in checked.stdout


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
