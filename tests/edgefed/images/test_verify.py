"""verify_image, read_manifest and load_labels on real signed image directories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edgefed.errors import ImageError
from edgefed.images import signing
from edgefed.images.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    TrainableSpec,
    manifest_from_yaml,
    manifest_to_yaml,
)
from edgefed.images.verify import load_labels, read_manifest, verify_image
from tests.support.paths import IMAGES_DIR

from .conftest import Keys

ImageFactory = Callable[..., Path]


def test_signed_image_verifies(image_factory: ImageFactory, keys: Keys) -> None:
    image = image_factory()
    manifest = verify_image(image, [keys.public])
    assert (manifest.name, manifest.version, manifest.model_file) == ("tiny", "1.0.0", "model.bin")
    assert load_labels(image, manifest) == ["cat", "dog"]


def test_any_trusted_key_is_enough(
    image_factory: ImageFactory, keys: Keys, other_keys: Keys
) -> None:
    image = image_factory()
    assert verify_image(image, [other_keys.public, keys.public]).name == "tiny"


def test_raw_public_key_file_is_accepted(
    image_factory: ImageFactory, keys: Keys, tmp_path: Path
) -> None:
    raw = tmp_path / "raw.pub"
    raw.write_bytes(
        signing.load_public_key(keys.public).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    )
    assert verify_image(image_factory(), [raw]).name == "tiny"


def test_tampered_model_file_is_a_sha256_mismatch(image_factory: ImageFactory, keys: Keys) -> None:
    image = image_factory()
    data = bytearray((image / "model.bin").read_bytes())
    data[10] ^= 0xFF
    (image / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"^tiny: sha256 mismatch for model.bin$"):
        verify_image(image, [keys.public])


def test_tampered_manifest_fails_the_signature(image_factory: ImageFactory, keys: Keys) -> None:
    image = image_factory()
    manifest = image / MANIFEST_NAME
    manifest.write_bytes(manifest.read_bytes().replace(b"version: 1.0.0", b"version: 9.9.9"))
    with pytest.raises(ImageError, match=r"^tiny: signature does not match any trusted key$"):
        verify_image(image, [keys.public])


def test_untrusted_signer_is_rejected(image_factory: ImageFactory, other_keys: Keys) -> None:
    with pytest.raises(ImageError, match="signature does not match any trusted key"):
        verify_image(image_factory(), [other_keys.public])


def test_unsigned_image_needs_allow_unsigned(image_factory: ImageFactory, keys: Keys) -> None:
    image = image_factory(signed=False)
    with pytest.raises(ImageError, match=r"^tiny: unsigned image \(no manifest.yaml.sig\)$"):
        verify_image(image, [keys.public])
    assert verify_image(image, [keys.public], allow_unsigned=True).name == "tiny"


def test_allow_unsigned_still_checks_files(image_factory: ImageFactory) -> None:
    image = image_factory(signed=False)
    (image / "labels.txt").write_text("cat\nwolf\n")
    with pytest.raises(ImageError, match=r"sha256 mismatch for labels\.txt"):
        verify_image(image, [], allow_unsigned=True)


def test_no_trusted_key_given(image_factory: ImageFactory) -> None:
    with pytest.raises(ImageError, match="no trusted key given"):
        verify_image(image_factory(), [])


def test_missing_listed_file(image_factory: ImageFactory, keys: Keys) -> None:
    image = image_factory()
    (image / "labels.txt").unlink()
    with pytest.raises(ImageError, match=r"^tiny: missing file labels.txt$"):
        verify_image(image, [keys.public])


def test_symlinked_file_is_rejected(image_factory: ImageFactory, keys: Keys) -> None:
    image = image_factory()
    real = image.parent / "elsewhere.bin"
    (image / "model.bin").rename(real)
    (image / "model.bin").symlink_to(real)
    with pytest.raises(ImageError, match=r"model\.bin is not a regular file"):
        verify_image(image, [keys.public])


def test_not_an_image(tmp_path: Path, keys: Keys) -> None:
    with pytest.raises(ImageError, match="model image directory not found"):
        verify_image(tmp_path / "nope", [keys.public])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match=r"not a model image \(no manifest.yaml\)"):
        verify_image(tmp_path / "empty", [keys.public])


def test_bad_manifest_content_is_one_clear_line(image_factory: ImageFactory, keys: Keys) -> None:
    image = image_factory()
    manifest = image / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace("task: classification", "task: juggling"))
    with pytest.raises(ImageError, match=r"invalid manifest: task: ") as info:
        read_manifest(image)
    assert "\n" not in str(info.value)
    manifest.write_text("files: [unterminated\n")
    with pytest.raises(ImageError, match="manifest is not valid YAML"):
        read_manifest(image)


def test_manifest_cannot_list_files_outside_the_image(image_factory: ImageFactory) -> None:
    image = image_factory(signed=False)
    manifest = image / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace("  labels.txt:", "  ../labels.txt:"))
    with pytest.raises(ImageError, match="must be a relative path"):
        read_manifest(image)


def test_corrupt_trusted_key_file(image_factory: ImageFactory, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(ImageError, match="not an Ed25519 public key"):
        verify_image(image_factory(), [bad])


def test_signature_covers_exact_manifest_bytes(image_factory: ImageFactory, keys: Keys) -> None:
    image = image_factory()
    (image / SIGNATURE_NAME).write_bytes(b"\0" * 64)
    with pytest.raises(ImageError, match="signature does not match"):
        verify_image(image, [keys.public])


def test_a_symlinked_image_directory_is_refused(image_factory: ImageFactory, keys: Keys) -> None:
    """On main a symlink to an image directory anywhere was accepted."""
    image = image_factory()
    link = image.parent / "linked"
    link.symlink_to(image, target_is_directory=True)
    with pytest.raises(ImageError, match="must not be a symlink"):
        verify_image(link, [keys.public])


def test_files_the_manifest_does_not_list_are_refused(
    image_factory: ImageFactory, keys: Keys
) -> None:
    """On main an extra file beside the signed ones (a driver plugin, a second model)
    was accepted; the signature says nothing about it."""
    image = image_factory()
    (image / "extra.so").write_bytes(b"\x7fELF")
    with pytest.raises(ImageError, match=r"^tiny: files not listed in the manifest: extra\.so$"):
        verify_image(image, [keys.public])
    (image / "extra.so").unlink()
    (image / "sub").mkdir()
    with pytest.raises(ImageError, match=r"files not listed in the manifest: sub/"):
        verify_image(image, [keys.public])


def test_a_manifest_without_trainable_keeps_its_bytes_and_one_with_it_round_trips() -> None:
    """Images built before ``trainable`` existed verify as they did: their manifests dump
    to the same bytes; a declared head survives the round trip."""
    raw = (IMAGES_DIR / "pose_detector" / "manifest.yaml").read_bytes()
    old = manifest_from_yaml(raw, "pose_detector")
    assert old.trainable is None and manifest_to_yaml(old) == raw
    head = TrainableSpec(
        features="/Reshape_output_0", size=1280, tensors=("_fc.weight", "_fc.bias")
    )
    declared = old.model_copy(update={"trainable": head})
    again = manifest_from_yaml(manifest_to_yaml(declared), "declared")
    assert again.trainable == head
