"""open_runner's gatekeeping, ModelRunner's bookkeeping and landmark_region."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers import registry
from edgefed.driver import Driver
from edgefed.errors import DriverError, ImageError
from edgefed.images.manifest import SIGNATURE_NAME
from edgefed.models.runner import landmark_region, open_runner
from edgefed.models.types import Classification, Detection
from tests.drivers.model_files import constant_output_onnx
from tests.edgefed.models.conftest import DEV_KEY
from tests.edgefed.models.signed_images import make_image

CLASSIFIER_INPUT = {"name": "images", "width": 64, "height": 64, "layout": "NCHW"}


def onnx_driver() -> Driver:
    return registry.create(registry.parse_config({"type": "onnxruntime"}))


def classifier_image(tmp_path: Path, **input_changes: Any) -> tuple[Path, Path]:
    model = constant_output_onnx(tmp_path / "cls.onnx", np.array([[0.0, 2.0, 1.0]], np.float32))
    return make_image(
        tmp_path / "classifier",
        model,
        task="classification",
        driver="onnxruntime",
        input_spec=CLASSIFIER_INPUT | input_changes,
        decoder={"type": "softmax_topk", "params": {"k": 2}},
        labels=["cat", "dog", "fox"],
    )


def test_runner_classifies_each_region_and_describes_itself(tmp_path: Path) -> None:
    image, key = classifier_image(tmp_path)
    runner = open_runner("pets", image, onnx_driver(), None, [key])
    frame = np.zeros((48, 64, 3), np.uint8)
    whole, part = runner.infer(frame, [None, (0.0, 0.0, 32.0, 32.0)])
    assert isinstance(whole, Classification) and isinstance(part, Classification)
    assert [label for label, _ in whole.top] == ["dog", "fox"]
    assert whole.box is None
    assert part.box == (0.0, 0.0, 32.0, 32.0)
    assert runner.describe() == {
        "image": "classifier",
        "version": "1",
        "task": "classification",
        "driver": "onnxruntime",
        "device": "cpu",
        "input": "64x64",
        "decoder": "softmax_topk",
    }
    runner.close()


def test_tampered_model_file_is_refused_before_loading(tmp_path: Path) -> None:
    image, key = classifier_image(tmp_path)
    with (image / "model.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ImageError, match=r"sha256 mismatch for model\.onnx"):
        open_runner("pets", image, onnx_driver(), None, [key])


def test_unsigned_image_needs_allow_unsigned(tmp_path: Path) -> None:
    image, key = classifier_image(tmp_path)
    (image / SIGNATURE_NAME).unlink()
    with pytest.raises(ImageError, match="unsigned image"):
        open_runner("pets", image, onnx_driver(), None, [key])
    assert open_runner("pets", image, onnx_driver(), None, [key], allow_unsigned=True)


def test_image_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    if not DEV_KEY.is_file():
        pytest.fail(f"{DEV_KEY} is missing: run packaging/dev/setup.sh", pytrace=False)
    image, _key = classifier_image(tmp_path)
    with pytest.raises(ImageError, match="signature does not match any trusted key"):
        open_runner("pets", image, onnx_driver(), None, [DEV_KEY])


def test_driver_that_cannot_load_the_file_type(tmp_path: Path) -> None:
    image, key = classifier_image(tmp_path)
    litert = registry.create(registry.parse_config({"type": "litert"}))
    with pytest.raises(DriverError, match=r"driver 'litert' cannot load model\.onnx"):
        open_runner("pets", image, litert, None, [key])


@pytest.mark.parametrize(
    ("changes", "cause"),
    [
        ({"name": "input"}, "model has no input 'input' (inputs: images)"),
        ({"width": 32}, "input 'images' is [1, 3, 64, 64], manifest says NCHW 32x64"),
        ({"layout": "NHWC"}, "manifest says NHWC 64x64"),
    ],
)
def test_manifest_input_must_match_the_model(
    tmp_path: Path, changes: dict[str, Any], cause: str
) -> None:
    image, key = classifier_image(tmp_path, **changes)
    with pytest.raises(ImageError) as err:
        open_runner("pets", image, onnx_driver(), None, [key])
    assert cause in str(err.value)


def test_corrupt_model_inside_a_signed_image_is_a_driver_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(os.urandom(2048))
    image, key = make_image(
        tmp_path / "broken",
        corrupt,
        task="classification",
        driver="onnxruntime",
        input_spec=CLASSIFIER_INPUT,
        decoder={"type": "softmax_topk", "params": {}},
    )
    with pytest.raises(DriverError, match=r"cannot load .*model\.onnx: .*Protobuf parsing failed"):
        open_runner("broken", image, onnx_driver(), None, [key])


def test_bad_decoder_params_are_an_image_error(tmp_path: Path) -> None:
    model = constant_output_onnx(tmp_path / "m.onnx", np.zeros((1, 3), np.float32))
    image, key = make_image(
        tmp_path / "bad_decoder",
        model,
        task="classification",
        driver="onnxruntime",
        input_spec=CLASSIFIER_INPUT,
        decoder={"type": "softmax_topk", "params": {"k": 0}},
    )
    with pytest.raises(ImageError, match="decoder 'softmax_topk': k: Input should be greater"):
        open_runner("bad", image, onnx_driver(), None, [key])


def test_landmark_region_is_the_scaled_body_circle_square() -> None:
    det = Detection("person", 0.9, (0, 0, 10, 10), ((100.0, 200.0), (100.0, 120.0)))
    assert landmark_region(det) == pytest.approx((0, 100, 200, 300))
    assert landmark_region(det, scale=1.0) == pytest.approx((20, 120, 180, 280))


def test_landmark_region_falls_back_to_the_box_and_keeps_the_centre_in_frame() -> None:
    boxed = Detection("person", 0.9, (10, 20, 50, 100))
    assert landmark_region(boxed, scale=1.0) == pytest.approx((-10, 20, 70, 100))
    far = Detection("person", 0.9, (0, 0, 1, 1), ((700.0, -50.0), (700.0, -10.0)))
    x1, y1, x2, y2 = landmark_region(far, scale=1.0, frame_shape=(480, 640, 3))
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((640, 0))
    assert x2 - x1 == pytest.approx(80)
