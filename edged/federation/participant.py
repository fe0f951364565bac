"""The edge's federation adapter: MQTT in and out around the sample store, the trainer,
the head slot and the installed version images. Only parameters, a sample count and
metrics are ever published.

Handlers run on the MQTT thread and only queue work; one named worker thread trains,
uploads and judges new versions, so a long training never blocks the connection. The
round and the version are retained and come again at every reconnect (and a persistent
session brings every version published while the edge was away, each a whole model
image): the worker's ``Inbox`` keeps only the latest of each, and a round already trained
or a version already refused is not taken up again, so a flapping link never piles up
copies of a version in memory or trains a round twice.
Training is skipped while ``allowed()`` is False (the device twin's switch). An adopted
version is installed into its A/B slots and handed to ``on_adopted`` (edged swaps the
model it serves); if that fails, the install is rolled back and the version refused.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edged.federation.adoption import HeadSlot, Served, check, judge
from edged.federation.samples import SampleStore, SampleStoreError
from edged.federation.trainer import TrainSettings, train
from edged.federation.versions import VersionImages
from edgefed.counters import Counters
from edgefed.errors import EdgeFedError, FederationError, ProtocolError
from edgefed.federation_upload import Upload
from edgefed.federation_wire import (
    MAX_VERSION_FRAME_BYTES,
    AdoptionReport,
    FederationTopics,
    ReceivedModel,
    RoundOpen,
    UpdateAck,
    decode,
    encode,
    encode_params,
)
from edgefed.mqtt import MqttClient
from edgefed.outage import Repeats
from edgefed.wire import new_job_id

log = logging.getLogger("edged.federation")
MAX_ACKS = 16  # acks waiting for the worker; an older one is superseded by the later ones

Work = RoundOpen | ReceivedModel | UpdateAck


@dataclass
class ParticipantCounters(Counters):
    rounds_seen: int = 0
    rounds_trained: int = 0
    rounds_skipped: int = 0
    chunks_sent: int = 0
    updates_accepted: int = 0
    updates_rejected: int = 0
    versions_adopted: int = 0
    versions_refused: int = 0
    bad_messages: int = 0
    rounds_repeated: int = 0  # a round trained already, delivered again (a reconnect)
    versions_repeated: int = 0  # a version refused already, delivered again
    superseded: int = 0  # a round, version or ack replaced by a later one before its turn
    last_reason: str = ""  # the latest of the two below, or a failed round
    last_update_rejection: str = ""
    last_version_refusal: str = ""


class Inbox:
    """The worker's queue: the latest round, the latest version and up to ``MAX_ACKS``
    acks, in order of arrival; a later round or version replaces the one waiting."""

    def __init__(self, counters: ParticipantCounters) -> None:
        self._counters = counters
        self._items: deque[Work] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def put(self, item: Work) -> None:
        with self._ready:
            same = [i for i in self._items if type(i) is type(item)]
            if same and (not isinstance(item, UpdateAck) or len(same) >= MAX_ACKS):
                self._items.remove(same[0])
                self._counters.superseded += 1
            self._items.append(item)
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def get(self) -> Work | None:
        """The next item; None once closed."""
        with self._ready:
            self._ready.wait_for(lambda: self._items or self._closed)
            return None if self._closed else self._items.popleft()


class Participant:
    """One device taking part in the federation of one model."""

    def __init__(
        self,
        mqtt: MqttClient,
        topics: FederationTopics,
        device_id: str,
        model: str,
        store: SampleStore,
        slot: HeadSlot,
        images: VersionImages,
        margin: float = 0.02,
        allowed: Callable[[], bool] = lambda: True,
        on_adopted: Callable[[str, Path], None] | None = None,
    ) -> None:
        self.mqtt, self.topics, self.device_id, self.model = mqtt, topics, device_id, model
        self.store, self.slot, self.images, self.margin = store, slot, images, margin
        self.allowed, self.on_adopted = allowed, on_adopted
        self.rolled_back_from: int | None = None
        self.counters = ParticipantCounters()
        self._work = Inbox(self.counters)
        self._upload: Upload | None = None
        self._trained: tuple[int, int] | None = None  # (round, base version) last trained
        self._refused: tuple[int, str] | None = None  # (version, sha256) last refused
        self._bad = Repeats(log)
        self._thread = threading.Thread(target=self._run, name=f"federation-{model}", daemon=True)

    def start(self) -> None:
        """Serve the installed version (if any), then take part in the rounds."""
        installed = self.images.served(self.model)
        if installed is not None:
            self.slot.swap(installed)
        self.rolled_back_from = self.images.rolled_back_from(self.model)
        self.mqtt.subscribe(self.topics.round(self.model), self._on_message)
        self.mqtt.subscribe(self.topics.model(self.model), self._on_message)
        self.mqtt.subscribe(self.topics.ack(self.device_id), self._on_message)
        self.mqtt.add_connection_listener(self._on_connection)
        self._thread.start()

    def stop(self) -> None:
        self._work.close()
        self._thread.join(timeout=30)

    def status(self) -> dict[str, object]:
        """What the status API and the metrics show; a sample store that cannot be read
        shows 0 samples (its ``read_failures`` say why) instead of failing them."""
        served = self.slot.current
        try:
            samples = self.store.count(self.model)
        except SampleStoreError:  # counted and logged as one outage by the store
            samples = 0
        return {
            "model": self.model,
            "version": served.version if served else None,
            "image": str(served.image) if served and served.image else None,
            "rolled_back_from": self.rolled_back_from,
            "samples": samples,
            "training_allowed": self.allowed(),
            **self.counters.as_dict(),
        }

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            message = decode(payload, MAX_VERSION_FRAME_BYTES)  # a version is a whole image
        except ProtocolError as exc:
            self.counters.bad_messages += 1
            self._bad("bad", f"federation: bad message on {topic}: {exc}")
            return
        if isinstance(message, RoundOpen | ReceivedModel | UpdateAck):
            self._work.put(message)

    def _on_connection(self, connected: bool) -> None:
        upload = self._upload
        if connected and upload is not None and not upload.done:
            self.mqtt.publish(self.topics.update(self.device_id), upload.query())

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            try:
                if isinstance(item, RoundOpen):
                    self._train(item)
                elif isinstance(item, ReceivedModel):
                    self._consider(item)
                else:
                    self._acked(item)
            except Exception as exc:  # contained: one bad round never stops the worker
                self.counters.last_reason = str(exc)
                log.exception("federation: %s failed", type(item).__name__)

    def _train(self, plan: RoundOpen) -> None:
        self.counters.rounds_seen += 1
        served = self.slot.current
        if self.device_id not in plan.participants or plan.model != self.model:
            return
        if (plan.round, plan.base_version) == self._trained:
            self.counters.rounds_repeated += 1  # its upload goes on (``_on_connection``)
            return
        if not self.allowed() or served is None or served.version != plan.base_version:
            self.counters.rounds_skipped += 1
            return
        try:
            x, y = self.store.training_set(self.model)
        except SampleStoreError as exc:  # logged by the store, once for the outage
            self.counters.rounds_skipped += 1
            self.counters.last_reason = str(exc)
            return
        if len(y) == 0:
            self.counters.rounds_skipped += 1
            return
        settings = TrainSettings(
            epochs=plan.train.epochs,
            learning_rate=plan.train.learning_rate,
            batch_size=plan.train.batch_size,
            seed=plan.round,
        )
        result = train(served.params, x, y, settings)
        self._upload = Upload.of(
            new_job_id(),
            encode_params(result.params),
            model=self.model,
            round=plan.round,
            base_version=plan.base_version,
            num_samples=result.num_samples,
            metrics={"loss": result.loss, "accuracy": result.accuracy},
            max_chunk_bytes=plan.max_chunk_bytes,
        )
        self._trained = (plan.round, plan.base_version)
        self.counters.rounds_trained += 1
        self._send(self._upload.frames())

    def _acked(self, ack: UpdateAck) -> None:
        upload = self._upload
        if upload is None or upload.done:  # its verdict stands: a later ack is a late copy
            return
        self._send(upload.on_ack(ack))
        if upload.done and upload.verdict is not None:
            if upload.verdict.state == "accepted":
                self.counters.updates_accepted += 1
            else:
                self.counters.updates_rejected += 1
                self.counters.last_update_rejection = upload.verdict.reason
                self.counters.last_reason = upload.verdict.reason

    def _send(self, frames: list[bytes]) -> None:
        for data in frames:
            self.mqtt.publish(self.topics.update(self.device_id), data)
            self.counters.chunks_sent += 1

    def _consider(self, received: ReceivedModel) -> None:
        head, served = received.model, self.slot.current
        if head.model != self.model or (served is not None and head.version == served.version):
            return
        if (head.version, head.sha256) == self._refused:
            self.counters.versions_repeated += 1  # its report was sent: the refusal stands
            return
        report = AdoptionReport(model=head.model, version=head.version, adopted=False)
        # a refusal about the version itself (its signature, its shapes, the held-back
        # judgement) stands; one for a passing fault (a full disk, the sample store, a
        # failed swap) is judged again when the version comes again
        stands = False
        try:
            try:
                check(received, self.images.keys, served, self.rolled_back_from)
            except FederationError:
                stands = True
                raise
            with self.images.unpacked(self.model, head.version, received.body) as (image, params):
                if served is not None and [p.shape for p in params] != [
                    p.shape for p in served.params
                ]:
                    stands = True
                    raise FederationError(f"{head.model} v{head.version}: tensor shapes differ")
                decision = judge(params, served, self.store.holdout(self.model), self.margin)
                stands = not decision.adopt
                report = report.model_copy(
                    update={
                        "adopted": decision.adopt,
                        "reason": decision.reason,
                        "holdout_accuracy": decision.candidate_accuracy,
                        "current_accuracy": decision.current_accuracy,
                    }
                )
                if decision.adopt:
                    self._adopt(Served(head.version, params, self.images.install(image)))
        except FederationError as exc:
            report = report.model_copy(update={"adopted": False, "reason": str(exc)})
        if report.adopted:
            self.counters.versions_adopted += 1
        else:
            self.counters.versions_refused += 1
            if stands:
                self._refused = (head.version, head.sha256)
            self.counters.last_version_refusal = report.reason
            self.counters.last_reason = report.reason
            log.warning("federation: refused %s v%d: %s", head.model, head.version, report.reason)
        self.mqtt.publish(self.topics.adoption(self.device_id), encode(report))

    def _adopt(self, served: Served) -> None:
        """Serve an installed version; if edged cannot serve it, back to the previous."""
        self.slot.swap(served)
        if self.on_adopted is None or served.image is None:
            return
        try:
            self.on_adopted(self.model, served.image)
        except EdgeFedError as exc:
            with contextlib.suppress(FederationError):  # none before: nothing to go back to
                self.slot.rollback()
            self.images.roll_back(self.model)
            self.rolled_back_from = served.version
            raise FederationError(f"v{served.version} cannot be served: {exc}") from exc
