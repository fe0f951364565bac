"""ModelRunner: one verified model image loaded on a driver, frames in, results out.

``infer`` runs the model on each region of a frame (None = the whole frame): pre-process,
``LoadedModel.run``, decode, map to frame pixels. Detections found in several regions
are merged with class-aware NMS. ``open_runner`` is the only way edged builds one: it
verifies the image (hashes and signature) before any byte reaches the driver.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgefed.driver import Driver, LoadedModel
from edgefed.errors import DriverError, EdgeFedError, ImageError, ModelError
from edgefed.images.manifest import Manifest
from edgefed.images.verify import load_labels, verify_image

from .decoders import build_decoder
from .decoders.nms import batched_nms
from .preprocess import Preprocessor, Transform
from .recheck import TieRecheck, fp32_source
from .types import Box, Classification, Detection, Landmarks, Result

DEFAULT_MERGE_IOU = 0.5

log = logging.getLogger(__name__)


def _clip(box: Box, width: int, height: int) -> Box:
    return (
        min(max(box[0], 0.0), width),
        min(max(box[1], 0.0), height),
        min(max(box[2], 0.0), width),
        min(max(box[3], 0.0), height),
    )


def to_frame(result: Result, t: Transform, region: Box | None, shape: tuple[int, ...]) -> Result:
    """Map one decoded result from normalised input coordinates to frame pixels;
    ModelError if the model gave a coordinate that is not a number (a faulty device)."""
    mapped = _mapped(result, t, region, shape)
    if not np.isfinite(_coordinates(mapped)).all():
        raise ModelError(f"model produced non-finite coordinates for {type(result).__name__}")
    return mapped


def _coordinates(result: Result) -> list[float]:
    if isinstance(result, Detection):
        return [result.score, *result.box, *(v for p in result.keypoints for v in p)]
    if isinstance(result, Landmarks):
        return [result.presence, *(v for p in result.points for v in p)]
    if isinstance(result, Classification):
        return [score for _, score in result.top]
    return [result.score, *result.box, *(v for p in result.polygon for v in p)]


def _mapped(result: Result, t: Transform, region: Box | None, shape: tuple[int, ...]) -> Result:
    height, width = shape[0], shape[1]
    if isinstance(result, Detection):
        return replace(
            result,
            box=_clip(t.box(result.box), width, height),
            keypoints=tuple(t.point(x, y) for x, y in result.keypoints),
        )
    if isinstance(result, Landmarks):
        pts = t.points(np.array(result.points, dtype=np.float64).reshape(-1, 4))
        return replace(
            result,
            box=region if region is not None else (0.0, 0.0, float(width), float(height)),
            points=tuple((float(p[0]), float(p[1]), float(p[2]), float(p[3])) for p in pts),
        )
    if isinstance(result, Classification):
        return replace(result, box=region)
    return replace(
        result,
        box=_clip(t.box(result.box), width, height),
        polygon=tuple(t.point(x, y) for x, y in result.polygon),
    )


def merge_detections(dets: Sequence[Detection], iou_threshold: float) -> list[Detection]:
    """Class-aware NMS over detections from overlapping regions, best first."""
    if len(dets) < 2:
        return list(dets)
    boxes = np.array([d.box for d in dets], dtype=np.float64)
    scores = np.array([d.score for d in dets], dtype=np.float64)
    names = sorted({d.label for d in dets})
    classes = np.array([names.index(d.label) for d in dets])
    return [dets[i] for i in batched_nms(boxes, scores, classes, iou_threshold)]


class ModelRunner:
    """A loaded, verified model image with its pre-processing and decoder."""

    def __init__(
        self,
        name: str,
        image_dir: Path,
        manifest: Manifest,
        model: LoadedModel,
        labels: Sequence[str],
    ) -> None:
        self.name = name
        self.image_dir = image_dir
        self.manifest = manifest
        self.model = model
        self.preprocess = Preprocessor(manifest.input)
        self.decoder = build_decoder(manifest.decoder, manifest.input, labels)
        self._check_input()

    def _check_input(self) -> None:
        spec = self.manifest.input
        by_name = {t.name: t for t in self.model.inputs}
        tensor = by_name.get(spec.name)
        if tensor is None:
            raise ImageError(
                f"{self.name}: model has no input {spec.name!r} (inputs: {', '.join(by_name)})"
            )
        expected = (
            (1, 3, spec.height, spec.width)
            if spec.layout == "NCHW"
            else (1, spec.height, spec.width, 3)
        )
        if len(tensor.shape) != 4 or any(
            d not in (-1, e) for d, e in zip(tensor.shape, expected, strict=True)
        ):
            raise ImageError(
                f"{self.name}: input {spec.name!r} is {list(tensor.shape)}, "
                f"manifest says {spec.layout} {spec.width}x{spec.height}"
            )

    def infer(self, frame_bgr: np.ndarray, regions: Sequence[Box | None]) -> list[Result]:
        """Results of every region in frame pixels; detections merged across regions."""
        results: list[Result] = []
        for region in regions:
            tensor, transform = self.preprocess(frame_bgr, region)
            outputs = self.model.run({self.manifest.input.name: tensor})
            results.extend(
                to_frame(r, transform, region, frame_bgr.shape) for r in self.decoder(outputs)
            )
        if len(regions) > 1 and self.manifest.task == "detection":
            iou = self.decoder.iou_threshold or DEFAULT_MERGE_IOU
            merged: list[Result] = list(
                merge_detections([r for r in results if isinstance(r, Detection)], iou)
            )
            return merged
        return results

    def describe(self) -> dict[str, Any]:
        """What the status API shows about this model."""
        m = self.manifest
        return {
            "image": m.name,
            "version": m.version,
            "task": m.task,
            "driver": m.driver,
            "device": self.model.device,
            "input": f"{m.input.width}x{m.input.height}",
            "decoder": m.decoder.type,
            **({"runtime": runtime} if (runtime := self.model.status()) else {}),
        }

    def close(self) -> None:
        self.model.close()


def open_runner(
    name: str,
    image_dir: Path,
    driver: Driver,
    device: str | None,
    trusted_keys: Sequence[Path],
    allow_unsigned: bool = False,
    recheck_ties: bool = False,
) -> ModelRunner:
    """Verify an image, load its model on ``driver`` and wrap it in a ModelRunner.

    ``recheck_ties``: an INT8 classifier also loads the fp32 image it was made from, for
    the inputs where its top two classes tie (``edgefed.models.recheck``); when that image
    cannot serve, the variant runs alone and a warning says why.

    Raises ImageError (bad image, labels or decoder params) or DriverError (the driver
    cannot load or run the model file), each with a one-line cause.
    """
    manifest = verify_image(image_dir, trusted_keys, allow_unsigned)
    model_file = image_dir / manifest.model_file
    if model_file.suffix not in driver.file_suffixes:
        raise DriverError(
            f"{name}: driver {driver.type!r} cannot load {model_file.name} "
            f"(it loads {', '.join(driver.file_suffixes)})"
        )
    labels = load_labels(image_dir, manifest)
    model = driver.load(model_file, device)
    if recheck_ties and manifest.task == "classification" and manifest.quantized_from:
        try:
            source, fp32 = fp32_source(image_dir, manifest, trusted_keys, allow_unsigned)
            model = TieRecheck(model, driver.load(source / fp32.model_file, device))
        except EdgeFedError as exc:
            log.warning("%s: INT8 ties not rechecked in fp32: %s", name, exc)
    try:
        return ModelRunner(name, image_dir, manifest, model, labels)
    except Exception:
        model.close()
        raise


def landmark_region(
    det: Detection, scale: float = 1.25, frame_shape: tuple[int, ...] | None = None
) -> Box:
    """The square crop a landmark model runs on, from a pose detection (MediaPipe style).

    Keypoint 0 is the body centre and keypoint 1 a point on the circle around the
    body: the square has side ``2 * radius * scale`` around keypoint 0 (rotation is
    ignored). Without those keypoints the box's longer side gives the square. With
    ``frame_shape`` the centre is kept inside the frame; the square itself may reach
    outside it (the pre-processor pads).
    """
    x1, y1, x2, y2 = det.box
    if len(det.keypoints) >= 2 and math.dist(det.keypoints[0], det.keypoints[1]) >= 1.0:
        (cx, cy), radius = det.keypoints[0], math.dist(det.keypoints[0], det.keypoints[1])
    else:
        cx, cy, radius = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1, 1.0) / 2
    if frame_shape is not None:
        cx = min(max(cx, 0.0), float(frame_shape[1]))
        cy = min(max(cy, 0.0), float(frame_shape[0]))
    half = radius * scale
    return cx - half, cy - half, cx + half, cy + half


HEAD_LANDMARKS = range(11)  # BlazePose: nose, eyes, ears and mouth corners


def head_region(
    lm: Landmarks, scale: float = 3.0, frame_shape: tuple[int, ...] | None = None
) -> Box:
    """A square around a pose's head landmarks, for a face model cascaded on poses."""
    pts = np.array([lm.points[i][:2] for i in HEAD_LANDMARKS if i < len(lm.points)])
    if pts.size == 0:
        return lm.box
    (x1, y1), (x2, y2) = pts.min(axis=0), pts.max(axis=0)
    cx, cy = float(x1 + x2) / 2, float(y1 + y2) / 2
    if frame_shape is not None:
        cx = min(max(cx, 0.0), float(frame_shape[1]))
        cy = min(max(cy, 0.0), float(frame_shape[0]))
    half = max(float(x2 - x1), float(y2 - y1), 4.0) * scale / 2
    return cx - half, cy - half, cx + half, cy + half


def cascade_regions(
    results: Sequence[Result], frame_shape: tuple[int, ...], limit: int = 4
) -> list[Box | None]:
    """Where a model cascaded on ``results`` runs: the best ``limit`` detections or poses."""
    dets = sorted((r for r in results if isinstance(r, Detection)), key=lambda d: -d.score)
    poses = sorted((r for r in results if isinstance(r, Landmarks)), key=lambda p: -p.presence)
    regions: list[Box | None] = [landmark_region(d, frame_shape=frame_shape) for d in dets]
    regions += [head_region(p, frame_shape=frame_shape) for p in poses]
    return regions[:limit]
