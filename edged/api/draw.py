"""Annotate a completed frame for the live preview: boxes, labels, pose skeletons, motion,
the camera's object masks.

Pure OpenCV drawing on a copy of the frame (scaled down to ``max_width``); the caller
encodes it. Colours are fixed per model name so a model keeps its colour across frames.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from edged.framejob import FrameJob
from edgefed.models.types import Box, Classification, Detection, Landmarks, Result, TextBox

Colour = tuple[int, int, int]

# The 35 edges between MediaPipe's 33 body landmarks (0 nose ... 32 right foot index).
POSE_CONNECTIONS: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8),  # face
    (9, 10),  # mouth
    (11, 12), (11, 23), (12, 24), (23, 24),  # torso
    (11, 13), (13, 15), (15, 17), (15, 19), (15, 21), (17, 19),  # left arm and hand
    (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),  # right arm and hand
    (23, 25), (25, 27), (27, 29), (27, 31), (29, 31),  # left leg and foot
    (24, 26), (26, 28), (28, 30), (28, 32), (30, 32),  # right leg and foot
)  # fmt: skip
POSE_LANDMARKS = 33
VISIBLE = 0.5  # landmarks below this visibility are not drawn

_PALETTE: tuple[Colour, ...] = (
    (60, 200, 60), (255, 160, 40), (40, 140, 255), (220, 60, 220),
    (40, 220, 220), (180, 120, 255), (255, 90, 90), (120, 255, 180),
)  # fmt: skip
_MOTION: Colour = (0, 215, 255)
_MASK: Colour = (0, 0, 255)
_OBJECT_MASK: Colour = (128, 128, 128)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def colour_of(model: str) -> Colour:
    """A fixed colour per model name."""
    return _PALETTE[zlib.crc32(model.encode()) % len(_PALETTE)]


def _pt(x: float, y: float, s: float) -> tuple[int, int]:
    return round(x * s), round(y * s)


def _label(img: np.ndarray, text: str, org: tuple[int, int], colour: Colour) -> None:
    (w, h), base = cv2.getTextSize(text, _FONT, 0.45, 1)
    x, y = org[0], max(org[1], h + base + 2)
    cv2.rectangle(img, (x, y - h - base - 2), (x + w + 4, y), colour, cv2.FILLED)
    cv2.putText(img, text, (x + 2, y - base), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def _box(img: np.ndarray, box: Box, s: float, colour: Colour, thickness: int) -> None:
    cv2.rectangle(img, _pt(box[0], box[1], s), _pt(box[2], box[3], s), colour, thickness)


def _skeleton(img: np.ndarray, lm: Landmarks, s: float, colour: Colour) -> None:
    pts = lm.points
    shown = [p[3] >= VISIBLE for p in pts]
    if len(pts) >= POSE_LANDMARKS:
        for a, b in POSE_CONNECTIONS:
            if shown[a] and shown[b]:
                pa, pb = pts[a], pts[b]
                cv2.line(img, _pt(pa[0], pa[1], s), _pt(pb[0], pb[1], s), colour, 2, cv2.LINE_AA)
    for p, ok in zip(pts, shown, strict=True):
        if ok:
            cv2.circle(img, _pt(p[0], p[1], s), 3, (255, 255, 255), cv2.FILLED, cv2.LINE_AA)


def _result(img: np.ndarray, model: str, r: Result, s: float, line: list[int]) -> None:
    colour = colour_of(model)
    if isinstance(r, Detection):
        _box(img, r.box, s, colour, 2)
        name = r.label if r.label == model else f"{model}: {r.label}"
        if r.track_id is not None:
            name += f" #{r.track_id}"
        _label(img, f"{name} {r.score:.2f}", _pt(r.box[0], r.box[1], s), colour)
        for x, y in r.keypoints:
            cv2.circle(img, _pt(x, y, s), 2, colour, cv2.FILLED)
    elif isinstance(r, Landmarks):
        _skeleton(img, r, s, colour)
    elif isinstance(r, Classification) and r.top:
        label, score = r.top[0]
        if r.box is None:
            line[0] += 1
            _label(img, f"{model}: {label} {score:.2f}", (4, 22 + 20 * line[0]), colour)
        else:
            _box(img, r.box, s, colour, 1)
            _label(img, f"{model}: {label} {score:.2f}", _pt(r.box[0], r.box[3], s), colour)
    elif isinstance(r, TextBox):
        poly = np.array([_pt(x, y, s) for x, y in r.polygon], dtype=np.int32)
        cv2.polylines(img, [poly], True, colour, 2, cv2.LINE_AA)


def _tracks(img: np.ndarray, objects: Sequence[dict[str, Any]], s: float) -> None:
    """Each tracked object's trail (its recent foot points) and id at the trail's head; a
    thin box where the tracker carries it between detections (the detection's box else)."""
    for obj in objects:
        if not obj["confirmed"] or len(obj["trail"]) < 2:
            continue
        colour = colour_of(f"track-{obj['track_id']}")
        if obj["since_detected_s"] > 0:
            _box(img, tuple(obj["box"]), s, colour, 1)
        pts = np.array([_pt(x, y, s) for x, y in obj["trail"]], dtype=np.int32)
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        _label(img, f"#{obj['track_id']}", (int(pts[-1][0]) + 4, int(pts[-1][1])), colour)


def _tint(img: np.ndarray, where: np.ndarray, colour: Colour) -> None:
    """Blend ``colour`` half into the pixels where ``where`` (an HxW array) is non-zero."""
    blend = cv2.addWeighted(img, 0.5, np.full_like(img, colour), 0.5, 0.0)
    np.copyto(img, blend, where=(where > 0)[..., None])


def _overlay_mask(img: np.ndarray, mask: np.ndarray) -> None:
    if mask.size == 0:
        return
    big = cv2.resize(mask, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    _tint(img, big, _MASK)


def _object_masks(img: np.ndarray, masks: Sequence[np.ndarray]) -> None:
    """The camera's object masks (polygons in shares of the frame): greyed and outlined."""
    if not masks:
        return
    h, w = img.shape[:2]
    polys = [np.round(m * (w, h)).astype(np.int32) for m in masks]
    area = np.zeros((h, w), np.uint8)
    cv2.fillPoly(area, polys, 255)
    _tint(img, area, _OBJECT_MASK)
    cv2.polylines(img, polys, True, _OBJECT_MASK, 1, cv2.LINE_AA)


def _header(job: FrameJob) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(job.frame.wall))
    lat = " ".join(f"{k} {v:.1f}ms" for k, v in sorted(job.latency_ms.items()))
    return f"{job.frame.camera} #{job.frame.index} {stamp} motion {job.gate.ratio:.1%} {lat}"


def annotate(job: FrameJob, *, mask: bool, max_width: int) -> np.ndarray:
    """A BGR copy of the job's frame with its results drawn (and the motion mask if asked)."""
    src = job.frame.image
    s = min(1.0, max_width / src.shape[1])
    if s < 1.0:
        size = (round(src.shape[1] * s), round(src.shape[0] * s))
        img = cv2.resize(src, size, interpolation=cv2.INTER_AREA)
    else:
        img = src.copy()
    if job.perception is not None:
        _object_masks(img, job.perception.masks)
    if mask:
        _overlay_mask(img, job.gate.mask)
    for box in job.gate.boxes:
        _box(img, box, s, _MOTION, 1)
    _tracks(img, job.objects, s)
    line = [0]
    for model, results in sorted(job.results.items()):
        for r in _draw_order(results):
            _result(img, model, r, s, line)
    _label(img, _header(job), (4, 18), (235, 235, 235))
    return img


def _draw_order(results: Sequence[Result]) -> Sequence[Result]:
    """Boxes first, then skeletons and text on top of them."""
    return sorted(results, key=lambda r: not isinstance(r, Detection | Classification))


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
