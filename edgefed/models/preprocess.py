"""BGR frame (or a region of it) -> model input tensor, plus the way back to frame pixels.

The region is cut as a view, resized with OpenCV straight to its size in the model
input (area averaging when shrinking, bilinear when enlarging), pasted on a zero canvas
only when padding is needed (letterbox, or a region reaching outside the frame), and
converted to float once, with OpenCV's per-channel arithmetic. ``Transform`` maps
normalised model-input coordinates (0..1) back to frame pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edgefed.errors import ModelError
from edgefed.images.manifest import InputSpec

from .types import Box


@dataclass(frozen=True)
class Transform:
    """``x = u * ax + bx`` and ``y = v * ay + by`` for normalised input coords (u, v)."""

    ax: float
    bx: float
    ay: float
    by: float

    def point(self, u: float, v: float) -> tuple[float, float]:
        return u * self.ax + self.bx, v * self.ay + self.by

    def box(self, box: Box) -> Box:
        x1, y1 = self.point(box[0], box[1])
        x2, y2 = self.point(box[2], box[3])
        return x1, y1, x2, y2

    def points(self, uv: np.ndarray) -> np.ndarray:
        """Map an (N, >=2) array; column 0 is u, column 1 is v, column 2 (z) scales like u."""
        out = np.array(uv, dtype=np.float64, copy=True)
        out[:, 0] = out[:, 0] * self.ax + self.bx
        out[:, 1] = out[:, 1] * self.ay + self.by
        if out.shape[1] > 2:
            out[:, 2] = out[:, 2] * self.ax
        return out


@dataclass(frozen=True)
class _Placement:
    """Integer source rectangle (frame) and where it lands in the model input."""

    src: tuple[int, int, int, int]
    dst: tuple[int, int, int, int]
    transform: Transform


def _scales(spec: InputSpec, rw: float, rh: float) -> tuple[float, float]:
    if spec.resize == "stretch":
        return spec.width / rw, spec.height / rh
    if spec.resize == "letterbox":
        s = min(spec.width / rw, spec.height / rh)
    else:
        s = max(spec.width / rw, spec.height / rh) / spec.crop_fraction
    return s, s


def place(spec: InputSpec, frame_w: int, frame_h: int, region: Box | None) -> _Placement:
    """Where ``region`` of a frame goes in the model input, and the inverse mapping."""
    x1, y1, x2, y2 = region if region is not None else (0.0, 0.0, float(frame_w), float(frame_h))
    rw, rh = x2 - x1, y2 - y1
    if not (rw >= 1 and rh >= 1 and all(map(math.isfinite, (x1, y1, x2, y2)))):
        raise ModelError(f"region {region} is empty or not finite")
    sx, sy = _scales(spec, rw, rh)
    tx = spec.width / 2 - (x1 + rw / 2) * sx  # content centred in the input
    ty = spec.height / 2 - (y1 + rh / 2) * sy
    # source pixels that are inside the frame, the region and the model input
    lo_x = max(0.0, x1, -tx / sx)
    hi_x = min(float(frame_w), x2, (spec.width - tx) / sx)
    lo_y = max(0.0, y1, -ty / sy)
    hi_y = min(float(frame_h), y2, (spec.height - ty) / sy)
    src = (math.floor(lo_x), math.floor(lo_y), math.ceil(hi_x), math.ceil(hi_y))
    dst = (
        max(0, round(src[0] * sx + tx)),
        max(0, round(src[1] * sy + ty)),
        min(spec.width, round(src[2] * sx + tx)),
        min(spec.height, round(src[3] * sy + ty)),
    )
    if dst[2] - dst[0] < 1 or dst[3] - dst[1] < 1 or src[2] <= src[0] or src[3] <= src[1]:
        raise ModelError(f"region {region} lies outside the {frame_w}x{frame_h} frame")
    # exact map of the integer rectangles, so results land where the pixels came from
    kx = (src[2] - src[0]) / (dst[2] - dst[0])
    ky = (src[3] - src[1]) / (dst[3] - dst[1])
    transform = Transform(
        ax=spec.width * kx,
        bx=src[0] - dst[0] * kx,
        ay=spec.height * ky,
        by=src[1] - dst[1] * ky,
    )
    return _Placement(src, dst, transform)


class Preprocessor:
    """Turns frames into input tensors for one ``InputSpec``; holds the constant arrays."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        # OpenCV scalars (4 doubles): per-channel arithmetic on HWC images is vectorised
        # there, while numpy broadcasting over a last axis of 3 is ~6x slower. A 4x1
        # column, not a 1-D array: OpenCV 4.11 (.venv-triton, Triton's stub) leaks four
        # Python floats (128 B) per call converting a 1-D array (opencv/opencv#27171)
        self._mean = np.array([*spec.mean, 0.0], dtype=np.float64).reshape(4, 1)
        inv_std = (1.0 / np.array(spec.std, dtype=np.float64)).astype(np.float32)
        self._inv_std = np.array([*inv_std, 0.0], dtype=np.float64).reshape(4, 1)

    def __call__(
        self, frame: np.ndarray, region: Box | None = None
    ) -> tuple[np.ndarray, Transform]:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ModelError(f"expected a BGR uint8 frame, got {frame.dtype} {frame.shape}")
        spec = self.spec
        fh, fw = frame.shape[:2]
        p = place(spec, fw, fh, region)
        view = frame[p.src[1] : p.src[3], p.src[0] : p.src[2]]
        dw, dh = p.dst[2] - p.dst[0], p.dst[3] - p.dst[1]
        resized = resize(view, dw, dh)
        if (dw, dh) == (spec.width, spec.height):
            image = resized
        else:
            image = np.zeros((spec.height, spec.width, 3), dtype=np.uint8)
            image[p.dst[1] : p.dst[3], p.dst[0] : p.dst[2]] = resized
        return self._tensor(image), p.transform

    def _tensor(self, image: np.ndarray) -> np.ndarray:
        """HWC BGR uint8 -> the model's channel order, dtype (normalised) and layout."""
        spec = self.spec
        ordered = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if spec.color == "RGB" else image
        if spec.dtype == "uint8":
            t = ordered
        else:
            t = ordered.astype(np.float32)
            cv2.subtract(t, self._mean, dst=t)
            cv2.multiply(t, self._inv_std, dst=t)
        laid_out = t.transpose(2, 0, 1) if spec.layout == "NCHW" else t
        return np.ascontiguousarray(laid_out)[np.newaxis]


def resize(view: np.ndarray, width: int, height: int) -> np.ndarray:
    """``view`` resized to ``width`` x ``height``: area averaging to shrink, bilinear to enlarge.

    A shrink by a non-integer factor takes OpenCV's slow general area path (1.6 ms for
    640x480 -> 224x168 here); halving first while both sides are even and at least twice
    the target uses its integer fast path on the same pixels (0.7 ms in all).
    """
    h, w = view.shape[:2]
    if not (width < w and height < h):
        return cv2.resize(view, (width, height), interpolation=cv2.INTER_LINEAR)
    while w % 2 == 0 and h % 2 == 0 and w >= 2 * width and h >= 2 * height:
        w, h = w // 2, h // 2
        view = cv2.resize(view, (w, h), interpolation=cv2.INTER_AREA)
    if (w, h) == (width, height):
        return view
    return cv2.resize(view, (width, height), interpolation=cv2.INTER_AREA)
