"""What the model runtime returns: one frozen dataclass per kind of result.

Coordinates are frame pixels once a result leaves ``ModelRunner``; inside a decoder
they are normalised model-input coordinates (0..1) and the runner maps them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Box = tuple[float, float, float, float]  # x1, y1, x2, y2
Point = tuple[float, float]
Landmark = tuple[float, float, float, float]  # x, y, z, visibility


@dataclass(frozen=True)
class Detection:
    """An object box with its class, score and optional keypoints (x, y)."""

    label: str
    score: float
    box: Box
    keypoints: tuple[Point, ...] = ()
    track_id: int | None = None  # set by the tracker (edged.tracking) for tracked models


@dataclass(frozen=True)
class Landmarks:
    """Keypoints of one object inside ``box`` (the crop the model ran on)."""

    box: Box
    presence: float
    points: tuple[Landmark, ...]
    track_id: int | None = None  # the tracked person it belongs to (cascades follow tracks)


@dataclass(frozen=True)
class Classification:
    """Top-k classes of a whole frame (``box`` None) or of one region."""

    top: tuple[tuple[str, float], ...]
    box: Box | None = None


@dataclass(frozen=True)
class TextBox:
    """A text line: its axis-aligned box, score and rotated 4-point polygon."""

    box: Box
    score: float
    polygon: tuple[Point, ...]


Result = Detection | Landmarks | Classification | TextBox

_PIXELS = 1
_SCORE = 4


def _r(values: Any, digits: int) -> list[Any]:
    return [round(float(v), digits) for v in values]


def result_to_dict(result: Result) -> dict[str, Any]:
    """A JSON-ready dict of a result, floats rounded (pixels 0.1, scores 1e-4)."""
    if isinstance(result, Detection):
        out: dict[str, Any] = {
            "type": "detection",
            "label": result.label,
            "score": round(result.score, _SCORE),
            "box": _r(result.box, _PIXELS),
        }
        if result.keypoints:
            out["keypoints"] = [_r(p, _PIXELS) for p in result.keypoints]
        if result.track_id is not None:
            out["track_id"] = result.track_id
        return out
    if isinstance(result, Landmarks):
        return {
            "type": "landmarks",
            "box": _r(result.box, _PIXELS),
            "presence": round(result.presence, _SCORE),
            "points": [[*_r(p[:3], _PIXELS), round(p[3], _SCORE)] for p in result.points],
            **({"track_id": result.track_id} if result.track_id is not None else {}),
        }
    if isinstance(result, Classification):
        return {
            "type": "classification",
            "top": [[label, round(score, _SCORE)] for label, score in result.top],
            "box": None if result.box is None else _r(result.box, _PIXELS),
        }
    return {
        "type": "text",
        "box": _r(result.box, _PIXELS),
        "score": round(result.score, _SCORE),
        "polygon": [_r(p, _PIXELS) for p in result.polygon],
    }
