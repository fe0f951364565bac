"""The results loop closed: each offloaded job's outcome reaches the user.

``OffloadResults`` is the offload client's outcome listener. For every job that closes
(Exit with the server's result, Failed, Expired) it builds one ``offload_result`` record::

    {"type": "offload_result", "job_id", "camera", "frame", "model", "status",
     "served_by", "result"}

(and ``"masked"``, the number of the server's detections the camera's object masks
dropped from ``result``, when there were any)

and hands it to its sinks (the ``output.results`` JSON-lines file, the EventBus); it
counts outcomes by status (``/metrics``, the status API) and keeps the last few, with
the local result they were offloaded from, for the dashboard. A sink that fails is
logged and counted; the others still get the record.

It runs on edged's network loop (where the client tells outcomes), so it does no more
than build a small dict and call the sinks; the sinks take their own locks.

``ObjectMasks`` holds the server's answers to the cameras' object masks before anyone
sees them: the detections of the detector the masks apply to on the edge that stand in
a mask are dropped, as the edge drops its own (docs/perception.md).
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from edged.offload.core import JobOutcome
from edged.perception import masked
from edgefed.outage import Sinks

log = logging.getLogger(__name__)

RECORD_TYPE = "offload_result"
RECENT = 20  # outcomes kept for the dashboard

RecordSink = Callable[[dict[str, Any]], None]


def offload_record(outcome: JobOutcome) -> dict[str, Any]:
    """The ``offload_result`` JSON object of one closed job (keys are a contract)."""
    result = outcome.result
    record = {
        "type": RECORD_TYPE,
        "job_id": outcome.job_id,
        "camera": outcome.metadata.get("camera"),
        "frame": outcome.metadata.get("frame"),
        "model": outcome.model,
        "status": str(outcome.status),
        "served_by": result.served_by if result is not None else None,
        "result": result.results if result is not None else None,
    }
    if outcome.masked:
        record["masked"] = outcome.masked
    return record


class OffloadResults:
    """Outcome listener: records to the sinks, counts by status, the recent ones kept."""

    def __init__(self, sinks: Iterable[RecordSink] = (), recent: int = RECENT) -> None:
        self._sinks = Sinks(log, "offload result sink", sinks)
        self._lock = threading.Lock()
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self._counts: dict[str, int] = {}

    def __call__(self, outcome: JobOutcome) -> None:
        record = offload_record(outcome)
        with self._lock:
            self._counts[record["status"]] = self._counts.get(record["status"], 0) + 1
            self._recent.append({**record, "local_result": outcome.local_result})
        self._sinks(record)

    def status(self) -> dict[str, Any]:
        """Counts by status, sink failures and the recent outcomes (newest first), each
        with the local result it was offloaded from."""
        with self._lock:
            return {
                "counts": dict(self._counts),
                "sink_errors": self._sinks.failures,
                "recent": list(reversed(self._recent)),
            }


class ObjectMasks:
    """The cameras' object masks over the server's answers for ``model`` (the detector
    with ``regions: planned``, which they apply to on the edge).

    ``masks``: camera name -> polygons in shares of the frame. A job carries the size of
    the frame it sent (``width``, ``height`` in its metadata); one without (queued by an
    edged before this) and results that are not detections with a box keep everything."""

    def __init__(
        self, model: str | None, masks: Mapping[str, Sequence[Sequence[tuple[float, float]]]]
    ) -> None:
        self.model = model
        self._masks = {
            camera: [np.asarray(p, np.float32) for p in polygons]
            for camera, polygons in masks.items()
            if polygons
        }

    def __call__(self, outcome: JobOutcome) -> JobOutcome:
        """``outcome`` without the server's detections that stand in its camera's masks."""
        polygons = self._masks.get(str(outcome.metadata.get("camera")))
        result = outcome.result
        if result is None or not polygons or outcome.model != self.model:
            return outcome
        shape = (outcome.metadata.get("height"), outcome.metadata.get("width"))
        if not all(isinstance(v, int) and v > 0 for v in shape):
            return outcome
        kept = [r for r in result.results if not _stands_in(r, polygons, shape)]
        if len(kept) == len(result.results):
            return outcome
        dropped = outcome.masked + len(result.results) - len(kept)
        return replace(outcome, result=result.model_copy(update={"results": kept}), masked=dropped)


def _stands_in(result: Mapping[str, Any], polygons: Sequence[np.ndarray], shape: Any) -> bool:
    box = result.get("box")
    if result.get("type") != "detection" or not isinstance(box, list) or len(box) != 4:
        return False
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
        return False
    x1, y1, x2, y2 = (float(v) for v in box)
    return masked((x1, y1, x2, y2), polygons, shape)
