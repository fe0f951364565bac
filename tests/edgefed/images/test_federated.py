"""Federated versions as model images: the spliced model computes the trainer's head, a
packed image unpacks to the same verified image, and hostile archives are refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.federated import trust
from drivers import registry
from edged.federation.trainer import probabilities
from edgefed.errors import ImageError
from edgefed.images.federated import (
    Base,
    build_version,
    head_params,
    pack,
    read_head,
    unpack,
)
from edgefed.images.signing import load_public_key
from edgefed.images.verify import verify_image_with_keys
from edgefed.models.runner import open_runner
from edgefed.testing.datasets import digits
from tests.support.paths import IMAGES_DIR, TRUST_DIR

CLASSES = [str(c) for c in range(10)]


def _head(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.normal(0, 0.2, (64, 10)).astype(np.float32),
        rng.normal(0, 1, 10).astype(np.float32),
    ]


def test_a_pixels_version_classifies_a_picture_as_the_head_does_its_features(
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    params = _head()
    manifest = build_version(
        tmp_path / "v3", Base.pixels(8, 8, 16.0), "digits", 3, CLASSES, params, key
    )
    assert manifest.version == "3" and manifest.trainable is not None
    verify_image_with_keys(tmp_path / "v3", [key.public_key()])
    pub = trust(key, tmp_path / "keys")
    driver = registry.create(registry.parse_config({"type": "onnxruntime"}))
    runner = open_runner("digits", tmp_path / "v3", driver, None, [pub])
    x, _ = digits()
    for row in x[:20]:
        picture = np.repeat(
            (row.reshape(8, 8) * 255 / 16).round().astype(np.uint8)[..., None], 3, 2
        )
        (result,) = runner.infer(picture, [None])
        expected = probabilities(
            params, (picture[..., 0].astype(np.float64) * 16 / 255).reshape(1, -1)
        )
        label, score = result.top[0]
        assert label == str(int(np.argmax(expected))) and score == pytest.approx(
            expected.max(), 1e-4
        )
    runner.close()


def test_a_packed_version_unpacks_to_the_same_verified_image_and_head(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    params = _head(1)
    build_version(tmp_path / "built", Base.pixels(8, 8, 16.0), "digits", 2, CLASSES, params, key)
    data = pack(tmp_path / "built")
    assert data == pack(tmp_path / "built")  # the same bytes for the same files
    (tmp_path / "got").mkdir()
    unpack(data, tmp_path / "got")
    manifest = verify_image_with_keys(tmp_path / "got", [key.public_key()])
    for got, want in zip(head_params(tmp_path / "got", manifest), params, strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(read_head(data), params, strict=True):
        np.testing.assert_array_equal(got, want)


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (_tar((_file("../evil"), b"x")), "plain files only"),
        (_tar((_file("sub/model.onnx"), b"x")), "plain files only"),
        (_tar((_link("model.onnx"), b"")), "plain files only"),
        (_tar(*[(_file(f"f{i}"), b"x") for i in range(9)]), "at most 8"),
        (_tar((_file("a"), b"1"), (_file("a"), b"2")), "twice"),
        (b"not a tar archive at all" * 40, "not a packed image"),
    ],
)
def test_a_hostile_archive_is_refused_and_writes_nothing_outside(
    tmp_path: Path, archive: bytes, reason: str
) -> None:
    dest = tmp_path / "image"
    dest.mkdir()
    with pytest.raises(ImageError, match=reason):
        unpack(archive, dest)
    assert not (tmp_path / "evil").exists()


def test_the_base_of_an_image_is_its_model_cut_at_the_declared_features() -> None:
    keys = [load_public_key(TRUST_DIR / "dev-signing.pub")]
    base = Base.of_image(IMAGES_DIR / "efficientnet_lite0", keys)
    assert base.size == 1280 and base.input.width == 224
    assert [o.name for o in base.graph.graph.output] == [base.features]
    assert not any(t.name.startswith("_fc") for t in base.graph.graph.initializer)
    with pytest.raises(ImageError, match="declares nothing trainable"):
        Base.of_image(IMAGES_DIR / "pose_detector", keys)
