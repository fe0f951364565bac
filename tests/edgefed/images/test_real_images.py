"""The demo images built by ``python -m edgefed.images build --all`` verify and load."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefed.images.manifest import Manifest
from edgefed.images.verify import load_labels, verify_image
from tests.support.paths import IMAGES_DIR, OPENCV_DATA, TRUST_DIR

DEMO_IMAGES = [
    "pose_detector",
    "face_detector",
    "pose_landmarks",
    "efficientnet_lite0",
    "text_detector",
]
SETUP_HINT = (
    "run packaging/dev/setup.sh (or .venv/bin/python -m edgefed.images build --all "
    "--out firmware-images/build) first"
)


def _verified(name: str) -> tuple[Path, Manifest]:
    path = IMAGES_DIR / name
    if not (path / "manifest.yaml").is_file():
        pytest.fail(f"model image {path} is missing: {SETUP_HINT}")
    return path, verify_image(path, [TRUST_DIR / "dev-signing.pub"])


def _input_shape(manifest: Manifest) -> list[int]:
    spec = manifest.input
    if spec.layout == "NHWC":
        return [1, spec.height, spec.width, 3]
    return [1, 3, spec.height, spec.width]


@pytest.mark.parametrize("name", DEMO_IMAGES)
def test_demo_image_verifies_and_loads(name: str) -> None:
    path, manifest = _verified(name)
    assert manifest.name == name
    model = path / manifest.model_file
    if manifest.driver == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(model))
        detail = interpreter.get_input_details()[0]
        assert detail["name"] == manifest.input.name
        assert detail["shape"].tolist() == _input_shape(manifest)
    else:
        import onnxruntime as ort

        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0]
        assert feed.name == manifest.input.name
        x = np.zeros(_input_shape(manifest), dtype=np.float32)
        assert session.run(None, {feed.name: x})[0].shape[0] == 1


def test_efficientnet_classifies_a_real_photo() -> None:
    import onnxruntime as ort

    path, manifest = _verified("efficientnet_lite0")
    labels = load_labels(path, manifest)
    assert len(labels) == 1000 and labels[0] == "tench"
    spec = manifest.input
    bgr = cv2.imread(str(OPENCV_DATA / "messi5.jpg"))
    assert bgr is not None, "opencv-doc is not installed: " + SETUP_HINT
    h, w = bgr.shape[:2]
    short = round(spec.width / spec.crop_fraction)
    scale = short / min(h, w)
    resized = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    top = (resized.shape[0] - spec.height) // 2
    left = (resized.shape[1] - spec.width) // 2
    crop = resized[top : top + spec.height, left : left + spec.width, ::-1].astype(np.float32)
    x = ((crop - np.array(spec.mean)) / np.array(spec.std)).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(path / manifest.model_file))
    logits = session.run(None, {spec.name: x.astype(np.float32)})[0][0]
    assert labels[int(np.argmax(logits))] == "soccer ball"
