"""The second federated model's data: EfficientNet-Lite0 features of person and
background crops from vtest.avi, labelled by the person detector.

The person detector (the ``pose_detector`` image, what serverd serves as ``person``) plays
the server's big model of the joint-inference loop: on every ``step``-th frame it runs
on a 3x3 grid of overlapping tiles; a detection scoring at least ``min_score`` is a
``person`` crop, and a box of the same size that overlaps no detection of that frame is
a ``background`` crop. Each crop becomes its feature vector through the feature hook
(``edged.federation.features``) on what the EfficientNet-Lite0 recipe declares
trainable: the pooled 1280 features before its classifier.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from drivers import registry
from edged.federation.features import FeatureExtractor
from edgefed.images.recipe import load_recipe
from edgefed.images.verify import verify_image
from edgefed.models.runner import open_runner
from edgefed.models.types import Box, Detection
from edgefed.paths import images_dir, trusted_keys

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
CLASSES = ("background", "person")
TILE = 288
RECIPE = Path(__file__).resolve().parents[1] / "firmware-images/recipes/efficientnet_lite0.yaml"


def _tiles(width: int, height: int) -> list[Box]:
    xs = np.linspace(0, max(0, width - TILE), 3)
    ys = np.linspace(0, max(0, height - TILE), 3)
    return [(float(x), float(y), float(x + TILE), float(y + TILE)) for x in xs for y in ys]


def _overlaps(box: Box, others: list[Box]) -> bool:
    return any(box[0] < o[2] and o[0] < box[2] and box[1] < o[3] and o[1] < box[3] for o in others)


def _background(
    box: Box, people: list[Box], width: int, height: int, rng: np.random.Generator
) -> Box | None:
    """A box of ``box``'s size somewhere in the frame that overlaps no person."""
    w, h = box[2] - box[0], box[3] - box[1]
    for _ in range(20):
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        candidate = (x, y, x + w, y + h)
        if not _overlaps(candidate, people):
            return candidate
    return None


def person_crops(
    step: int = 4, min_score: float = 0.5, video: Path = VTEST
) -> tuple[np.ndarray, np.ndarray]:
    """Features (n x 1280) and labels (0 background, 1 person) of vtest.avi's crops."""
    keys = trusted_keys()
    driver = registry.create(registry.parse_config({"type": "litert", "num_threads": 1}))
    detector = open_runner("person", images_dir() / "pose_detector", driver, None, keys)
    image = images_dir() / "efficientnet_lite0"
    manifest = verify_image(image, keys)
    # the recipe declares it; images built before efficientnet_lite0 1.1.0 lack the block
    trainable = load_recipe(RECIPE).trainable
    if trainable is None:
        raise ValueError(f"{RECIPE} declares nothing trainable")
    features = FeatureExtractor(image / manifest.model_file, manifest.input, trainable)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    capture = cv2.VideoCapture(str(video))
    try:
        index = -1
        while True:
            ok, frame = capture.read()
            index += 1
            if not ok:
                break
            if index % step:
                continue
            height, width = frame.shape[:2]
            found = detector.infer(frame, _tiles(width, height))
            people = [d.box for d in found if isinstance(d, Detection) and d.score >= min_score]
            for box in people:
                xs.append(features(frame, box))
                ys.append(1)
                other = _background(box, people, width, height, rng)
                if other is not None:
                    xs.append(features(frame, other))
                    ys.append(0)
    finally:
        capture.release()
        detector.close()
        driver.close()
    if not xs:
        raise FileNotFoundError(f"{video}: no crops (is the video there?)")
    return np.stack(xs), np.array(ys, dtype=np.int64)
