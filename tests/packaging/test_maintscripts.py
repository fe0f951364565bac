"""The .debs' maintainer scripts as debhelper generates them, run in a sandbox
(``maintscripts.py``): what install, upgrade, remove and purge do to the services, the
directories and the secrets, and that the units keep what postinst sets up."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from drivers import registry
from drivers.fake_npu import FakeNpuConfig
from tests.packaging.maintscripts import PACKAGES, Sandbox, generate, units
from tests.packaging.test_systemd_units import read_unit
from tests.support.builder import builder_module
from tests.support.paths import REPO

UNITS = units()
CONFFILE = {
    "edgefed-edge": "/etc/edgefed/edged.yaml",
    "edgefed-server": "/etc/edgefed/serverd.yaml",
}
NPU_DRIVER = REPO / "packaging" / "debian" / "npu-driver.yaml"


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate(tmp_path_factory.mktemp("deb"))


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path / "root")


def invoked(sandbox: Sandbox) -> list[tuple[str, str]]:
    """(action, unit) of each ``deb-systemd-invoke`` call."""
    out = []
    for call in sandbox.calls("deb-systemd-invoke"):
        _, action, *names = call.split()
        out += [(action, name) for name in names]
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_a_first_install_enables_but_starts_nothing(
    scripts: dict[str, Path], sandbox: Sandbox, package: str
) -> None:
    sandbox.run(scripts[package] / "preinst", "install")
    sandbox.run(scripts[package] / "postinst", "configure")
    assert invoked(sandbox) == []  # only the site knows when its config is ready
    if package == "edgefed-edge":
        assert "deb-systemd-helper enable edged.service" in sandbox.calls()


@pytest.mark.parametrize("package", PACKAGES)
def test_an_upgrade_brings_back_the_services_that_were_running(
    scripts: dict[str, Path], sandbox: Sandbox, package: str
) -> None:
    """dpkg's order for an upgrade; nothing stops a service, postinst ``try-restart``s each
    (systemctl restarts one only if it runs: stopped ones stay stopped)."""
    debian = scripts[package]
    sandbox.run(debian / "prerm", "upgrade", "0.1.0")
    sandbox.run(debian / "preinst", "upgrade", "0.1.0")
    sandbox.run(debian / "postrm", "upgrade", "0.1.0")
    assert invoked(sandbox) == []
    sandbox.run(debian / "postinst", "configure", "0.1.0")
    assert sorted(invoked(sandbox)) == sorted(("try-restart", unit) for unit in UNITS[package])


@pytest.mark.parametrize("package", PACKAGES)
def test_remove_stops_every_service_before_the_venv_and_state_go(
    scripts: dict[str, Path], sandbox: Sandbox, package: str
) -> None:
    sandbox.run(scripts[package] / "prerm", "remove")
    assert sorted(invoked(sandbox)) == sorted(("stop", unit) for unit in UNITS[package])


@pytest.mark.parametrize("first", PACKAGES)
def test_purge_deletes_the_state_of_both_packages_and_tritons_venv(
    scripts: dict[str, Path], sandbox: Sandbox, first: str
) -> None:
    """Either package purged first deletes its own state only: the shared directories,
    ``keys/`` and ``tls/`` included, go with the last one."""
    for package in PACKAGES:
        sandbox.run(scripts[package] / "postinst", "configure")
    for made in ("edged", "serverd", "images/slots", "fake-npu", "venv-triton/bin"):
        sandbox.path(f"/var/lib/edgefed/{made}").mkdir(parents=True, exist_ok=True)
    assert set(sandbox.overrides()) == set(CONFFILE.values())
    own = {"edgefed-edge": {"edged", "fake-npu"}, "edgefed-server": {"serverd", "venv-triton"}}
    (last,) = set(PACKAGES) - {first}

    def purge(package: str) -> None:  # dpkg -P: prerm, the files go, postrm remove, purge
        sandbox.forget()
        sandbox.run(scripts[package] / "prerm", "remove")
        assert ("stop", UNITS[package][0]) in invoked(sandbox)
        sandbox.path(f"/opt/edgefed/{package.split('-')[1]}").rmdir()
        sandbox.path(CONFFILE[package]).unlink(missing_ok=True)
        sandbox.run(scripts[package] / "postrm", "remove")
        sandbox.run(scripts[package] / "postrm", "purge")

    purge(first)
    state = sandbox.path("/var/lib/edgefed")
    assert {p.name for p in state.iterdir()} == {"images"} | own[last]
    assert set(sandbox.overrides()) == {CONFFILE[last]}
    for shared in ("/etc/edgefed/keys", "/etc/edgefed/tls"):  # the last one's secrets
        assert sandbox.path(shared).is_dir(), shared
    purge(last)
    assert not state.exists()
    assert sandbox.overrides() == {}
    assert not sandbox.path("/etc/edgefed").exists()  # keys/ and tls/ were empty


@pytest.mark.parametrize("package", PACKAGES)
def test_secrets_are_for_root_and_the_edgefed_group_only(
    scripts: dict[str, Path], sandbox: Sandbox, package: str
) -> None:
    sandbox.run(scripts[package] / "postinst", "configure")
    made = sandbox.directories()
    assert made["/etc/edgefed/keys"] == ("root", "edgefed", 0o750)  # keys, token files
    assert made["/etc/edgefed/tls"] == ("root", "root", 0o755)  # certificates; keys 0640
    # the config may hold api.token or mqtt.password; a statoverride holds across upgrades
    assert sandbox.overrides() == {CONFFILE[package]: ("root", "edgefed", 0o640)}


@pytest.mark.parametrize("package", PACKAGES)
def test_a_sites_own_statoverride_is_kept(
    scripts: dict[str, Path], sandbox: Sandbox, package: str
) -> None:
    mine = {"/etc/edgefed/keys": "root adm 0710", CONFFILE[package]: "root adm 0600"}
    sandbox.path("/statoverride").write_text(
        "".join(f"{mode} {sandbox.path(path)}\n" for path, mode in mine.items())
    )
    sandbox.run(scripts[package] / "postinst", "configure")
    assert "/etc/edgefed/keys" not in sandbox.directories()
    assert sandbox.overrides()[CONFFILE[package]] == ("root", "adm", 0o600)


def test_the_two_packages_give_shared_directories_the_same_mode(
    scripts: dict[str, Path], tmp_path: Path
) -> None:
    made = []
    for package in PACKAGES:
        sandbox = Sandbox(tmp_path / package)
        sandbox.run(scripts[package] / "postinst", "configure")
        made.append(sandbox.directories())
    shared = made[0].keys() & made[1].keys()
    assert {"/var/lib/edgefed", "/var/lib/edgefed/images", "/etc/edgefed/keys"} <= shared
    assert {path: made[0][path] for path in shared} == {path: made[1][path] for path in shared}


def state_directories(unit: dict[str, list[str]]) -> dict[str, tuple[str, str, int]]:
    """What systemd makes of ``StateDirectory=`` at every start: path -> (owner, group, mode)."""
    user = unit.get("User", ["root"])[0]
    group = unit.get("Group", [user])[0]
    mode = int(unit.get("StateDirectoryMode", ["0755"])[0], 8)
    names = " ".join(unit.get("StateDirectory", [])).split()
    return {f"/var/lib/{name}": (user, group, mode) for name in names}


@pytest.mark.parametrize("package", PACKAGES)
def test_systemd_keeps_the_modes_postinst_gives(
    scripts: dict[str, Path], sandbox: Sandbox, package: str
) -> None:
    """systemd applies ``StateDirectoryMode=`` (default 0755) and ``User=`` to every
    ``StateDirectory=`` at each start: a directory postinst also makes must get the same."""
    sandbox.run(scripts[package] / "postinst", "configure")
    made = sandbox.directories()
    for name in UNITS[package]:
        for path, systemd in state_directories(read_unit(name)).items():
            assert made.get(path, systemd) == systemd, f"{name} and postinst disagree on {path}"


def may(user: str, owner: str, group: str, mode: int, want: int) -> bool:
    """May ``user`` (in its own group only) without capabilities do ``want`` (4 read, 2
    write, 1 search) to a file of ``owner``:``group`` and ``mode``? uid 0 without
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH is held to the bits like anyone."""
    shift = 6 if user == owner else 3 if user == group else 0
    return (mode >> shift) & want == want


def test_the_device_plugin_can_reach_and_write_the_fake_npus_state(
    scripts: dict[str, Path], sandbox: Sandbox
) -> None:
    """The unit runs as root with no capability under ProtectSystem=strict; the shipped
    driver config keeps the fake NPU's state files in ``state_dir``, which edged reads."""
    unit = read_unit("edgefed-deviceplugin.service")
    assert unit["User"] == ["root"] and unit["CapabilityBoundingSet"] == [""]
    driver = registry.parse_config(yaml.safe_load(NPU_DRIVER.read_text()))
    assert isinstance(driver, FakeNpuConfig)
    state_dir = driver.state_dir
    sandbox.run(scripts["edgefed-edge"] / "postinst", "configure")
    made = sandbox.directories() | state_directories(unit)
    writable = {Path(p) for p in " ".join(unit["ReadWritePaths"]).split()}
    writable |= {Path(p) for p in state_directories(unit)}
    assert any(p == state_dir or p in state_dir.parents for p in writable), "read-only"
    for parent in state_dir.parents:
        if str(parent) in made:
            assert may("root", *made[str(parent)], 1), f"root without capabilities: {parent}"
    assert str(state_dir) in made, f"nothing makes {state_dir}"
    assert may("root", *made[str(state_dir)], 2 | 1)
    assert may("edgefed", *made[str(state_dir)], 4 | 1)  # edged's fake-npu driver reads it


def test_edged_may_make_the_slots_of_a_federated_version(
    scripts: dict[str, Path], sandbox: Sandbox
) -> None:
    """edged (user edgefed, no capabilities) installs an adopted version as ``edged image
    install`` does: it makes ``images/slots/<model>`` and its ``.lock``, and links
    ``images/<model>`` (edgefed/images/install.py). The build's install check holds the
    installed package to the same owners and modes (``debcheck.MODES``)."""
    sandbox.run(scripts["edgefed-edge"] / "postinst", "configure")
    made = sandbox.directories()
    debcheck = builder_module("debcheck", "debcheck.py")
    for path in ("/var/lib/edgefed/images", "/var/lib/edgefed/images/slots"):
        assert may("edgefed", *made[path], 2 | 1), path
        assert debcheck.MODES[path.lstrip("/")] == made[path]
