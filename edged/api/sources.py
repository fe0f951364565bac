"""What the API reads from the running daemon, passed in by whoever composes it.

The pipeline, event log and preview sink are always there; the runtime config, the
offload outbox and the broker links are optional so the API runs before (or without)
the offload path. Nothing here is reached through a module global.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edged.events import ObjectEvents
from edged.pipeline import Pipeline
from edged.results import EventLog
from edged.settings import RuntimeConfig
from edgefed.lifecycle import Status

from .preview import PreviewSink


class Link(Protocol):
    """A connection whose state the API shows and /readyz checks (e.g. ``MqttClient``)."""

    @property
    def connected(self) -> bool: ...

    cert_expires: float | None  # epoch s when its client certificate runs out; None: none


class JobView(Protocol):
    """One outbox row (``edged.offload.outbox.JobRecord``)."""

    def as_dict(self) -> dict[str, Any]: ...


class OffloadResultsView(Protocol):
    """Closed offload jobs (``edged.offload.outcomes.OffloadResults``)."""

    def status(self) -> dict[str, Any]: ...


class OutboxView(Protocol):
    """The read side of the offload outbox (``edged.offload.outbox.Outbox``)."""

    def counts(self) -> dict[str, int]: ...

    @property
    def clock_offset_ms(self) -> int: ...

    def page(
        self,
        statuses: Iterable[Status] | None = ...,
        limit: int = ...,
        offset: int = ...,
        oldest_first: bool = ...,
    ) -> Iterable[JobView]: ...


class FederationView(Protocol):
    """The device's federation (``edged.federation.service.EdgeFederation``)."""

    def status(self) -> dict[str, Any]: ...

    def models(self) -> list[str]: ...

    def samples(self, model: str) -> int: ...

    def add_label(self, model: str, features: Any, label: str | int) -> int: ...


class StatusView(Protocol):
    """A service that says how it is (the MQTT twin, the DMI mapper)."""

    def status(self) -> dict[str, Any]: ...


def moving() -> list[str]:
    """The stall check of a daemon that does not watch its pipeline: never stalled."""
    return []


@dataclass(frozen=True)
class ApiSources:
    """Everything the API shows or changes."""

    pipeline: Pipeline
    events: EventLog
    preview: PreviewSink
    device_id: str
    model_failures: Mapping[str, str] = field(default_factory=dict)
    runtime: RuntimeConfig | None = None
    outbox: OutboxView | None = None
    offload_results: OffloadResultsView | None = None
    links: Mapping[str, Link] = field(default_factory=dict)
    objects: ObjectEvents | None = None
    federation: FederationView | None = None
    twins: Mapping[str, StatusView] = field(default_factory=dict)  # "mqtt", "dmi"
    # the pipeline threads stuck now (``EdgedApp.stalled``: what withholds systemd's
    # watchdog), so /healthz fails for a pod's liveness probe on the same condition
    stalled: Callable[[], list[str]] = moving
