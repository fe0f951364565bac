"""edged's federation service: one ``Participant`` per federated model, the sample store
they share, the operator's labels, and the device's sample offer to serverd.

The offer (retained ``SampleOffer``: per model the samples it could train on, and
whether the device twin allows training) is published at start, on every reconnect,
every ``offer_interval_s`` and soon after the samples or the switch change; serverd
counts an offer only for ``federation.offer_ttl_s`` after it was sent, so a device that
stopped is no longer selected. Each carries this run's random id and its number in the
run, by which serverd tells a new offer (sent when it arrives) from a copy a broker or a
bridge delivers again.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edged.federation.adoption import HeadSlot
from edged.federation.config import EdgeFederationConfig
from edged.federation.features import FeatureExtractor
from edged.federation.hardexamples import HardExamples
from edged.federation.participant import Participant
from edged.federation.samples import SampleStore, SampleStoreError, Source
from edged.federation.versions import VersionImages
from edged.offload.core import JobOutcome
from edgefed.clock import Clock, now_ms
from edgefed.errors import ConfigError, FederationError, ImageError
from edgefed.federation_wire import FederationTopics, SampleOffer, encode
from edgefed.images import image_dir
from edgefed.mqtt import MqttClient
from edgefed.outage import Outage, Repeats

log = logging.getLogger("edged.federation")


class EdgeFederation:
    """The federated models of this device; ``classes`` maps each to its class names."""

    def __init__(
        self,
        mqtt: MqttClient,
        topics: FederationTopics,
        device_id: str,
        store: SampleStore,
        participants: Sequence[Participant],
        classes: Mapping[str, Sequence[str]],
        allowed: threading.Event,
        offer_interval_s: float = 30.0,
        clock: Clock = now_ms,
        hard_examples: Mapping[str, tuple[HardExamples, FeatureExtractor]] | None = None,
    ) -> None:
        self.mqtt, self.topics, self.device_id, self.store = mqtt, topics, device_id, store
        self.participants = {p.model: p for p in participants}
        self.classes = {m: list(c) for m, c in classes.items()}
        self._allowed = allowed
        self.offer_interval_s = offer_interval_s
        self.clock = clock
        self.offers_sent = 0
        self._run_id, self._seq = secrets.token_hex(8), 0  # serverd tells a copy from a new one
        self.hard_examples = dict(hard_examples or {})  # offload model -> listener, hook
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._offering = Outage(log, "federation: sample offer")
        # per offloaded frame or answer: one outage, not a line (and a traceback) each
        self._features = Outage(log, "federation: the features of an offloaded frame")
        self._refusals = Repeats(log)
        self._thread = threading.Thread(target=self._run, name="federation-offer", daemon=True)

    def start(self) -> None:
        for participant in self.participants.values():
            participant.start()
        self.mqtt.add_connection_listener(self._on_connection)
        if self.mqtt.connected:  # up before the listener was: no call for this connection
            self._on_connection(True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        self._thread.join(5)
        for participant in self.participants.values():
            participant.stop()
        self.store.close()

    def models(self) -> list[str]:
        return list(self.participants)

    def samples(self, model: str) -> int:
        """Samples of ``model`` to train on (the held-back slice excluded)."""
        return self.store.count(model)

    def add_label(self, model: str, features: np.ndarray, label: str | int) -> int:
        """Store an operator's labelled sample (a class name or index); ``FederationError``
        says why not and stores nothing."""
        return self.add(model, features, self._index(model, label), "operator")

    def add(self, model: str, features: np.ndarray, label: int, source: Source) -> int:
        if model not in self.participants:
            raise FederationError(f"model {model!r} is not federated on this device")
        sample = self.store.add(model, features, label, source)
        self.changed()
        return sample

    def on_offload(self, model: str, job_id: str, frame: np.ndarray) -> None:
        """The offload dispatcher submitted ``frame`` for ``model``: if it feeds a
        federated model, keep the frame's features until serverd answers."""
        hook = self.hard_examples.get(model)
        if hook is None:
            return
        with self._features.contained():  # a frame the hook cannot read costs one sample
            hook[0].remember(job_id, hook[1](frame))

    def on_outcome(self, outcome: JobOutcome) -> None:
        """An offload job closed: a confident answer of the server becomes a sample."""
        hook = self.hard_examples.get(outcome.model)
        if hook is None:
            return
        before = hook[0].counters.stored
        try:
            hook[0](outcome)
        except SampleStoreError:
            pass  # counted, and logged by the store as one outage (not a line per outcome)
        except FederationError as exc:
            self._refusals(
                "refused", f"federation: hard example {outcome.job_id} not stored: {exc}"
            )
        if hook[0].counters.stored != before:
            self.changed()

    def allowed(self) -> bool:
        """The ``federated_training`` twin property: may this device train now?"""
        return self._allowed.is_set()

    def set_allowed(self, value: bool) -> None:
        """The twin property's setter; serverd hears it with the next offer (at once)."""
        if value:
            self._allowed.set()
        else:
            self._allowed.clear()
        self.changed()

    def changed(self) -> None:
        """Samples or the training switch changed: offer again soon."""
        self._changed.set()

    def offer(self) -> SampleOffer:
        allowed = self.allowed()
        self._seq += 1
        return SampleOffer(
            samples={m: self._offered(m) if allowed else 0 for m in self.participants},
            training_allowed=allowed,
            sent_ms=self.clock(),
            run=self._run_id,
            seq=self._seq,
        )

    def status(self) -> dict[str, Any]:
        # the models first: a sample count they fail to read shows in the store's counters
        models = {m: p.status() for m, p in self.participants.items()}
        return {
            "enabled": True,
            "training_allowed": self.allowed(),
            "offers_sent": self.offers_sent,
            "samples": self.store.counters.as_dict(),
            "hard_examples": {m: h.counters.as_dict() for m, (h, _) in self.hard_examples.items()},
            "models": models,
        }

    def _offered(self, model: str) -> int:
        """0 while the store cannot be read (it logs that once): serverd had better not
        select a device that cannot train."""
        try:
            return self.samples(model)
        except SampleStoreError:
            return 0

    def _index(self, model: str, label: str | int) -> int:
        names = self.classes.get(model, [])
        if isinstance(label, str):
            if label not in names:
                raise FederationError(f"{model}: unknown class {label!r} (one of {names})")
            return names.index(label)
        if not 0 <= label < len(names):
            raise FederationError(f"{model}: class index {label} outside [0, {len(names)})")
        return label

    def _on_connection(self, connected: bool) -> None:
        if connected:
            self._changed.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._changed.wait(self.offer_interval_s)
            if self._stop.is_set():
                return
            self._changed.clear()
            if not self.mqtt.connected:  # paho would queue it, and every later one, in memory
                continue  # the next connection offers at once (_on_connection)
            with self._offering.contained():  # the next interval offers again
                data = encode(self.offer())
                self.mqtt.publish(self.topics.samples(self.device_id), data, retain=True)
                self.offers_sent += 1


def build(
    config: EdgeFederationConfig,
    mqtt: MqttClient,
    device_id: str,
    prefix: str,
    state_dir: Path,
    trusted_keys: Sequence[Path],
    images_dir: Path,
    on_adopted: Callable[[str, Path], None] | None = None,
    clock: Clock = now_ms,
) -> EdgeFederation:
    """The device's federation from its config section; an unreadable store or key is
    a ``ConfigError``. ``on_adopted(model, image)`` runs when a version is adopted;
    offers are stamped on ``clock`` (edged: serverd's, as its offload replies tell)."""
    key_paths = config.trusted_keys or trusted_keys
    try:
        images = VersionImages(config.images_dir or images_dir, key_paths)
        store = SampleStore(
            config.store or state_dir / "federation.sqlite",
            config.max_samples,
            config.holdout_every,
        )
    except (ImageError, FederationError) as exc:
        raise ConfigError(f"federation: {exc}") from exc
    topics = FederationTopics(prefix)
    allowed = threading.Event()
    if config.training_allowed:
        allowed.set()
    participants = [
        Participant(
            mqtt,
            topics,
            device_id,
            m.name,
            store,
            HeadSlot(),
            images,
            config.margin,
            allowed.is_set,
            on_adopted,
        )
        for m in config.models
    ]
    classes = {m.name: m.classes for m in config.models}
    hard = {
        m.hard_examples.offload_model: (
            HardExamples(store, m.name, m.classes, m.hard_examples.min_score),
            _extractor(images_dir, m.hard_examples.image, trusted_keys),
        )
        for m in config.models
        if m.hard_examples is not None
    }
    return EdgeFederation(
        mqtt,
        topics,
        device_id,
        store,
        participants,
        classes,
        allowed,
        config.offer_interval_s,
        clock,
        hard_examples=hard,
    )


def _extractor(images_dir: Path, image: str, trusted_keys: Sequence[Path]) -> FeatureExtractor:
    try:
        return FeatureExtractor.of_image(image_dir(images_dir, image), trusted_keys)
    except ImageError as exc:
        raise ConfigError(f"federation.models[].hard_examples.image: {exc}") from exc
