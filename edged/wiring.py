"""Builders for edged's optional services, each from its config section (None when off).

``EdgedApp`` calls these in order; each returns an object with ``start()``/``stop()``
or None, so the app's service list only holds what is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.config import EdgedConfig
from edged.eventbus import EventBus
from edged.federation import service as federation_service
from edged.federation.service import EdgeFederation
from edged.netloop import NetLoop
from edged.offload.client import OffloadClient, OutcomeListener
from edged.offload.dispatch import OffloadDispatcher, SubmitListener
from edged.offload.outbox import Outbox
from edged.offload.records import OUTBOX_FILE
from edged.offload.serverclock import ServerClock
from edged.pipeline import Pipeline
from edged.settings import RuntimeConfig, RuntimeSettings
from edged.twin.dmi import DmiMapper
from edged.twin.properties import load_property_table
from edged.twin.service import TwinService
from edgefed import paths
from edgefed.clock import Clock, now_ms
from edgefed.errors import ConfigError, OffloadError, StartError
from edgefed.mqtt import MqttClient, presence
from edgefed.wire import Availability, Topics

log = logging.getLogger(__name__)

RUNTIME_STATE = "runtime.json"
TWIN_DELTAS = "twin-deltas.json"  # the deltas applied, so a retained one is applied once


def network(config: EdgedConfig) -> NetLoop | None:
    """The node broker connection, with this device's retained presence and Last Will,
    driven by edged's network loop."""
    if config.mqtt is None:
        return None
    topics = Topics(config.offload.client.prefix)
    online = Availability(
        role="device",
        id=config.device_id.replace("/", "."),
        state="online",
        since=now_ms(),
        models=sorted(m.name for m in config.models),
    )
    mqtt = MqttClient(config.mqtt, presence(topics.device_availability(config.device_id), online))
    return NetLoop(mqtt)


@dataclass
class EdgeOffload:
    """The outbox, the client that drains it over MQTT, and the pipeline's dispatcher."""

    outbox: Outbox
    client: OffloadClient
    dispatcher: OffloadDispatcher

    def start(self) -> None:
        self.client.start()

    def stop(self) -> None:
        self.client.stop()

    def status(self) -> dict[str, Any]:
        return {**self.client.status(), **self.dispatcher.status()}


def server_clock(config: EdgedConfig) -> ServerClock:
    """serverd's clock as the offload replies teach it (kept beside the outbox): what the
    device's jobs and federation offers are timed on (docs/offload.md, "Whose clock")."""
    path = config.offload.outbox.path
    return ServerClock(state=path.with_name(f"{path.name}.serverclock"))


def offload(
    config: EdgedConfig,
    net: NetLoop | None,
    queue_depth: Callable[[str], int],
    on_outcome: OutcomeListener,
    on_submit: SubmitListener | None = None,
    clock: ServerClock | None = None,
) -> EdgeOffload | None:
    """The offload path; each closed job's outcome goes to ``on_outcome``, each submitted
    frame to ``on_submit``; its jobs timed on ``clock`` (default: a ``server_clock``)."""
    if not config.offload.enabled or net is None:
        return None
    _left_behind(config.offload.outbox.path)
    clock = clock or server_clock(config)
    outbox = Outbox(config.offload.outbox, clock)
    client = OffloadClient(config.device_id, net, outbox, config.offload.client, on_outcome, clock)
    dispatcher = OffloadDispatcher(config.offload, client, queue_depth, on_submit)
    return EdgeOffload(outbox, client, dispatcher)


def _left_behind(path: Path) -> None:
    """Say so when the outbox moved (``state_dir`` set, so it is now under it) and the
    one at the old default place still holds jobs that will not be sent from there.

    An outbox path edged cannot look at (a ``state_dir`` it may not search, a name too
    long) stops the start as the outbox itself would (exit 5, one line naming the path);
    an old place it cannot look at (another user's state) has nothing to say."""
    old = paths.state_dir("edged") / OUTBOX_FILE
    if path == old:
        return
    try:
        here = path.exists()
    except OSError as exc:
        raise OffloadError(f"outbox {path}: {exc.strerror or exc}") from exc
    try:
        there = old.exists()
    except OSError:
        return
    if here or not there:
        return
    log.warning(
        "offload: the outbox is now %s (under state_dir); the one at %s is left as it was: "
        "to send its jobs, stop edged and move it (with its -wal and -shm files) there",
        path,
        old,
    )


def federation(
    config: EdgedConfig,
    mqtt: MqttClient | None,
    on_adopted: Callable[[str, Path], None] | None = None,
    clock: Clock = now_ms,
) -> EdgeFederation | None:
    """The device's federated models (docs/federated.md), if enabled; ``on_adopted``
    serves a newly adopted version; offers are stamped on ``clock``."""
    if mqtt is None or not config.federation.enabled:
        return None
    return federation_service.build(
        config.federation,
        mqtt,
        config.device_id,
        config.offload.client.prefix,
        config.state_dir,
        config.images.trusted_keys,
        config.images.dir,
        on_adopted,
        clock,
    )


def eventbus(
    config: EdgedConfig, mqtt: MqttClient | None, stats: Callable[[], Mapping[str, Any]]
) -> EventBus | None:
    if mqtt is None or not config.eventbus.enabled:
        return None
    return EventBus(config.eventbus, mqtt, config.device_id, stats=stats)


def runtime_config(
    config: EdgedConfig,
    pipeline: Pipeline,
    offload_service: EdgeOffload | None,
    fed: EdgeFederation | None = None,
) -> RuntimeConfig:
    """Runtime settings from the config file, then the values a twin or PUT left behind."""
    policy = {"value": config.offload.policy.policy}

    def set_policy(name: Any) -> None:
        if offload_service is not None:
            offload_service.dispatcher.set_policy(name)
        policy["value"] = name

    def set_target_fps(value: Any) -> None:
        pipeline.target_fps = value

    initial = RuntimeSettings(
        motion_threshold=config.motion.threshold,
        motion_min_pixels=config.motion.min_pixels,
        target_fps=config.pipeline.target_fps,
        enabled_models=sorted(pipeline.enabled),
        offload_policy=policy["value"],
        log_level=config.log_level,
        federated_training=config.federation.training_allowed,
    )
    state_path = config.state_dir / RUNTIME_STATE
    runtime = RuntimeConfig(
        initial,
        {
            "motion_threshold": lambda v: pipeline.set_motion(threshold=v),
            "motion_min_pixels": lambda v: pipeline.set_motion(min_pixels=v),
            "target_fps": set_target_fps,
            "enabled_models": pipeline.set_enabled,
            "offload_policy": set_policy,
            "log_level": lambda v: logging.getLogger().setLevel(v),
            "federated_training": fed.set_allowed if fed is not None else lambda v: None,
        },
        known_models=lambda: pipeline.workers,
        state_path=state_path,
    )
    try:
        persisted = RuntimeConfig.load_persisted(state_path)
    except OSError as exc:  # a state_dir edged may not search: stop as the outbox would
        raise StartError(f"state_dir {config.state_dir}: {exc.strerror or exc}") from exc
    if persisted:
        try:
            runtime.apply(persisted)
            log.info("restored runtime settings from %s", state_path)
        except ConfigError as exc:
            log.warning("ignoring persisted runtime settings in %s: %s", state_path, exc)
    return runtime


def twin(
    config: EdgedConfig,
    mqtt: MqttClient | None,
    runtime: RuntimeConfig,
    bus: EventBus | None,
    readings: Callable[[], Mapping[str, Any]],
) -> TwinService | None:
    if mqtt is None or not config.twin.enabled:
        return None
    return TwinService(
        mqtt,
        config.device_id,
        runtime,
        load_property_table(config.twin.properties_file),
        on_outcome=bus.publish_twin if bus is not None else None,
        readings=readings,
        report_interval_s=config.twin.report_interval_s,
        seen_path=config.state_dir / TWIN_DELTAS,
    )


def dmi(
    config: EdgedConfig,
    runtime: RuntimeConfig,
    bus: EventBus | None,
    readings: Callable[[], Mapping[str, Any]],
) -> DmiMapper | None:
    """The DMI mapper (KubeEdge 1.15+), if enabled; it needs no MQTT connection."""
    if not config.dmi.enabled:
        return None
    return DmiMapper(
        config.dmi,
        config.device_id,
        runtime,
        load_property_table(config.twin.properties_file),
        on_outcome=bus.publish_twin if bus is not None else None,
        readings=readings,
    )
