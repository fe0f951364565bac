"""The outbox's records: its config, a new job, a stored job and operation reports."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgefed import paths
from edgefed.config import Seconds
from edgefed.lifecycle import Status
from edgefed.wire import LocalSummary, OffloadRequest

RecordOutcome = Literal["recorded", "duplicate", "late", "unknown"]
COLUMNS = (
    "id, device, model, requester, payload_kind, payload_bytes, priority, deadline, created, "
    "status, started, ended, updated, iteration, next_attempt, last_error, reason, metadata, "
    "local_summary, local_result, result"
)


OUTBOX_FILE = "outbox.sqlite"  # under edged's state dir unless offload.outbox.path says


class OutboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(
        default_factory=lambda: paths.state_dir("edged") / OUTBOX_FILE,
        description="SQLite database file (default: under edgefed.paths' state root)",
    )
    max_jobs: int = Field(
        default=10_000, ge=1, description="Open jobs kept; past it the outbox sheds"
    )
    max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="Payload bytes of open jobs; past it it sheds"
    )
    keep_finished: int = Field(
        default=10_000, ge=0, description="Finished jobs kept for the status API"
    )
    max_iterations: int = Field(default=5, ge=1, description="Attempts before a job fails")
    retry_base_s: Seconds = Field(default=1.0, description="First retry delay; doubles each retry")
    retry_cap_s: Seconds = Field(default=60.0, description="Longest retry delay")
    result_timeout_s: Seconds = Field(
        default=10.0, description="Wait for a server answer after sending before a retry"
    )
    synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL", description="SQLite sync: NORMAL survives process death, FULL power loss"
    )


@dataclass(frozen=True)
class NewJob:
    request: OffloadRequest
    body: bytes
    requester: str = ""
    reason: str = ""
    local_result: Any = None


@dataclass(frozen=True)
class JobRecord:
    """One row without its payload."""

    id: str
    device: str
    model: str
    requester: str
    payload_kind: Literal["jpeg", "tensor"]
    payload_bytes: int
    priority: int
    deadline: int
    created: int
    status: Status
    started: int | None
    ended: int | None
    updated: int
    iteration: int
    next_attempt: int
    last_error: str | None
    reason: str
    metadata: dict[str, Any]
    local_summary: LocalSummary | None
    local_result: Any
    result: dict[str, Any] | None

    def request(self) -> OffloadRequest:
        """The wire header for the next attempt of this job."""
        return OffloadRequest(
            job_id=self.id,
            device_id=self.device,
            model=self.model,
            priority=self.priority,
            deadline=self.deadline,
            created=self.created,
            payload_kind=self.payload_kind,
            attempt=self.iteration,
            metadata=self.metadata,
            local=self.local_summary,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view for the status API."""
        out = dict(self.__dict__)
        out["status"] = str(self.status)
        out["local_summary"] = self.local_summary.model_dump() if self.local_summary else None
        return out


@dataclass(frozen=True)
class Enqueued:
    accepted: bool
    shed: list[str]


@dataclass(frozen=True)
class SweepReport:
    expired: list[str]
    retried: list[str]
    failed: list[str]


def to_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def to_record(row: sqlite3.Row, status: Status | None = None) -> JobRecord:
    data = dict(row)
    data.pop("payload", None)
    data["status"] = status or Status(data["status"])
    data["metadata"] = json.loads(data["metadata"])
    summary = data["local_summary"]
    data["local_summary"] = LocalSummary.model_validate_json(summary) if summary else None
    for key in ("local_result", "result"):
        data[key] = json.loads(data[key]) if data[key] is not None else None
    return JobRecord(**data)


def sql_in(statuses: Iterable[Status]) -> str:
    """``('A', 'B')``: statuses inlined as SQL literals (our own enum values, never input),
    sorted, in the exact text the partial indexes of the migrations use."""
    return "(" + ", ".join(f"'{s}'" for s in sorted(str(s) for s in statuses)) + ")"
