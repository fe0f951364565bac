"""serverd's federation service: every federated model's ``Coordinator`` on one MQTT
connection, the edges' sample offers, and the round timer.

It subscribes once to the federation's update, adoption and sample topics and hands
each decoded message to its model's coordinator (a chunk and a report name their
model; a query goes to the coordinator holding that update, else to any, which answers
``unknown``). Edges advertise how many samples they could train on (retained
``SampleOffer``); a round opens over the devices whose offer is fresher than
``offer_ttl_ms`` and allows training. An offer's age is told on serverd's clock: one that
follows an offer of the same edged run (its ``run`` id, a higher ``seq``) was sent when it
arrived, whatever the edge's clock says (an edge box without NTP may be hours off). The
first one heard of a run may be a copy the broker kept (retained) or a bridge sends again
after a reconnect, of any age: it is dated by its ``sent_ms`` (never later than its
arrival; the age is told on the wall clock edges stamp on, then kept on serverd's
steady clock), as is every offer of an edged that sends no run; a copy of an offer
already heard (a run's number not above the highest heard of it) changes nothing.
serverd keeps at most ``max_devices`` offers, each with the counts of the models it
federates only (``serverd.federation.offers``). ``tick`` closes due rounds and, with
``interval_ms`` set, opens the next round of an idle model when it is due; a model whose
tick fails is logged as one outage and counted, and the other models' ticks go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefed.clock import Clock, SteadyClock, now_ms
from edgefed.config import ImagesConfig
from edgefed.errors import ConfigError, FederationError, ImageError, ProtocolError
from edgefed.federation_wire import (
    AdoptionReport,
    FederationTopics,
    Received,
    RoundOpen,
    SampleOffer,
    UpdateQuery,
    decode,
)
from edgefed.images.signing import load_private_key, load_public_key
from edgefed.mqtt import MqttClient
from edgefed.outage import Outage, Repeats
from serverd.federation.aggregate import Params
from serverd.federation.config import FederationConfig
from serverd.federation.coordinator import Coordinator
from serverd.federation.images import VersionImager
from serverd.federation.offers import MAX_DEVICES, OfferBook, OfferCounters
from serverd.federation.rounds import Phase
from serverd.federation.versions import VersionFiles

log = logging.getLogger("serverd.federation")


@dataclass
class ServiceCounters(OfferCounters):
    bad_messages: int = 0
    unknown_model: int = 0
    rounds_not_opened: int = 0
    tick_failures: int = 0  # a model's tick that raised (logged as that model's outage)


class FederationService:
    """The federations of serverd, by model name."""

    def __init__(
        self,
        mqtt: MqttClient,
        topics: FederationTopics,
        coordinators: Sequence[Coordinator],
        offer_ttl_ms: int = 120_000,
        interval_ms: int | None = None,
        clock: Clock = now_ms,
        versions: VersionFiles | None = None,
        wall: Clock = now_ms,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self.mqtt, self.topics = mqtt, topics
        self.coordinators = {c.federation.model: c for c in coordinators}
        self.offer_ttl_ms, self.interval_ms, self.clock = offer_ttl_ms, interval_ms, clock
        self.wall = wall  # the clock edges stamp offers on (serverd's, as its replies tell)
        self.versions = versions
        self.counters = ServiceCounters()
        self._offers = OfferBook(self.coordinators, max_devices, self.counters)
        self._repeats = Repeats(log)  # a device may send bad messages by the thousand
        self._last_open: dict[str, int] = {}
        self._lock = threading.Lock()
        # a closed round's version not yet on disk (a full disk): tried again every tick
        self._unsaved: dict[str, tuple[int, Params]] = {}
        self._saving = Outage(log, "federation: saving a new global version")
        self._faults = {m: Outage(log, f"federation {m}: a tick") for m in self.coordinators}

    def start(self) -> None:
        """Subscribe (before the connection comes up); every current version is published
        on each (re)connect, so the retained one is serverd's newest after a broker
        restart too."""
        self.mqtt.subscribe(self.topics.filter("update"), self._on_update)
        self.mqtt.subscribe(self.topics.filter("adoption"), self._on_adoption)
        self.mqtt.subscribe(self.topics.filter("samples"), self._on_offer)
        self.mqtt.add_connection_listener(self._on_connection)
        if self.mqtt.connected:
            self._on_connection(True)

    def _on_connection(self, connected: bool) -> None:
        if connected:
            for coordinator in self.coordinators.values():
                coordinator.announce()

    def coordinator(self, model: str) -> Coordinator:
        try:
            return self.coordinators[model]
        except KeyError:
            raise FederationError(f"model {model!r} is not federated here") from None

    def available(self, model: str) -> dict[str, int]:
        """Devices with a fresh offer that allows training: id -> samples of ``model``."""
        oldest = self.clock() - self.offer_ttl_ms
        with self._lock:
            return {
                device: o.samples[model]
                for device, o in self._offers.items()
                if o.training_allowed and o.seen_ms >= oldest and model in o.samples
            }

    def start_round(self, model: str) -> RoundOpen:
        """Open a round of ``model`` over the devices that offer samples now;
        ``FederationError`` says why it cannot open."""
        coordinator = self.coordinator(model)
        opened = coordinator.open_round(self.available(model))
        self._last_open[model] = self.clock()
        return opened

    def tick(self) -> None:
        """Close due rounds; open the next one of an idle model when ``interval_ms`` says;
        forget devices gone for ``offers.FORGET_MS`` (their retained offers stay on the broker).
        Each model's part is contained: one failing never stops another's."""
        now = self.clock()
        with self._lock:
            self._offers.forget(now)
            known = set(self._offers)
        for model, coordinator in self.coordinators.items():
            fault = self._faults[model]
            try:
                coordinator.forget_all_but(known)
                self._tick(model, coordinator, now)
            except Exception as exc:  # this model's fault: one outage in the log
                self.counters.tick_failures += 1
                fault.failed(exc)
            else:
                fault.ok()

    def _tick(self, model: str, coordinator: Coordinator, now: int) -> None:
        outcome = coordinator.poll()
        if outcome and outcome.version and outcome.params and self.versions is not None:
            self._unsaved[model] = (outcome.version, outcome.params)
        self._save(model)
        due = self._last_open.get(model, 0) + (self.interval_ms or 0)
        idle = coordinator.federation.phase is Phase.IDLE
        if self.interval_ms is not None and idle and now >= due:
            self._last_open[model] = now  # whatever happens, the next try is an interval on
            try:
                self.start_round(model)
            except FederationError as exc:
                self.counters.rounds_not_opened += 1
                log.info("federation %s: no round: %s", model, exc)

    def _save(self, model: str) -> None:
        """Put ``model``'s newest version on disk, if it is not yet: a restart goes on from
        the saved one, and edges refuse a version not newer than the one they serve."""
        pending = self._unsaved.get(model)
        if pending is None or self.versions is None:
            return
        with self._saving.contained(OSError):
            self.versions.save(model, *pending)
            del self._unsaved[model]

    def status(self) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            offers = {d: o.status(now) for d, o in self._offers.items()}
        return {
            "enabled": True,
            "models": {m: c.status() for m, c in self.coordinators.items()},
            "edges": offers,
            "counters": self.counters.as_dict(),
            "unsaved_versions": {m: v for m, (v, _) in self._unsaved.items()},
        }

    def history(self, model: str) -> list[dict[str, Any]]:
        return self.coordinator(model).history()

    def _decode(self, topic: str, payload: bytes) -> object | None:
        try:
            return decode(payload)
        except ProtocolError as exc:
            self.counters.bad_messages += 1
            self._repeats("bad", f"federation: bad message on {topic}: {exc}")
            return None

    def _on_update(self, topic: str, payload: bytes) -> None:
        device = self.topics.device_of("update", topic)
        message = self._decode(topic, payload) if device is not None else None
        if device is None or message is None:
            return
        if isinstance(message, Received):
            target = self.coordinators.get(message.chunk.model)
            if target is None:
                self.counters.unknown_model += 1
                model = message.chunk.model
                self._repeats("unknown", f"federation: {device} sent an update of {model}")
                return
            target.on_update(device, message, len(payload))
        elif isinstance(message, UpdateQuery) and self.coordinators:
            holders = [c for c in self.coordinators.values() if c.holds(device, message.update_id)]
            target = holders[0] if holders else next(iter(self.coordinators.values()))
            target.on_update(device, message, len(payload))

    def _on_adoption(self, topic: str, payload: bytes) -> None:
        device = self.topics.device_of("adoption", topic)
        report = self._decode(topic, payload) if device is not None else None
        if device is None or not isinstance(report, AdoptionReport):
            return
        target = self.coordinators.get(report.model)
        if target is not None:
            target.on_adoption(device, report)

    def _on_offer(self, topic: str, payload: bytes) -> None:
        device = self.topics.device_of("samples", topic)
        offer = self._decode(topic, payload) if device is not None and payload else None
        if device is None:
            return
        now = self.clock()
        with self._lock:
            if isinstance(offer, SampleOffer):
                self._offers.hear(device, offer, now, self.wall())
            elif not payload:  # a retained offer cleared: the device left
                self._offers.drop(device)


def build(
    config: FederationConfig, mqtt: MqttClient, prefix: str, state_dir: Path, images: ImagesConfig
) -> FederationService | None:
    """serverd's federation service from its config section (None when disabled), each
    model from its version saved under ``state_dir`` and its base image under ``images``;
    a missing or unreadable signing key or base image is a ``ConfigError``."""
    if not config.enabled or config.signing_key is None:
        return None
    try:
        key = load_private_key(config.signing_key)
        trusted = [load_public_key(p) for p in images.trusted_keys]
    except ImageError as exc:
        raise ConfigError(f"federation: {exc}") from exc
    topics = FederationTopics(prefix)
    versions = VersionFiles(state_dir / "federation")
    clock = SteadyClock()  # rounds, intervals and offers' ages: not moved by NTP's steps
    models = {m.name: m for m in config.models}
    coordinators = []
    for fed in config.federations(versions):
        m = models[fed.model]
        imager = VersionImager(m.name, m.base(images.dir, trusted), m.classes, key)
        coordinators.append(
            Coordinator(
                mqtt,
                topics,
                fed,
                key,
                imager,
                m.train or config.train,
                config.max_chunk_bytes,
                clock=clock,
            )
        )
    interval = None if config.interval_s is None else int(config.interval_s * 1000)
    ttl = int(config.offer_ttl_s * 1000)
    return FederationService(
        mqtt,
        topics,
        coordinators,
        ttl,
        interval,
        clock=clock,
        versions=versions,
        wall=now_ms,
        max_devices=config.max_devices,
    )


async def run_ticks(service: FederationService, stop: asyncio.Event, period_s: float = 0.5) -> None:
    """``service.tick`` every ``period_s`` on the loop until ``stop``; a failing tick is
    logged and the next one runs."""
    while not stop.is_set():
        try:
            service.tick()
        except Exception:  # contained: one bad round never stops the federation
            log.exception("federation tick failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)
