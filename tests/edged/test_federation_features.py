"""The feature hook on the real EfficientNet-Lite0 image and video: what the recipe
declares trainable is the model's own head on the declared features."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edged.federation.features import FeatureExtractor
from edged.federation.trainer import probabilities
from edgefed.errors import ImageError
from edgefed.images.manifest import TrainableSpec
from edgefed.images.recipe import load_recipe
from edgefed.images.verify import verify_image
from edgefed.models.preprocess import Preprocessor
from tests.support.paths import IMAGES_DIR, REPO, TRUST_DIR, VTEST

IMAGE = IMAGES_DIR / "efficientnet_lite0"
RECIPE = REPO / "firmware-images" / "recipes" / "efficientnet_lite0.yaml"


@pytest.fixture(scope="module")
def extractor() -> FeatureExtractor:
    manifest = verify_image(IMAGE, [TRUST_DIR / "dev-signing.pub"])
    trainable = load_recipe(RECIPE).trainable
    assert trainable is not None
    return FeatureExtractor(IMAGE / manifest.model_file, manifest.input, trainable)


def _frame(index: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(VTEST))
    capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = capture.read()
    capture.release()
    assert ok, f"{VTEST} is missing"
    return frame


def test_the_declared_head_on_the_features_is_the_models_own_classifier(
    extractor: FeatureExtractor,
) -> None:
    frame = _frame(100)
    crop = (300.0, 100.0, 500.0, 400.0)
    features = extractor(frame, crop)
    assert features.shape == (1280,) and features.dtype == np.float32
    assert np.all(np.isfinite(features)) and features.std() > 0
    session = ort.InferenceSession(str(IMAGE / "model.onnx"), providers=["CPUExecutionProvider"])
    tensor, _ = Preprocessor(extractor.spec)(frame, crop)
    (logits,) = session.run(None, {extractor.spec.name: tensor})
    head = extractor.head()
    assert [p.shape for p in head] == [(1280, 1000), (1000,)]
    ours = features.astype(np.float64) @ head[0] + head[1]
    np.testing.assert_allclose(ours, logits[0], rtol=1e-3, atol=1e-3)
    assert np.argmax(probabilities(head, features[None])) == np.argmax(logits[0])


def test_different_crops_give_different_features(extractor: FeatureExtractor) -> None:
    frame = _frame(200)
    person, wall = (
        extractor(frame, (300.0, 100.0, 500.0, 400.0)),
        extractor(frame, (0.0, 0.0, 120.0, 120.0)),
    )
    assert not np.allclose(person, wall)


def test_a_declaration_naming_no_tensor_is_refused() -> None:
    manifest = verify_image(IMAGE, [TRUST_DIR / "dev-signing.pub"])
    bad = TrainableSpec(features="/no/such", size=1280, tensors=("_fc.weight",))
    with pytest.raises(ImageError, match="no tensor"):
        FeatureExtractor(IMAGE / manifest.model_file, manifest.input, bad)
    unknown = TrainableSpec(features="/Reshape_output_0", size=1280, tensors=("nope",))
    with pytest.raises(ImageError, match="not initializers"):
        FeatureExtractor(IMAGE / manifest.model_file, manifest.input, unknown)
