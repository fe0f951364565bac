"""The results loop closed: each offloaded job's outcome reaches the user.

``OffloadResults`` is the offload client's outcome listener. For every job that closes
(Exit with the server's result, Failed, Expired) it builds one ``offload_result`` record::

    {"type": "offload_result", "job_id", "camera", "frame", "model", "status",
     "served_by", "result"}

and hands it to its sinks (the ``output.results`` JSON-lines file, the EventBus); it
counts outcomes by status (``/metrics``, the status API) and keeps the last few, with
the local result they were offloaded from, for the dashboard. A sink that fails is
logged and counted; the others still get the record.

It runs on edged's network loop (where the client tells outcomes), so it does no more
than build a small dict and call the sinks; the sinks take their own locks.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from edged.offload.core import JobOutcome
from edgefed.outage import Sinks

log = logging.getLogger(__name__)

RECORD_TYPE = "offload_result"
RECENT = 20  # outcomes kept for the dashboard

RecordSink = Callable[[dict[str, Any]], None]


def offload_record(outcome: JobOutcome) -> dict[str, Any]:
    """The ``offload_result`` JSON object of one closed job (keys are a contract)."""
    result = outcome.result
    return {
        "type": RECORD_TYPE,
        "job_id": outcome.job_id,
        "camera": outcome.metadata.get("camera"),
        "frame": outcome.metadata.get("frame"),
        "model": outcome.model,
        "status": str(outcome.status),
        "served_by": result.served_by if result is not None else None,
        "result": result.results if result is not None else None,
    }


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
