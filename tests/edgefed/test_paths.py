"""edgefed.paths: a checkout keeps its relative defaults; an installed daemon gets /var/lib."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefed import paths
from edgefed.config import ImagesConfig
from tests.support.paths import REPO


def test_a_checkout_is_recognised(tmp_path: Path) -> None:
    assert paths.CHECKOUT == REPO
    package = tmp_path / "site-packages" / "edgefed"
    package.mkdir(parents=True)
    assert paths.find_checkout(package) is None
    (tmp_path / "site-packages" / "pyproject.toml").write_text("")
    assert paths.find_checkout(package) is None  # pyproject.toml alone is not a checkout
    (tmp_path / "site-packages" / "firmware-images").mkdir()
    assert paths.find_checkout(package) == tmp_path / "site-packages"


def test_checkout_defaults_are_the_relative_ones_of_before() -> None:
    env: dict[str, str] = {}
    assert paths.state_dir("edged", env) == Path("var/edged")
    assert paths.images_dir(env) == Path("firmware-images/build")
    assert paths.trusted_keys(env) == [Path("firmware-images/build/keys/dev-signing.pub")]
    assert paths.triton_venv(env) == Path(".venv-triton")


def test_installed_defaults_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "CHECKOUT", None)
    for name in ("EDGEFED_STATE_DIR", "EDGEFED_IMAGES_DIR", "EDGEFED_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert paths.state_dir("serverd") == Path("/var/lib/edgefed/serverd")
    assert paths.images_dir() == Path("/var/lib/edgefed/images")
    assert paths.trusted_keys() == [Path("/etc/edgefed/keys/image-signing.pub")]
    assert paths.triton_venv() == Path("/var/lib/edgefed/venv-triton")
    assert paths.checkout_path("firmware-images/recipes") is None
    monkeypatch.setenv("EDGEFED_STATE_DIR", "/srv/state")
    monkeypatch.setenv("EDGEFED_IMAGES_DIR", "/srv/images")
    monkeypatch.setenv("EDGEFED_CONFIG_DIR", "/srv/etc")
    assert paths.state_dir("edged") == Path("/srv/state/edged")
    assert paths.triton_venv() == Path("/srv/state/venv-triton")
    config = ImagesConfig()  # config defaults read the environment when built
    assert config.dir == Path("/srv/images")
    assert config.trusted_keys == [Path("/srv/etc/keys/image-signing.pub")]
    assert ImagesConfig(dir=Path("images")).dir == Path("images")  # a config file wins


def test_resources_are_files_on_disk() -> None:
    assert paths.resource("edged.twin", "properties.yaml").is_file()
    assert (paths.resource("serverd.triton", "backends") / "npu" / "model.py").is_file()
