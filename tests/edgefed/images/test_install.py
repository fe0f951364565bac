"""A/B slot install and rollback on a real directory tree."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefed.errors import ImageError
from edgefed.images.install import active_slot, install_image, rollback_image
from edgefed.images.verify import read_manifest, verify_image

from .conftest import Keys

ImageFactory = Callable[..., Path]


def test_install_then_upgrade_then_rollback(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    trust = [keys.public]

    _, state = install_image(image_factory("1.0.0"), root, trust)
    assert state.active == "a" and state.path == root / "tiny"
    assert verify_image(root / "tiny", trust).version == "1.0.0"

    _, state = install_image(image_factory("2.0.0"), root, trust)
    assert state.active == "b"
    assert read_manifest(root / "tiny").version == "2.0.0"
    assert os.readlink(root / "slots" / "tiny" / "current") == "b"

    manifest, state = rollback_image(root, "tiny", trust)
    assert (manifest.version, state.active) == ("1.0.0", "a")
    assert verify_image(root / "tiny", trust).version == "1.0.0"

    manifest, _ = rollback_image(root, "tiny", trust)
    assert manifest.version == "2.0.0"

    install_image(image_factory("3.0.0"), root, trust)  # replaces the inactive slot (1.0.0)
    assert active_slot(root, "tiny") == "a"
    assert read_manifest(root / "tiny").version == "3.0.0"
    assert read_manifest(root / "slots" / "tiny" / "b").version == "2.0.0"


def test_bad_image_is_not_installed(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    install_image(image_factory("1.0.0"), root, [keys.public])
    bad = image_factory("2.0.0")
    (bad / "model.bin").write_bytes(b"corrupt")
    with pytest.raises(ImageError, match=r"sha256 mismatch for model\.bin"):
        install_image(bad, root, [keys.public])
    assert read_manifest(root / "tiny").version == "1.0.0"
    with pytest.raises(ImageError, match="unsigned image"):
        install_image(image_factory("3.0.0", signed=False), root, [keys.public])
    assert active_slot(root, "tiny") == "a"


def test_rollback_needs_a_previous_good_image(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    with pytest.raises(ImageError, match="tiny: not installed under"):
        rollback_image(root, "tiny", [keys.public])
    install_image(image_factory("1.0.0"), root, [keys.public])
    with pytest.raises(ImageError, match="tiny: no previous image to roll back to"):
        rollback_image(root, "tiny", [keys.public])

    install_image(image_factory("2.0.0"), root, [keys.public])
    (root / "slots" / "tiny" / "a" / "labels.txt").write_text("tampered\n")
    with pytest.raises(ImageError, match=r"sha256 mismatch for labels\.txt"):
        rollback_image(root, "tiny", [keys.public])
    assert read_manifest(root / "tiny").version == "2.0.0"


def test_a_plain_directory_in_the_way_is_reported(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    root = tmp_path / "installed"
    (root / "tiny").mkdir(parents=True)
    with pytest.raises(ImageError, match="exists and is not the slot link"):
        install_image(image_factory(), root, [keys.public])
