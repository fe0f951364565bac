"""Camera capture: OpenCV reads a file, a network stream or a V4L2 device in its own thread.

Frames go into a ``FrameRing`` (bounded; newest wins, or lossless for benchmarks).
A file that cannot be opened or decoded fails ``start()`` with a ``CaptureError``;
a stream or device that is unreachable or disappears is reopened with capped
exponential backoff (with jitter) and the capture resumes; its failed opens are one
outage in the log (the first with its cause, then one line every few minutes, and the
recovery), the cause also in ``last_error`` (and /readyz). ``stop()`` returns within
its timeout even while the thread backs off; a read blocked inside OpenCV ends by
the stream's own timeout (``io_timeout_s``) and the daemon thread exits then.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, Protocol

import cv2
import numpy as np

from edged.cameraconfig import CameraConfig, SourceKind, redact_source, source_kind
from edged.ring import Frame, FrameRing  # re-exported: callers import the ring from here
from edgefed.errors import CaptureError
from edgefed.outage import Outage

log = logging.getLogger(__name__)

_DEFAULT_FPS = 25.0
_FPS_EMA_ALPHA = 0.1
_PUT_POLL_S = 0.2


class VideoReader(Protocol):
    """The part of ``cv2.VideoCapture`` the capture uses."""

    def isOpened(self) -> bool: ...

    def read(self) -> tuple[bool, Any]: ...

    def get(self, prop_id: int) -> float: ...

    def set(self, prop_id: int, value: float) -> bool: ...

    def release(self) -> None: ...


Opener = Callable[[str | int], VideoReader]


# FFmpeg's own log level for OpenCV's FFmpeg backend (read once, at its first open): only
# fatal errors. At OpenCV's default (errors), a video with corrupt chunks wrote a line per
# damaged macroblock row to edged's stderr (28 MB in 50 s). An operator who wants them
# sets OPENCV_FFMPEG_LOGLEVEL (e.g. 16) in edged's environment, which is left as given.
FFMPEG_LOGLEVEL = "8"  # AV_LOG_FATAL


def open_video(source: str | int, timeout_s: float = 10.0) -> VideoReader:
    """Open a source with OpenCV: FFmpeg for files and streams (with timeouts), V4L2 else."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", FFMPEG_LOGLEVEL)
    kind = source_kind(source)
    if kind is SourceKind.DEVICE:
        return cv2.VideoCapture(source, cv2.CAP_V4L2)
    if kind is SourceKind.STREAM:
        ms = int(timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return cv2.VideoCapture(str(source), cv2.CAP_FFMPEG, params)
    return cv2.VideoCapture(str(source), cv2.CAP_FFMPEG)


class Backoff:
    """Capped exponential backoff with +/- jitter: initial, 2x, 4x, ... up to ``maximum``."""

    def __init__(
        self, initial: float, maximum: float, jitter: float, rng: random.Random | None = None
    ) -> None:
        self._initial, self._max, self._jitter = initial, maximum, jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        base = min(self._max, self._initial * 2.0 ** min(self._attempt, 62))
        self._attempt += 1
        spread = base * self._jitter
        return max(0.0, min(self._max, base + self._rng.uniform(-spread, spread)))

    def reset(self) -> None:
        self._attempt = 0


class CaptureState(StrEnum):
    CONNECTING = "connecting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # a file reached its end (loop off)
    FAILED = "failed"  # cannot continue: see last_error
    STOPPED = "stopped"  # stop() was called


@dataclass(frozen=True)
class CaptureStats:
    state: CaptureState
    frames: int  # frames delivered to the ring
    drops: int  # frames the ring dropped (newest wins)
    reconnects: int  # times frames flowed again after the source was lost
    retries: int  # failed open attempts
    fps: float  # smoothed delivery rate (0 unless running)
    last_error: str | None
    errors: int = 0  # a file that ended before its declared frame count (truncated, corrupt)


class CaptureSource:
    """Reads one camera into a ring from a named daemon thread."""

    def __init__(
        self,
        config: CameraConfig,
        ring: FrameRing,
        opener: Opener | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._ring = ring
        self._opener: Opener = opener or (lambda s: open_video(s, config.io_timeout_s))
        self._kind = config.kind
        self._backoff = Backoff(
            config.reconnect_initial_s, config.reconnect_max_s, config.reconnect_jitter, rng
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state = CaptureState.CONNECTING
        self._frames = 0
        self._reconnects = 0
        self._retries = 0
        self._lost = False
        self._flowing_since = 0.0  # the first frame of the current connection
        self._ema_dt: float | None = None
        self._last_ts: float | None = None
        self._last_error: str | None = None
        self._errors = 0
        # failed opens end with the first frame; drops, however often the stream opens
        # again, once frames have flowed for reconnect_max_s (``_deliver``)
        self._opening = Outage(log, f"camera {config.name}: opening the {self._kind}", settle_s=0)
        self._streaming = Outage(log, f"camera {config.name}: reading the {self._kind}", settle_s=0)

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start the capture thread; a file that cannot be read raises CaptureError here."""
        if self._thread is not None:
            raise RuntimeError(f"camera {self.config.name}: capture already started")
        reader, first = self._open_file() if self._kind is SourceKind.FILE else (None, None)
        self._thread = threading.Thread(
            target=self._run,
            args=(reader, first),
            name=f"capture-{self.config.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> CaptureStats:
        with self._lock:
            ema = self._ema_dt if self._state is CaptureState.RUNNING else None
            return CaptureStats(
                state=self._state,
                frames=self._frames,
                drops=self._ring.drops,
                reconnects=self._reconnects,
                retries=self._retries,
                fps=1.0 / ema if ema else 0.0,
                last_error=self._last_error,
                errors=self._errors,
            )

    # -- opening ---------------------------------------------------------------------
    def _open_file(self) -> tuple[VideoReader, np.ndarray]:
        """Open a file and decode its first frame, so a bad file fails at start."""
        path = Path(str(self.config.source))
        where = f"camera {self.config.name}: video file {path}"
        if not path.is_file():
            self._fail(f"{where} does not exist")
        reader = self._open()
        if reader is None:
            self._fail(f"{where} cannot be opened (not a video OpenCV can decode)")
        first = self._read(reader)
        if first is None:
            reader.release()
            self._fail(f"{where} has no decodable frame")
        return reader, first

    def _fail(self, message: str) -> NoReturn:
        self._set_state(CaptureState.FAILED, message)
        raise CaptureError(message)

    def _open(self) -> VideoReader | None:
        try:
            reader = self._opener(self.config.source)
        except (cv2.error, OSError, ValueError) as exc:
            self._note_error(f"open failed: {exc}")
            return None
        if reader.isOpened():
            return reader
        reader.release()
        self._note_error(f"cannot open {self._describe_source()}")
        return None

    def _connect(self) -> VideoReader | None:
        """Open a stream/device, backing off between attempts; None once stop() is called."""
        while not self._stop.is_set():
            reader = self._open()
            if reader is not None:
                return reader
            with self._lock:
                self._retries += 1
                error = self._last_error
            self._opening.failed(CaptureError(error))
            if self._stop.wait(self._backoff.next()):
                break
        return None

    def _describe_source(self) -> str:
        return f"{self._kind.value} {redact_source(self.config.source)}"

    # -- the thread ------------------------------------------------------------------
    def _run(self, reader: VideoReader | None, first: np.ndarray | None) -> None:
        try:
            self._loop(reader, first)
        except Exception as exc:  # contained: a capture bug never kills the daemon
            log.exception("camera %s: capture thread failed", self.config.name)
            self._set_state(CaptureState.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                if self._state not in (CaptureState.ENDED, CaptureState.FAILED):
                    self._state = CaptureState.STOPPED

    def _loop(self, reader: VideoReader | None, first: np.ndarray | None) -> None:
        if reader is None:
            reader = self._connect()
        interval = self._frame_interval(reader) if reader is not None else 0.0
        due = time.monotonic()
        while reader is not None and not self._stop.is_set():
            image = first if first is not None else self._read(reader)
            first = None
            if image is not None:
                if not self._deliver(image):
                    break
                if interval:
                    due = self._pace(due, interval)
                continue
            if self._kind is SourceKind.FILE:
                self._check_complete(reader)
            reader.release()
            reader = None
            if self._kind is SourceKind.FILE:
                if not self.config.loop:
                    self._set_state(CaptureState.ENDED, None)
                    log.info("camera %s: end of file", self.config.name)
                    return
                try:  # as at start: a file replaced by one with no frame fails, not spins
                    reader, first = self._open_file()
                except CaptureError as exc:
                    log.error("cannot loop: %s", exc)
                    return
                continue
            self._lost = True
            self._set_state(CaptureState.RECONNECTING, f"{self._describe_source()} lost")
            self._streaming.failed(CaptureError(f"{self._describe_source()} lost"))
            if self._stop.wait(self._backoff.next()):
                break
            reader = self._connect()
        if reader is not None:
            reader.release()

    def _check_complete(self, reader: VideoReader) -> None:
        """A file whose reads stop before the frame count its container declares was
        truncated (or is corrupt past that point): a camera error, counted. FFmpeg
        conceals damaged frames it can still decode, so those are not seen here."""
        count, position = reader.get(cv2.CAP_PROP_FRAME_COUNT), reader.get(cv2.CAP_PROP_POS_FRAMES)
        if not (math.isfinite(count) and math.isfinite(position)) or position >= count - 1:
            return
        error = f"video file ended at frame {int(position)} of {int(count)}: truncated or corrupt"
        with self._lock:
            self._errors += 1
            again = error == self._last_error  # a looped file: warned once, counted each time
        self._note_error(error)
        log.log(
            logging.DEBUG if again else logging.WARNING, "camera %s: %s", self.config.name, error
        )

    def _read(self, reader: VideoReader) -> np.ndarray | None:
        """The next decoded frame, or None at the end of a file or when a source fails."""
        try:
            ok, image = reader.read()
        except cv2.error as exc:
            self._note_error(f"read failed: {exc}")
            return None
        if not ok or not isinstance(image, np.ndarray) or image.size == 0:
            return None
        return image

    def _deliver(self, image: np.ndarray) -> bool:
        """Put one frame in the ring; False when the ring is closed or stop() was called."""
        now = time.monotonic()
        self._opening.ok()  # frames flow: an outage of failed opens ends (cheap when none)
        with self._lock:
            if self._state is not CaptureState.RUNNING:
                if self._lost:
                    self._reconnects += 1
                    self._lost = False
                self._state = CaptureState.RUNNING
                self._flowing_since = now
                self._ema_dt = self._last_ts = None  # the gap is not a frame interval
            if self._last_ts is not None:
                dt = max(now - self._last_ts, 1e-6)
                ema = self._ema_dt
                self._ema_dt = dt if ema is None else ema + _FPS_EMA_ALPHA * (dt - ema)
            self._last_ts = now
            frame = Frame(self.config.name, self._frames, now, time.time(), image)
            self._frames += 1
        if now - self._flowing_since >= self.config.reconnect_max_s:  # steady again
            self._backoff.reset()  # a drop now waits reconnect_initial_s
            self._streaming.ok()
        while not self._stop.is_set():
            if self._ring.put(frame, timeout=_PUT_POLL_S):
                return True
            if self._ring.closed:
                return False
        return False

    def _frame_interval(self, reader: VideoReader) -> float:
        if self._kind is not SourceKind.FILE or self.config.pace == "fast":
            return 0.0
        fps = reader.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            fps = _DEFAULT_FPS
        return 1.0 / fps

    def _pace(self, due: float, interval: float) -> float:
        due += interval
        wait = due - time.monotonic()
        if wait > 0:
            self._stop.wait(wait)
        elif wait < -1.0:  # fell far behind (slow consumer): do not burst to catch up
            due = time.monotonic()
        return due

    # -- state -------------------------------------------------------------------------
    def _set_state(self, state: CaptureState, error: str | None) -> None:
        with self._lock:
            self._state = state
            if error is not None:
                self._last_error = error

    def _note_error(self, error: str) -> None:
        with self._lock:
            self._last_error = error
