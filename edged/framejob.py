"""A gated frame in flight through the models, and the record it becomes.

The pipeline makes one ``FrameJob`` per frame with motion; the model workers fill in its
results; the sinks (results file, event log, EventBus, offload policy) read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edged.capture import Frame
from edged.motion import GateResult
from edged.perception import CameraPerception
from edged.regionplan import Plan
from edgefed.models.types import Box, Result, result_to_dict


@dataclass
class FrameJob:
    """One gated frame in flight through the models."""

    frame: Frame
    gate: GateResult
    motion_regions: list[Box]
    pending: int = 0
    results: dict[str, list[Result]] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # perf_counter
    errors: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    plan: Plan | None = None  # planned detector regions (models with regions: planned)
    perception: CameraPerception | None = None  # the camera's planner and tracker
    objects: list[dict[str, Any]] = field(default_factory=list)  # tracks after this frame

    @property
    def key(self) -> str:
        return f"{self.frame.camera}:{self.frame.index}"

    def record(self) -> dict[str, Any]:
        """The JSON-ready record written to results.jsonl and the event log."""
        return {
            "camera": self.frame.camera,
            "frame": self.frame.index,
            "time": round(self.frame.wall, 3),
            "motion": {
                "ratio": round(self.gate.ratio, 5),
                "boxes": [[round(v, 1) for v in b] for b in self.gate.boxes],
            },
            "models": {
                name: [result_to_dict(r) for r in results] for name, results in self.results.items()
            },
            "latency_ms": {k: round(v, 2) for k, v in self.latency_ms.items()},
            "errors": self.errors,
            "dropped": self.dropped,
            "objects": [{k: v for k, v in o.items() if k != "trail"} for o in self.objects],
        }
