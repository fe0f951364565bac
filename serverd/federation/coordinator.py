"""serverd's federation adapter of one model: the round state machine on MQTT.

It publishes each round (retained ``RoundOpen``: built and encoded before the round
opens, with no more participants than its 64 KiB header holds, so a round that cannot be
published never opens), reassembles the chunked updates of the
open round's participants that have not answered yet (any other chunk is counted and
dropped unread; the last chunk of such an update is answered with the reason), hands
each whole update to ``Federation.receive`` and answers with an ``UpdateAck``
(accepted, rejected with the reason, or the chunks still missing), and publishes every
new global version as a model image signed with serverd's key (retained ``GlobalModel``
with the packed image, ``serverd.federation.images``). A chunk of an update the
reassembly has no room for is counted (``chunks_no_room``) and dropped, not held against
the device: it is told ``unknown`` (send it all) once there is room. A version whose
image cannot be built or sent (a full disk, a refused publish) is counted
(``publish_failures``), logged as one outage and tried again every ``poll``; no round
opens on it until it is out. A version whose frame is larger
than the broker takes (``mqtt.max_packet_bytes``) is not sent: it is logged as an error
and counted (``versions_unsent``), and kept on disk; a round message that would be is
not opened. Edges' adoption
reports are kept per device for the status. ``FederationService`` subscribes once for
every model and hands each decoded message to its model's coordinator. Calls come from
the MQTT thread and from the caller's timer, so one lock guards the state machine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from edgefed.clock import Clock, now_ms
from edgefed.counters import Counters
from edgefed.errors import FederationError, ProtocolError
from edgefed.federation_upload import MAX_PENDING_BYTES, Assembled, Reassembler
from edgefed.federation_wire import (
    AdoptionReport,
    FederationTopics,
    GlobalModel,
    Received,
    RoundOpen,
    TrainConfig,
    UpdateAck,
    UpdateQuery,
    decode_params,
    encode,
    max_encoded_bytes,
    sha256_hex,
    signed_text,
)
from edgefed.images.signing import sign
from edgefed.mqtt import MqttClient, PacketTooLarge
from edgefed.mqtt.packet import SETTING
from edgefed.outage import Outage, Repeats
from edgefed.wire import MAX_EPOCH_MS, MAX_HEADER_BYTES
from serverd.federation.images import VersionImager
from serverd.federation.rounds import Federation, RoundOutcome, RoundPlan

log = logging.getLogger("serverd.federation")


@dataclass
class CoordinatorCounters(Counters):
    rounds_opened: int = 0
    chunks: int = 0
    chunks_dropped: int = 0
    chunks_no_room: int = 0  # of updates the reassembly had no room for (they wait)
    updates_accepted: int = 0
    updates_rejected: int = 0
    versions_published: int = 0
    versions_unsent: int = 0  # larger than the broker's packet limit
    publish_failures: int = 0  # a version's image not built or not sent: tried again
    bytes_received: int = 0


class Coordinator:
    """The federation of one model over one MQTT connection."""

    def __init__(
        self,
        mqtt: MqttClient,
        topics: FederationTopics,
        federation: Federation,
        key: Ed25519PrivateKey,
        imager: VersionImager,
        train: TrainConfig | None = None,
        max_chunk_bytes: int = 256 * 1024,
        clock: Clock = now_ms,
        max_pending_bytes: int = MAX_PENDING_BYTES,
    ) -> None:
        self.mqtt, self.topics, self.federation, self.key = mqtt, topics, federation, key
        self.imager = imager
        self.train = train or TrainConfig()
        self.max_chunk_bytes = max_chunk_bytes
        self.clock = clock
        self.counters = CoordinatorCounters()
        self.adoptions: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._rejections = Repeats(log)  # a device can send rejected updates by the thousand
        self._reassembler = Reassembler(
            max_pending_bytes=max_pending_bytes,
            max_update_bytes=max_encoded_bytes([p.shape for p in federation.params]),
            max_chunk_bytes=max_chunk_bytes,
        )
        # the round whose version is not published yet (None: the current one is out)
        self._unpublished: int | None = None
        self._publishing = Outage(log, f"federation {federation.model}: publishing a version")
        # the round message's room for its participants' ids: its header bound, less the
        # rest of a header whose numbers are as long as they can be
        widest = RoundPlan(MAX_EPOCH_MS, MAX_EPOCH_MS, (), MAX_EPOCH_MS)
        rest = len(self._round_message(widest)[0].model_dump_json()) - len("[]")
        self.list_bytes = MAX_HEADER_BYTES - rest

    def announce(self) -> None:
        """Publish the current global version (retained), as at start-up; one that cannot
        be is tried again every ``poll``."""
        with self._lock:
            self._unpublished = max(1, self.federation.round_id)
            self._publish_pending()

    def holds(self, device: str, update_id: str) -> bool:
        """True while part of this update from ``device`` is held for reassembly."""
        with self._lock:
            return self._reassembler.holds(device, update_id)

    def open_round(self, available: Mapping[str, int]) -> RoundOpen:
        """Open a round over ``available`` devices (id -> samples) and publish it; its
        message is built and encoded first, and one that cannot be is a
        ``FederationError`` with the federation still idle."""
        with self._lock:
            if self._unpublished is not None:
                fed = self.federation
                raise FederationError(
                    f"v{fed.version} of {fed.model} is not published yet: no edge could train "
                    "from it"
                )
            plan = self.federation.draft(available, self.clock(), self.list_bytes)
            message, data = self._round_message(plan)
            self._sendable(self.topics.round(self.federation.model), data, plan.round_id)
            self.federation.begin(plan)
            self._reassembler.clear()
            self.counters.rounds_opened += 1
        self.mqtt.publish(self.topics.round(self.federation.model), data, retain=True)
        return message

    def _round_message(self, plan: RoundPlan) -> tuple[RoundOpen, bytes]:
        model = self.federation.model
        try:
            message = RoundOpen(
                model=model,
                round=plan.round_id,
                base_version=plan.base_version,
                participants=list(plan.participants),
                deadline_ms=plan.deadline_ms,
                train=self.train,
                max_chunk_bytes=self.max_chunk_bytes,
            )
            return message, encode(message)
        except (ValidationError, ProtocolError) as exc:
            why = " ".join(str(exc).split())[:300]
            raise FederationError(
                f"round {plan.round_id} of {model} cannot be sent: {why}"
            ) from exc

    def _sendable(self, topic: str, data: bytes, round_id: int) -> None:
        """A round message the broker would not take is a ``FederationError``: the
        round does not open."""
        try:
            self.mqtt.check_packet(topic, data)
        except PacketTooLarge as exc:
            model = self.federation.model
            raise FederationError(f"round {round_id} of {model} cannot be sent: {exc}") from exc

    def poll(self) -> RoundOutcome | None:
        """Close the round when it is due; a new version is signed and published, and one
        that could not be is tried again. The outcome is returned whether or not its
        version is out (it is the caller's to save)."""
        with self._lock:
            outcome = self.federation.poll(self.clock())
            if outcome is not None:
                self._reassembler.clear()
                if outcome.version is not None:
                    self._unpublished = outcome.round_id
            self._publish_pending()
        if outcome is not None:  # the device lists are in the history, not the log
            accepted, rejected, missing = outcome.tally()
            log.info(
                "federation %s: round %d closed: %s, %d accepted, %d rejected, %d missing",
                self.federation.model,
                outcome.round_id,
                f"v{outcome.version}" if outcome.version else f"failed: {outcome.failure}",
                accepted,
                rejected,
                missing,
            )
        return outcome

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                **self.federation.status(),
                "counters": self.counters.as_dict(),
                "adoptions": dict(self.adoptions),
                "reassembly": {
                    "updates": self._reassembler.pending_updates(),
                    "bytes": self._reassembler.pending_bytes(),
                    "max_bytes": self._reassembler.max_pending_bytes,
                    "waiting": self._reassembler.waiting(),
                },
            }

    def history(self) -> list[dict[str, Any]]:
        with self._lock:
            return [o.record() for o in self.federation.history]

    def _publish_pending(self) -> None:
        """Publish the current version if it is not out yet. Any failure (no room to
        build its image, a publish refused) is counted and logged as one outage, not
        raised: the version stays current, and the next call tries again."""
        if self._unpublished is None:
            return
        try:
            self._publish_version(self._unpublished)
        except Exception as exc:  # contained: the round's outcome must reach its caller
            self.counters.publish_failures += 1
            self._publishing.failed(exc)
        else:
            self._unpublished = None
            self._publishing.ok()

    def _publish_version(self, round_id: int) -> None:
        fed = self.federation
        body = self.imager.packed(fed.version, fed.params)
        digest = sha256_hex(body)
        signature = sign(self.key, signed_text(fed.model, fed.version, digest)).hex()
        header = GlobalModel(
            model=fed.model, version=fed.version, round=round_id, sha256=digest, signature=signature
        )
        try:
            self.mqtt.publish(self.topics.model(fed.model), encode(header, body), retain=True)
        except PacketTooLarge as exc:  # no version is chunked: the edges keep theirs
            self.counters.versions_unsent += 1
            log.error(
                "federation %s: v%d not sent to the edges (they keep the version they "
                "serve): %s; it needs a broker limit and %s of at least %d bytes",
                fed.model,
                fed.version,
                exc,
                SETTING,
                exc.size,
            )
            return
        self.counters.versions_published += 1

    def on_update(self, device: str, message: Received | UpdateQuery, size: int) -> None:
        """A decoded chunk or query from ``device`` (``size``: bytes on the wire)."""
        with self._lock:
            self.counters.bytes_received += size
        if isinstance(message, UpdateQuery):
            with self._lock:
                ack = self._reassembler.ack(device, message.update_id)
            self._reply(device, ack)
        else:
            self._on_chunk(device, message)

    def _on_chunk(self, device: str, received: Received) -> None:
        chunk = received.chunk
        with self._lock:
            self.counters.chunks += 1
            if unexpected := self.federation.unexpected(device, chunk.round):
                self.counters.chunks_dropped += 1  # never held: no device fills the bound
                last = chunk.index == chunk.count - 1  # an update's last chunk hears why
                ack = self._rejected(chunk.update_id, unexpected) if last else None
            else:
                ack = self._reassemble(device, received)
            woken = self._reassembler.woken()  # waiting for room that an update gave back
        if ack is not None:
            self._reply(device, ack)
        for waiting, again in woken:
            self._reply(waiting, again)

    def _reassemble(self, device: str, received: Received) -> UpdateAck | None:
        """The verdict on the update once whole, the next chunks to send, or None."""
        chunk = received.chunk
        try:
            whole = self._reassembler.add(device, received)
        except ProtocolError as exc:
            ack = self._rejected(chunk.update_id, f"malformed: {exc}")
            self.federation.refuse(device, chunk.round, ack.reason)
            return ack
        if whole is not None:
            return self._judge(whole)
        if self._reassembler.waits(device, chunk.update_id):  # not the device's answer
            self.counters.chunks_no_room += 1
            held, bound = self._reassembler.pending_bytes(), self._reassembler.max_pending_bytes
            self._rejections(
                "no room",
                f"federation {self.federation.model}: reassembly is full ({held} of {bound} "
                f"bytes held): update {chunk.update_id} of {device} waits for room",
            )
            return None
        return self._reassembler.next_ack(device, chunk.update_id)

    def _judge(self, whole: Assembled) -> UpdateAck:
        head = whole.header
        if head.model != self.federation.model:
            return self._rejected(head.update_id, f"model {head.model} is not federated here")
        try:
            params = decode_params(whole.data)
        except ProtocolError as exc:
            ack = self._rejected(head.update_id, f"malformed: {exc}")
            self.federation.refuse(whole.device, head.round, ack.reason)
            return ack
        verdict = self.federation.receive(
            whole.device, head.round, head.base_version, params, head.num_samples
        )
        if not verdict.accepted:
            return self._rejected(head.update_id, verdict.reason)
        self.counters.updates_accepted += 1
        return UpdateAck(update_id=head.update_id, state="accepted")

    def _rejected(self, update_id: str, reason: str) -> UpdateAck:
        self.counters.updates_rejected += 1
        self._rejections("rejected", f"federation: update {update_id} rejected: {reason}")
        return UpdateAck(update_id=update_id, state="rejected", reason=reason[:500])

    def _reply(self, device: str, ack: UpdateAck) -> None:
        self.mqtt.publish(self.topics.ack(device), encode(ack))

    def forget_all_but(self, devices: set[str]) -> None:
        """Drop the adoption reports of devices not in ``devices`` (gone for good)."""
        with self._lock:
            for device in set(self.adoptions) - devices:
                del self.adoptions[device]

    def on_adoption(self, device: str, report: AdoptionReport) -> None:
        with self._lock:
            self.adoptions[device] = report.model_dump(exclude={"type"})
        if not report.adopted:
            why = f"federation: {device} refused v{report.version}: {report.reason}"
            self._rejections("refused", why)
