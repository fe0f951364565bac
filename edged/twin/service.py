"""TwinService: the KubeEdge device twin as a source of runtime settings.

On start (and on every MQTT reconnect) it asks EdgeCore for the twin (``twin/get``)
and reports the actual value of every twin property on ``twin/update``. Desired
values arrive on ``twin/get/result`` (all of them) and ``twin/update/delta`` (those
that differ from the actual values). Each is converted with the property table,
validated on its own by ``RuntimeConfig`` and the valid ones are applied together
(``RuntimeConfig`` rolls back if a setter fails and persists what it applied).

Reporting: an applied value is reported as ``actual`` exactly as the cloud wrote it
(``"2.50"`` stays ``"2.50"``, or EdgeCore would see expected != actual and send the
delta again). KubeEdge's update has no per-property error field, so a rejected value
is answered by reporting the previous actual value once (the Device's status then
shows reported != desired) and by a ``TwinOutcome`` with the reason, which the
EventBus publishes on ``{prefix}/events/twin/{device}`` for the cloud; it is also
logged. EdgeCore sends the delta again after every update while the desired value
differs; a value already rejected is then skipped without a new report, so the
exchange ends. Changes made by another path (``PUT /api/v1/config``) are reported
too; the twin's desired value, when set, wins on the next delta.

Handlers run on the MQTT network thread; applying a setting is quick (setters only
swap values). Malformed messages are counted and dropped (``ProtocolError``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edged.settings import RuntimeConfig, RuntimeSettings
from edged.twin.desired import Rejection, apply_all, check, read_only_values
from edged.twin.kubeedge import (
    ErrorResult,
    build_get,
    build_update,
    expected_values,
    parse_delta,
    parse_twin_result,
    twin_topics,
)
from edged.twin.properties import PropertyTable
from edged.twin.seen import SeenDeltas, delta_key
from edgefed.clock import now_ms
from edgefed.config import Seconds
from edgefed.counters import Counters
from edgefed.errors import ConfigError, OffloadError, ProtocolError
from edgefed.mqtt import MqttClient

log = logging.getLogger(__name__)

Source = Literal["delta", "get_result", "register_device", "update_device"]
"""The message handled: MQTT twin (delta, get_result) or DMI call (register/update_device)."""


class TwinConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Take runtime settings from the device twin")
    report_interval_s: Seconds = Field(
        default=10.0, description="Seconds between reports of the ReadOnly readings"
    )
    properties_file: Path | None = Field(
        default=None,
        description="Twin property table (None: edged/twin/properties.yaml, packaged with edged)",
    )


class TwinOutcome(BaseModel):
    """What happened to one twin message's desired values (published as an event)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["twin"] = Field(default="twin", description="Event discriminator")
    device_id: str = Field(description="Device whose twin it is")
    timestamp: int = Field(description="When edged handled it (ms since epoch)")
    source: Source = Field(description="The KubeEdge message or DMI call handled")
    event_id: str = Field(description="event_id of that message (DMI calls: a fresh uuid)")
    applied: dict[str, str] = Field(description="Properties applied, with their value")
    rejected: dict[str, Rejection] = Field(description="Properties refused, with the reason")


@dataclass
class TwinCounters(Counters):
    deltas: int = 0
    get_results: int = 0
    applied: int = 0
    rejected: int = 0
    repeats: int = 0
    malformed: int = 0
    edgecore_errors: int = 0
    reports: int = 0
    replayed: int = 0  # a delta applied before (retained, delivered again)


class TwinService:
    """Applies desired twin values through ``RuntimeConfig`` and reports actual values."""

    def __init__(
        self,
        client: MqttClient,
        device_id: str,
        runtime: RuntimeConfig,
        table: PropertyTable,
        on_outcome: Callable[[TwinOutcome], None] | None = None,
        readings: Callable[[], Mapping[str, Any]] | None = None,
        report_interval_s: float = 10.0,
        seen_path: Path | None = None,
    ) -> None:
        writable = set(table.writable())
        if writable != set(RuntimeSettings.model_fields):
            raise ConfigError(
                "twin property table and runtime settings differ: "
                f"only in the table {sorted(writable - set(RuntimeSettings.model_fields))}, "
                f"only in the code {sorted(set(RuntimeSettings.model_fields) - writable)}"
            )
        self.topics = twin_topics(device_id)
        self.counters = TwinCounters()
        self._client = client
        self._device_id = device_id
        self._runtime = runtime
        self._table = table
        self._on_outcome = on_outcome
        self._readings = readings
        self._interval = report_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # RuntimeConfig calls _on_settings inside apply
        self._reported: dict[str, tuple[Any, str]] = {}  # name -> (value, wire string)
        self._rejected: dict[str, Rejection] = {}
        self._seen = SeenDeltas(seen_path)  # deltas already applied (retained ones come again)
        self._running = False
        self._wired = False
        self.last_error = ""

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._running = True
            if not self._wired:
                self._wired = True
                self._client.subscribe(self.topics.delta, self._on_delta)
                self._client.subscribe(self.topics.get_result, self._on_get_result)
                self._client.subscribe(self.topics.update_result, self._on_update_result)
                self._client.add_connection_listener(self._on_connection)
                self._runtime.on_change(self._on_settings)
        if self._client.connected:
            self._sync()
        if self._readings is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="twin-readings", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._running = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "device_id": self._device_id,
                "reported": {name: wire for name, (_, wire) in self._reported.items()},
                "rejections": {k: v.model_dump() for k, v in self._rejected.items()},
                "last_error": self.last_error,
                "counters": self.counters.as_dict(),
            }

    # -- MQTT callbacks -------------------------------------------------------------------
    def _on_connection(self, up: bool) -> None:
        if up:
            self._sync()

    def _sync(self) -> None:
        """Ask for the twin and report every actual value (start and each reconnect)."""
        with self._lock:
            if not self._running:
                return
            self._rejected.clear()  # re-announce rejections once per connection
            self._publish(self.topics.get, build_get(event_id=str(uuid.uuid4()), now_ms=now_ms()))
            current = self._runtime.current()
            values = {n: getattr(current, n) for n in self._table.writable()}
            self._report(self._formatted(values | self._read()))

    def _on_delta(self, topic: str, payload: bytes) -> None:
        """A delta is handled once: a retained one that comes again (every restart) is
        counted in ``replayed`` and skipped (``edged.twin.seen``)."""
        if not self._running:
            return
        with self._malformed_counted():
            message = parse_delta(payload)
        key = delta_key(message.event_id, payload)
        with self._lock:
            if key in self._seen:
                self.counters.replayed += 1
                return
            self.counters.deltas += 1
            self._handle(message.delta, "delta", message.event_id)
            self._seen.add(key)

    def _on_get_result(self, topic: str, payload: bytes) -> None:
        if not self._running:
            return
        with self._malformed_counted():
            result = parse_twin_result(payload)
        with self._lock:
            if isinstance(result, ErrorResult):
                self._edgecore_error("twin/get", result)
                return
            self.counters.get_results += 1
            self._handle(expected_values(result.twin), "get_result", result.event_id)

    def _on_update_result(self, topic: str, payload: bytes) -> None:
        if not self._running:
            return
        with self._malformed_counted():
            result = parse_twin_result(payload)
        if isinstance(result, ErrorResult):
            with self._lock:
                self._edgecore_error("twin/update", result)

    def _on_settings(self, settings: RuntimeSettings) -> None:
        """RuntimeConfig listener: report values changed by any path."""
        with self._lock:
            if not self._running:
                return
            changed = {
                name: getattr(settings, name)
                for name in self._table.writable()
                if name not in self._reported or self._reported[name][0] != getattr(settings, name)
            }
            self._report(self._formatted(changed))

    # -- ReadOnly readings -----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                if not self._running:
                    continue
                fresh = self._formatted(self._read())
                self._report({n: e for n, e in fresh.items() if self._reported.get(n) != e})

    def _read(self) -> dict[str, Any]:
        return read_only_values(self._readings, self._table, "twin")

    # -- the work -------------------------------------------------------------------------
    @contextmanager
    def _malformed_counted(self) -> Iterator[None]:
        try:
            yield
        except ProtocolError:
            with self._lock:
                self.counters.malformed += 1
            raise  # the MQTT adapter counts and logs it as dropped

    def _handle(self, desired: Mapping[str, str], source: Source, event_id: str) -> None:
        current = self._runtime.current()
        changes: dict[str, tuple[Any, str]] = {}
        rejected: dict[str, Rejection] = {}
        for name, wire in desired.items():
            previous = self._rejected.get(name)
            if previous is not None and previous.value == wire:
                self.counters.repeats += 1
                continue
            try:
                value = check(self._runtime, self._table, name, wire)
            except ConfigError as exc:
                rejected[name] = Rejection(value=wire, reason=str(exc))
                continue
            if value == getattr(current, name) and self._reported.get(name) == (value, wire):
                self._rejected.pop(name, None)
                continue
            changes[name] = (value, wire)
        if changes:
            rejected.update(self._apply(changes))
        applied = {n: wire for n, (_, wire) in changes.items() if n not in rejected}
        for name in applied:
            self._rejected.pop(name, None)
        self._rejected.update(rejected)
        self.counters.applied += len(applied)
        self.counters.rejected += len(rejected)
        for name, rejection in rejected.items():
            log.warning("twin: %s=%r rejected: %s", name, rejection.value, rejection.reason)
        after = self._runtime.current()
        again = {n: getattr(after, n) for n in rejected if n in self._table.writable()}
        report = {n: changes[n] for n in applied} | self._formatted(again)
        self._report(report)
        if applied or rejected:
            self._emit(source, event_id, applied, rejected)

    def _apply(self, changes: dict[str, tuple[Any, str]]) -> dict[str, Rejection]:
        """Apply all or nothing; the rejections if RuntimeConfig refused or rolled back."""
        before = {n: self._reported.get(n) for n in changes}
        self._reported.update(changes)  # so that _on_settings does not report them twice
        rejected = apply_all(self._runtime, changes)
        if rejected:
            for name, old in before.items():
                if old is None:
                    self._reported.pop(name, None)
                else:
                    self._reported[name] = old
        return rejected

    def _formatted(self, values: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
        out: dict[str, tuple[Any, str]] = {}
        for name, value in values.items():
            wire = self._table.format(name, value)
            if wire is not None:
                out[name] = (value, wire)
        return out

    def _report(self, entries: Mapping[str, tuple[Any, str]]) -> None:
        """Publish actual values ``{name: (value, wire string)}`` on twin/update."""
        if not entries:
            return
        actual = {n: (self._table.wire_type(n), wire) for n, (_, wire) in entries.items()}
        try:
            payload = build_update(actual, event_id=str(uuid.uuid4()), now_ms=now_ms())
        except ProtocolError as exc:
            self.last_error = f"cannot report {sorted(actual)}: {exc}"
            log.error("twin: %s", self.last_error)
            return
        self._reported.update(entries)
        if self._publish(self.topics.update, payload):
            self.counters.reports += 1

    def _publish(self, topic: str, payload: bytes) -> bool:
        if not self._client.connected:
            return False  # _sync reports everything again on reconnect
        try:
            self._client.publish(topic, payload)
        except OffloadError as exc:
            self.last_error = str(exc)
            log.warning("twin: cannot publish on %s: %s", topic, exc)
            return False
        return True

    def _emit(
        self, source: Source, event_id: str, applied: dict[str, str], rejected: dict[str, Rejection]
    ) -> None:
        if self._on_outcome is None:
            return
        outcome = TwinOutcome(
            device_id=self._device_id,
            timestamp=now_ms(),
            source=source,
            event_id=event_id,
            applied=applied,
            rejected=rejected,
        )
        try:
            self._on_outcome(outcome)
        except Exception:
            log.exception("twin: outcome listener failed")

    def _edgecore_error(self, request: str, error: ErrorResult) -> None:
        self.counters.edgecore_errors += 1
        self.last_error = f"EdgeCore refused {request}: {error.describe()}"
        log.warning("twin: %s", self.last_error)
