"""Model files for the driver and model-runtime tests: built images and tiny ONNX graphs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefed.images.verify import read_manifest
from edgefed.models.preprocess import Preprocessor
from tests.support.paths import IMAGES_DIR, VTEST

SETUP_HINT = "run packaging/dev/setup.sh"


def built_image(name: str) -> Path:
    """A built model image directory; the test fails (not skips) if it is missing."""
    path = IMAGES_DIR / name
    if not (path / "manifest.yaml").is_file():
        pytest.fail(f"model image {path} is missing: {SETUP_HINT}", pytrace=False)
    return path


def built_model_file(image: str, file: str) -> Path:
    path = built_image(image) / file
    if not path.is_file():
        pytest.fail(f"{path} is missing: {SETUP_HINT}", pytrace=False)
    return path


def video_frames(indices: tuple[int, ...]) -> list[np.ndarray]:
    """BGR frames of the real test video at ``indices`` (768x576 pedestrians)."""
    capture = cv2.VideoCapture(str(VTEST))
    frames = []
    try:
        for index in indices:
            capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if not ok:
                pytest.fail(f"cannot read frame {index} of {VTEST}: {SETUP_HINT}", pytrace=False)
            frames.append(frame)
    finally:
        capture.release()
    return frames


def image_feeds(image: str, frame: np.ndarray) -> dict[str, np.ndarray]:
    """The input tensor an image's own pre-processing makes of ``frame``, by input name."""
    manifest = read_manifest(built_image(image))
    tensor, _ = Preprocessor(manifest.input)(frame)
    return {manifest.input.name: tensor}


def write_model(path: Path, graph: onnx.GraphProto) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def doubling_onnx(path: Path, shape: tuple[int, ...] = (1, 4)) -> Path:
    """y = 2 * x: lets tests check that each caller gets its own result back."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    node = helper.make_node("Mul", ["x", "two"], ["y"])
    return write_model(path, helper.make_graph([node], "double", [x], [y], initializer=[two]))


def int8_products_onnx(path: Path, k: int = 64, weight: int = 127) -> Path:
    """y = a @ B for uint8 ``a`` (1 x k) and a constant int8 ``B`` (k x 4) of ``weight``:
    with ``a`` all 255, each pair of products (2 x 255 x 127) overflows a 16-bit sum."""
    a = helper.make_tensor_value_info("a", TensorProto.UINT8, [1, k])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])
    b = numpy_helper.from_array(np.full((k, 4), weight, np.int8), "b")
    node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    return write_model(path, helper.make_graph([node], "int8", [a], [y], initializer=[b]))


def constant_output_onnx(
    path: Path,
    value: np.ndarray,
    input_name: str = "images",
    input_shape: tuple[int, ...] = (1, 3, 64, 64),
    output_name: str = "output0",
) -> Path:
    """A graph with an image input whose output is always ``value`` (a fake detector head)."""
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))
    out = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(value.shape))
    const = helper.make_node(
        "Constant",
        [],
        [output_name],
        value=numpy_helper.from_array(value.astype(np.float32), "value"),
    )
    return write_model(path, helper.make_graph([const], "constant", [x], [out]))
