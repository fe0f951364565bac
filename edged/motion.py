"""Three-frame motion gate: decide on the CPU whether a frame is worth an NPU run.

The gate keeps the last three working frames A, B, C (downscaled grey). With
``diff1 = |A - B|`` and ``diff2 = |B - C|`` a pixel is in motion when both
differences exceed ``threshold``; the AND mask is opened with a 3x3 cross and the
frame has motion when more than ``min_pixels`` pixels survive. A one-frame event
(a flash, a single noisy frame) only shows up in both differences when it is the
middle frame, so before each difference the newer frame's brightness is matched to
the older one (mean and standard deviation): a global flicker or exposure step then
cancels out while a moving object does not.

Working size: the frame is converted to grey and halved with a 2x2 area average
while the result stays at least ``downscale_width`` wide (768x576 -> 384x288), which
averages sensor noise and keeps OpenCV on its fast path. ``min_pixels`` keeps the
meaning it had in the original full-size implementation: ``changed_pixels`` is the
working-size count scaled back to full-frame pixels (x4 per halving).

``update`` is called by one thread (the camera's dispatcher); ``reconfigure`` may be
called from any other thread and takes effect on the next frame.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefed.errors import ConfigError
from edgefed.models.types import Box

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_MIN_STD = 1.0  # below this a frame is flat: no brightness matching
_GAIN_LIMITS = (0.5, 2.0)


class MotionConfig(BaseModel):
    """Settings of the three-frame motion gate."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        True, description="Run the gate; when false every frame counts as motion (no boxes)"
    )
    threshold: int = Field(
        25, ge=1, le=255, description="Grey-level difference a pixel must exceed in both diffs"
    )
    min_pixels: int = Field(
        5,
        ge=0,
        description="Motion when more than this many full-frame pixels changed (the working-"
        "size count after the 3x3 open is scaled back to full size)",
    )
    downscale_width: int = Field(
        320,
        ge=16,
        le=4096,
        description="Halve the frame while it stays at least this wide (768 -> 384)",
    )
    blur: int = Field(
        0,
        ge=0,
        le=7,
        description="Gaussian blur kernel (odd: 3, 5 or 7) on the working frame; 0 = off",
    )
    match_brightness: bool = Field(
        True,
        description="Match each frame's mean/std to the previous one before differencing, so "
        "a global flicker or exposure step is not motion",
    )
    box_dilate: int = Field(
        4,
        ge=0,
        le=32,
        description="Working-size pixels the mask grows by before boxes are formed, joining "
        "fragments of one object",
    )
    box_min_area: int = Field(
        256, ge=0, description="Boxes smaller than this many full-frame pixels are dropped"
    )
    pre_roll: int = Field(
        2,
        ge=0,
        le=8,
        description="Frames kept while the three-frame rule cannot decide yet (their newest "
        "difference changed, the older one not): sent before the first frame it passes",
    )

    @field_validator("blur")
    @classmethod
    def _odd_blur(cls, value: int) -> int:
        if value and value % 2 == 0:
            raise ValueError(f"blur must be 0 or an odd kernel size, got {value}")
        return value


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on one frame."""

    motion: bool
    changed_pixels: int  # full-frame-equivalent count of changed pixels
    ratio: float  # changed share of the frame, 0..1
    mask: np.ndarray  # working-size uint8 mask (0/255), a copy owned by the caller
    boxes: list[Box] = field(default_factory=list)  # full-frame x1, y1, x2, y2; largest first
    primed: bool = True  # False until three frames have been seen
    fresh: bool = False  # no motion, but the newest difference alone shows change


class _Downscaler:
    """BGR or grey frame -> working-size grey frame in reused buffers."""

    def __init__(self, shape: tuple[int, ...], min_width: int, blur: int) -> None:
        h, w = shape[:2]
        self.full_shape = (h, w)
        self._grey_full = np.empty((h, w), np.uint8) if len(shape) == 3 else None
        self._levels: list[np.ndarray] = []
        while w // 2 >= min_width and h // 2 >= 2:
            w, h = w // 2, h // 2
            self._levels.append(np.empty((h, w), np.uint8))
        self.shape = (h, w)
        self.scale = 2 ** len(self._levels)  # full pixels per working pixel, per axis
        self._blur = blur
        self._blurred = np.empty((h, w), np.uint8) if blur else None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self._grey_full is not None:
            grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY, dst=self._grey_full)
        else:
            grey = frame
        for out in self._levels:
            h2, w2 = out.shape
            src = grey[: h2 * 2, : w2 * 2]  # even crop keeps INTER_AREA on its 2x fast path
            grey = cv2.resize(src, (w2, h2), dst=out, interpolation=cv2.INTER_AREA)
        if self._blurred is not None:
            k = self._blur
            grey = cv2.GaussianBlur(grey, (k, k), 0, dst=self._blurred)
        return grey


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        got = getattr(frame, "dtype", type(frame).__name__)
        raise ValueError(f"motion gate needs a uint8 image, got {got}")
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise ValueError(f"motion gate needs an HxWx3 BGR or HxW grey image, got {frame.shape}")
    if frame.shape[0] < 4 or frame.shape[1] < 4:
        raise ValueError(f"motion gate frame too small: {frame.shape}")


class _Buffers:
    """Working-size buffers of one gate, rebuilt when the frame size or working size changes."""

    def __init__(self, frame: np.ndarray, cfg: MotionConfig) -> None:
        self.key = (frame.shape, cfg.downscale_width, cfg.blur)
        self.down = _Downscaler(frame.shape, cfg.downscale_width, cfg.blur)
        shape = self.down.shape
        self.prev = np.zeros(shape, np.uint8)
        self.prev_stats = (0.0, 0.0)
        self.matched = np.empty(shape, np.uint8)
        self.diff_old = np.zeros(shape, np.uint8)  # |A - B|
        self.diff_new = np.zeros(shape, np.uint8)  # |B - C|
        self.t1 = np.empty(shape, np.uint8)
        self.t2 = np.empty(shape, np.uint8)
        self.mask = np.empty(shape, np.uint8)


class ThreeFrameGate:
    """Stateful three-frame differencing gate for one camera (see module docstring)."""

    def __init__(self, config: MotionConfig) -> None:
        self._config = config
        self._config_lock = threading.Lock()  # serialises concurrent reconfigure() calls
        self._buf: _Buffers | None = None
        self._seen = 0  # frames in the history, 0..3

    @property
    def config(self) -> MotionConfig:
        return self._config

    def reconfigure(
        self,
        *,
        threshold: int | None = None,
        min_pixels: int | None = None,
        enabled: bool | None = None,
    ) -> MotionConfig:
        """Change settings at run time (validated; ConfigError names the bad value)."""
        changes = {
            k: v
            for k, v in (("threshold", threshold), ("min_pixels", min_pixels), ("enabled", enabled))
            if v is not None
        }
        with self._config_lock:
            try:
                new = MotionConfig.model_validate({**self._config.model_dump(), **changes})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ConfigError(f"motion.{where}: {first['msg']}") from exc
            self._config = new
            return new

    def reset(self) -> None:
        """Forget the frame history (the next two frames prime the gate again)."""
        self._seen = 0

    def update(self, frame: np.ndarray) -> GateResult:
        """Feed the newest frame; returns whether it shows motion."""
        _check_frame(frame)
        frame = np.ascontiguousarray(frame)  # no copy for frames straight from OpenCV
        cfg = self._config  # one read: a concurrent reconfigure applies to the next frame
        buf = self._buffers(frame, cfg)
        if not cfg.enabled:
            self._seen = 0  # the history is stale once the gate runs again
            return GateResult(True, 0, 0.0, np.zeros(buf.down.shape, np.uint8), [], True)
        work = buf.down(frame)
        mean_arr, std_arr = cv2.meanStdDev(work)
        stats = (float(mean_arr[0, 0]), float(std_arr[0, 0]))
        if self._seen >= 1:
            _matched_diff(buf.prev, buf.prev_stats, work, stats, cfg, buf.matched, buf.diff_new)
        np.copyto(buf.prev, work)
        buf.prev_stats = stats
        self._seen = min(self._seen + 1, 3)
        if self._seen < 3:
            result = GateResult(False, 0, 0.0, np.zeros(buf.down.shape, np.uint8), [], False)
        else:
            result = _decide(buf, cfg)
        buf.diff_old, buf.diff_new = buf.diff_new, buf.diff_old
        return result

    def _buffers(self, frame: np.ndarray, cfg: MotionConfig) -> _Buffers:
        buf = self._buf
        if buf is None or buf.key != (frame.shape, cfg.downscale_width, cfg.blur):
            buf = self._buf = _Buffers(frame, cfg)
            self._seen = 0
        return buf


def _matched_diff(
    old: np.ndarray,
    old_stats: tuple[float, float],
    new: np.ndarray,
    new_stats: tuple[float, float],
    cfg: MotionConfig,
    scratch: np.ndarray,
    out: np.ndarray,
) -> None:
    """``out = |old - new|`` with ``new``'s mean/std matched to ``old`` first."""
    if cfg.match_brightness and new_stats[1] >= _MIN_STD and old_stats[1] >= _MIN_STD:
        gain = min(max(old_stats[1] / new_stats[1], _GAIN_LIMITS[0]), _GAIN_LIMITS[1])
        offset = old_stats[0] - gain * new_stats[0]
        new = cv2.addWeighted(new, gain, new, 0.0, offset, dst=scratch)
    cv2.absdiff(old, new, dst=out)


def _decide(buf: _Buffers, cfg: MotionConfig) -> GateResult:
    t = float(cfg.threshold)
    cv2.threshold(buf.diff_old, t, 255, cv2.THRESH_BINARY, dst=buf.t1)
    cv2.threshold(buf.diff_new, t, 255, cv2.THRESH_BINARY, dst=buf.t2)
    cv2.bitwise_and(buf.t1, buf.t2, dst=buf.t1)
    mask = cv2.morphologyEx(buf.t1, cv2.MORPH_OPEN, _CROSS, dst=buf.mask)
    count = cv2.countNonZero(mask)
    changed = count * buf.down.scale * buf.down.scale
    motion = changed > cfg.min_pixels
    fresh = False
    if not motion and cfg.pre_roll:  # could the next frame make this one motion?
        fresh_count = cv2.countNonZero(cv2.morphologyEx(buf.t2, cv2.MORPH_OPEN, _CROSS))
        fresh = fresh_count * buf.down.scale * buf.down.scale > cfg.min_pixels
    boxes = _boxes(mask, buf.t2, buf.down, cfg, buf.t1) if motion else []
    return GateResult(motion, changed, count / float(mask.size), mask.copy(), boxes, True, fresh)


def _boxes(
    mask: np.ndarray, fresh: np.ndarray, down: _Downscaler, cfg: MotionConfig, scratch: np.ndarray
) -> list[Box]:
    """Full-frame boxes around the motion, largest first.

    The AND mask marks the object where it was in the middle frame B, and only where
    it differs from both neighbours (little of a plain coat moving slowly). The boxes
    are therefore the blobs of the newest difference ``|B - C|`` (opened, grown by
    ``box_dilate``) that contain AND-mask pixels: they span the object in B and in
    the newest frame C, which is the frame a detector will look at.
    """
    blobs = cv2.morphologyEx(fresh, cv2.MORPH_OPEN, _CROSS, dst=scratch)
    cv2.bitwise_or(blobs, mask, dst=blobs)
    if cfg.box_dilate:
        k = 2 * cfg.box_dilate + 1
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
        blobs = cv2.dilate(blobs, kernel, dst=fresh)
    contours, _ = cv2.findContours(blobs, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    s = float(down.scale)
    fh, fw = down.full_shape
    out: list[tuple[float, Box]] = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if not cv2.countNonZero(mask[y : y + h, x : x + w]):
            continue  # a change between B and C alone: not three-frame motion
        x1, y1 = float(x) * s, float(y) * s
        x2, y2 = min(float(x + w) * s, fw), min(float(y + h) * s, fh)
        area = (x2 - x1) * (y2 - y1)
        if area >= cfg.box_min_area:
            out.append((area, (x1, y1, x2, y2)))
    out.sort(key=lambda item: item[0], reverse=True)
    return [box for _, box in out]
