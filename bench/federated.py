"""``python -m bench federated``: federated learning on a real mosquitto, per model.

For each model: serverd's ``Coordinator`` and three edge ``Participant``s (each with its
own MQTT connection, SQLite sample store and worker thread) in this process, on a private
broker; the data is split non-IID (each edge sees mostly its own classes). Printed, one
JSON line: per model the held-out accuracy after the rounds (``federated_acc``), of one
model trained on the union of the edges' data (``centralised_acc``), of the best edge
trained alone (``best_local_acc``), and of the same federation with a fourth, poisoned
edge sending its honest update reversed and scaled twentyfold (``poisoned_acc``, robust
strategy multi-Krum); ``bytes_per_round_per_edge`` (update frames received per round and
edge), ``version_image_bytes`` (the packed, signed model image each edge receives per new
version) and ``round_s`` (mean seconds from opening to closing a round).

Model ``digits``: a softmax head on the pixels of scikit-learn's bundled handwritten digits.
Model ``person``: a person/background head on EfficientNet-Lite0 features of vtest.avi
crops labelled by the person detector (``bench.crops``).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.crops import CLASSES, person_crops
from edged.federation.adoption import HeadSlot
from edged.federation.participant import Participant
from edged.federation.samples import SampleStore
from edged.federation.service import EdgeFederation
from edged.federation.trainer import TrainSettings, accuracy, train
from edged.federation.versions import VersionImages
from edgefed.clock import now_ms
from edgefed.federation_upload import Upload
from edgefed.federation_wire import (
    MAX_VERSION_FRAME_BYTES,
    FederationTopics,
    ReceivedModel,
    RoundOpen,
    SampleOffer,
    TrainConfig,
    decode,
    encode,
    encode_params,
    init_head,
)
from edgefed.images.federated import Base, read_head
from edgefed.images.signing import load_public_key, public_pem
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.paths import images_dir, trusted_keys
from edgefed.testing.broker import Broker
from edgefed.testing.datasets import DIGIT_FEATURES, digits, non_iid_split, train_test_split
from edgefed.testing.wait import wait_until
from edgefed.wire import new_job_id
from serverd.federation.aggregate import AggregationSettings
from serverd.federation.coordinator import Coordinator
from serverd.federation.images import VersionImager
from serverd.federation.rounds import Federation, RoundSettings
from serverd.federation.service import FederationService

ROBUST = AggregationSettings(strategy="krum", krum_malicious=1, krum_keep=3)
TRAIN = TrainConfig(epochs=3, learning_rate=0.5)
# 1280 features: a smaller step keeps each global version's held-back accuracy steady on
# every edge, so none refuses a version for a one-round dip (measured: 0.5 dips 4-7 points)
PERSON_TRAIN = TrainConfig(epochs=3, learning_rate=0.2)
# Each edge holds back every 5th sample, about 90 digits: one is 1.1 points, so the
# adoption margin spans a few samples, or one unlucky digit refuses a better version.
MARGIN = 0.05


@dataclass
class Data:
    """A model's data: the edges' training shares and the held-out test set."""

    name: str
    features: int
    classes: int
    edges: list[tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray]
    base: Callable[[], Base]  # what every version image of the model shares
    train: TrainConfig = TRAIN


def digits_data() -> Data:
    x, y = digits()
    xtr, ytr, xte, yte = train_test_split(x, y, test_share=0.2, seed=0)
    parts = non_iid_split(ytr, edges=3, own_share=0.8, seed=1)
    edges = [(xtr[p], ytr[p]) for p in parts]
    return Data("digits", DIGIT_FEATURES, 10, edges, (xte, yte), digits_base)


def digits_base() -> Base:
    """scikit-learn's digits are 8 x 8 grey pictures with values 0..16."""
    return Base.pixels(8, 8, 16.0)


def person_base() -> Base:
    keys = [load_public_key(k) for k in trusted_keys()]
    return Base.of_image(images_dir() / "efficientnet_lite0", keys)


def trust(key: Ed25519PrivateKey, directory: Path) -> Path:
    """``key``'s public half as a PEM file in ``directory`` (what an edge trusts)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "serverd-federation.pub"
    path.write_bytes(public_pem(key.public_key()))
    return path


def person_data() -> Data:
    """Model ``person``: a person/background head on EfficientNet-Lite0 features of
    vtest.avi crops labelled by the person detector (``bench.crops``), split non-IID."""
    x, y = person_crops()
    xtr, ytr, xte, yte = train_test_split(x, y, test_share=0.2, seed=0)
    # 90%: one edge sees mostly background, one mostly people, one a few of each
    parts = non_iid_split(ytr, edges=3, own_share=0.9, seed=1)
    edges = [(xtr[p], ytr[p]) for p in parts]
    return Data("person", x.shape[1], len(CLASSES), edges, (xte, yte), person_base, PERSON_TRAIN)


class Poisoner:
    """A hostile edge: in every round it sends the honest update of its (copied) data
    reversed and scaled twentyfold."""

    def __init__(
        self,
        mqtt: MqttClient,
        topics: FederationTopics,
        model: str,
        data: tuple[np.ndarray, np.ndarray],
        train: TrainConfig = TRAIN,
    ) -> None:
        self.mqtt, self.topics, self.model, self.data = mqtt, topics, model, data
        self.train = train
        self.params: list[np.ndarray] | None = None
        self._rounds: queue.Queue[RoundOpen | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="poisoner", daemon=True)

    def start(self) -> None:
        self.mqtt.subscribe(self.topics.round(self.model), self._on_message)
        self.mqtt.subscribe(self.topics.model(self.model), self._on_message)
        samples = {self.model: len(self.data[1])}
        offer = SampleOffer(samples=samples, training_allowed=True, sent_ms=now_ms())
        self.mqtt.publish(self.topics.samples("poisoner"), encode(offer), retain=True)
        self._thread.start()

    def stop(self) -> None:
        self._rounds.put(None)
        self._thread.join(30)

    def _on_message(self, topic: str, payload: bytes) -> None:
        message = decode(payload, MAX_VERSION_FRAME_BYTES)
        if isinstance(message, ReceivedModel):
            self.params = read_head(message.body)
        elif isinstance(message, RoundOpen):
            self._rounds.put(message)

    def _run(self) -> None:
        while (plan := self._rounds.get()) is not None:
            base = self.params
            if base is None or "poisoner" not in plan.participants:
                continue
            x, y = self.data
            settings = TrainSettings(
                epochs=self.train.epochs, learning_rate=self.train.learning_rate
            )
            honest = train(base, x, y, settings).params
            bad = [b - 20.0 * (h - b) for b, h in zip(base, honest, strict=True)]
            upload = Upload.of(
                new_job_id(),
                encode_params(bad),
                model=self.model,
                round=plan.round,
                base_version=plan.base_version,
                num_samples=len(y),
                metrics={},
                max_chunk_bytes=plan.max_chunk_bytes,
            )
            for frame in upload.frames():
                self.mqtt.publish(self.topics.update("poisoner"), frame)


@dataclass
class Site:
    """A broker, serverd's coordinator and the edges (optionally a poisoner) of one model."""

    data: Data
    directory: Path
    aggregation: AggregationSettings = field(default_factory=AggregationSettings)
    poisoned: bool = False
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    spy: Callable[[str, bytes], None] | None = None  # sees every message on the broker

    def __enter__(self) -> Site:
        topics = FederationTopics()
        self.broker = Broker(self.directory / "broker")
        self.broker.start()
        self.clients: list[MqttClient] = []
        if self.spy is not None:
            watcher = self._client("spy")
            watcher.subscribe("#", self.spy)
            watcher.start()
            if not watcher.wait_connected(10):
                raise RuntimeError("the spy could not connect to the broker")
        server = self._client("serverd")
        names = [f"edge-{i}" for i in range(len(self.data.edges))]
        settings = RoundSettings(
            min_clients=len(names),
            quorum=len(names),
            min_samples=10,
            timeout_ms=60_000,
            aggregation=self.aggregation,
        )
        fed = Federation(
            self.data.name, 1, init_head(self.data.features, self.data.classes), settings
        )
        classes = [str(c) for c in range(self.data.classes)]
        imager = VersionImager(self.data.name, self.data.base(), classes, self.key)
        self.coordinator = Coordinator(
            server, topics, fed, self.key, imager, self.data.train, max_chunk_bytes=16384
        )
        self.service = FederationService(server, topics, [self.coordinator])
        self.service.start()
        self.devices: list[EdgeFederation] = []
        for name, (x, y) in zip(names, self.data.edges, strict=True):
            device = self._device(name, topics)
            for features, label in zip(x, y, strict=True):
                device.add(self.data.name, features, int(label), "operator")
            device.start()
            self.devices.append(device)
        self.edges = [d.participants[self.data.name] for d in self.devices]
        self.poisoner = (
            Poisoner(
                self._client("poisoner"),
                topics,
                self.data.name,
                self.data.edges[0],
                self.data.train,
            )
            if self.poisoned
            else None
        )
        if self.poisoner is not None:
            self.poisoner.start()
        for client in self.clients:
            client.start()  # the spy's second start does nothing
        wait_until("every edge on v1", lambda: self.versions() == [1] * len(self.edges))
        return self

    def _device(self, name: str, topics: FederationTopics) -> EdgeFederation:
        """One edge's federation as edged builds it: store, participant, sample offers."""
        store = SampleStore(self.directory / f"{name}.db", holdout_every=5)
        mqtt = self._client(name)
        allowed = threading.Event()
        allowed.set()
        participant = Participant(
            mqtt,
            topics,
            name,
            self.data.name,
            store,
            HeadSlot(),
            VersionImages(self.directory / name, [trust(self.key, self.directory)]),
            margin=MARGIN,
            allowed=allowed.is_set,
        )
        classes = {self.data.name: [str(c) for c in range(self.data.classes)]}
        return EdgeFederation(mqtt, topics, name, store, [participant], classes, allowed)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for device in self.devices:
            device.stop()
        if self.poisoner is not None:
            self.poisoner.stop()
        for client in self.clients:
            client.stop()
        self.broker.stop()

    def _client(self, name: str) -> MqttClient:
        client = MqttClient(MqttConfig(port=self.broker.port, client_id=name))
        self.clients.append(client)
        return client

    def versions(self) -> list[int | None]:
        return [e.slot.current.version if e.slot.current else None for e in self.edges]

    def run_round(self) -> None:
        """One round over the devices that offered samples (the edges, and the poisoner)."""
        wanted = len(self.edges) + (self.poisoner is not None)
        offered = self.service.available
        wait_until("every device's offer", lambda: len(offered(self.data.name)) == wanted)
        self.service.start_round(self.data.name)
        outcome = wait_until("the round to close", self.coordinator.poll, timeout=120)
        if outcome.version is None:
            raise RuntimeError(f"round failed: {outcome.record()}")
        wait_until(
            f"every edge on v{outcome.version}",
            lambda: self.versions() == [outcome.version] * len(self.edges),
        )

    def accuracy(self) -> float:
        served = self.edges[0].slot.current
        assert served is not None
        return accuracy(served.params, *self.data.test)


def baselines(data: Data, rounds: int) -> tuple[float, float]:
    """Held-out accuracy of centralised training on the union and of the best edge alone,
    each with the federation's step size for as many epochs as ``rounds`` rounds train."""
    step = data.train
    budget = TrainSettings(epochs=rounds * step.epochs, learning_rate=step.learning_rate)
    head = init_head(data.features, data.classes)
    union_x = np.concatenate([x for x, _ in data.edges])
    union_y = np.concatenate([y for _, y in data.edges])
    centralised = accuracy(train(head, union_x, union_y, budget).params, *data.test)
    local = max(accuracy(train(head, x, y, budget).params, *data.test) for x, y in data.edges)
    return centralised, local


def measure(data: Data, rounds: int, directory: Path) -> dict[str, object]:
    with Site(data, directory / "clean", ROBUST) as site:
        for _ in range(rounds):
            site.run_round()
        federated = site.accuracy()
        history = site.coordinator.history()
        received = site.coordinator.counters.bytes_received
        fed = site.coordinator.federation
        image_bytes = len(site.coordinator.imager.packed(fed.version, fed.params))
    with Site(data, directory / "poisoned", ROBUST, poisoned=True) as site:
        for _ in range(rounds):
            site.run_round()
        poisoned = site.accuracy()
    centralised, best_local = baselines(data, rounds)
    return {
        "name": data.name,
        "federated_acc": round(federated, 4),
        "centralised_acc": round(centralised, 4),
        "best_local_acc": round(best_local, 4),
        "poisoned_acc": round(poisoned, 4),
        "rounds": rounds,
        "bytes_per_round_per_edge": received // (rounds * len(data.edges)),
        "version_image_bytes": image_bytes,
        "round_s": round(float(np.mean([h["round_s"] for h in history])), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench federated", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=30, help="rounds per federation")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="bench-federated-") as tmp:
        models = [
            measure(data(), args.rounds, Path(tmp) / name)
            for name, data in (("digits", digits_data), ("person", person_data))
        ]
    print(json.dumps({"models": models}))
    return 0
