"""The chunked, resumable upload of one update (see ``edgefed.federation_wire`` for the
protocol): ``Upload`` is the edge's side, ``Reassembler`` serverd's. Sans-io."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

from pydantic import ValidationError

from edgefed.errors import ProtocolError
from edgefed.federation_wire import (
    MAX_MISSING_LISTED,
    MAX_UPDATE_BYTES,
    MIN_CHUNK_BYTES,
    Received,
    UpdateAck,
    UpdateChunk,
    UpdateQuery,
    encode,
    sha256_hex,
)
from edgefed.wire import summarise

UPDATE_OVERHEAD_BYTES = 4096
"""What holding an update costs serverd besides its bytes (its first chunk's header, the
bookkeeping; measured at about 2.2 KiB), charged against the reassembly bound."""
CHUNK_OVERHEAD_BYTES = 64
"""And each chunk of it (a bytes object and its slot)."""
MAX_PENDING_BYTES = 4 * MAX_UPDATE_BYTES
"""What the updates held at once may be charged, by default."""


def split(data: bytes, max_chunk_bytes: int) -> list[bytes]:
    """``data`` cut into chunks of ``max_chunk_bytes`` (the last one holds the rest)."""
    if max_chunk_bytes < MIN_CHUNK_BYTES:
        raise ProtocolError(f"max_chunk_bytes must be at least {MIN_CHUNK_BYTES}")
    return [data[i : i + max_chunk_bytes] for i in range(0, len(data), max_chunk_bytes)]


@dataclass
class Upload:
    """The edge's side of one update: every chunk's message, and what to (re)send."""

    chunks: list[bytes]
    headers: list[UpdateChunk]
    done: bool = False
    verdict: UpdateAck | None = None

    @classmethod
    def of(
        cls,
        update_id: str,
        data: bytes,
        *,
        model: str,
        round: int,
        base_version: int,
        num_samples: int,
        metrics: dict[str, float],
        max_chunk_bytes: int,
    ) -> Upload:
        """The update ``data`` in chunks; a header the wire would refuse (a metric that is
        not finite, such as the NaN loss of a training that diverged: JSON has no NaN) is
        a ``ProtocolError`` saying which field and why."""
        chunks = split(data, max_chunk_bytes)
        digest = sha256_hex(data)
        try:
            first = UpdateChunk(
                update_id=update_id,
                model=model,
                round=round,
                base_version=base_version,
                num_samples=num_samples,
                metrics=metrics,
                index=0,
                count=len(chunks),
                total_bytes=len(data),
                sha256=digest,
            )
        except ValidationError as exc:
            raise ProtocolError(f"update cannot be sent: {summarise(exc)}") from exc
        # the chunks differ only in their index, which is in range: checked once
        headers = [first.model_copy(update={"index": i}) for i in range(len(chunks))]
        return cls(chunks, headers)

    @property
    def update_id(self) -> str:
        return self.headers[0].update_id

    def frames(self, indices: list[int] | None = None) -> list[bytes]:
        """The framed chunks at ``indices`` (all when None), ready to publish."""
        wanted = range(len(self.chunks)) if indices is None else indices
        return [
            encode(self.headers[i], self.chunks[i]) for i in wanted if 0 <= i < len(self.chunks)
        ]

    def query(self) -> bytes:
        return encode(UpdateQuery(update_id=self.update_id))

    def on_ack(self, ack: UpdateAck) -> list[bytes]:
        """What to send after ``ack``: the missing chunks, all of them, or nothing. The
        first verdict stands: an ack after it (the answer to a chunk delivered twice) is
        ignored."""
        if ack.update_id != self.update_id or self.done:
            return []
        if ack.state in ("accepted", "rejected"):
            self.done, self.verdict = True, ack
            return []
        return self.frames(None if ack.state == "unknown" else ack.missing)


@dataclass
class _Partial:
    first: UpdateChunk
    cost: int
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0
    # what the last ack asked for and has not come yet; None until then, and set() once the
    # update's last chunk is in (the edge sent them all, in order: the rest is asked for)
    listed: set[int] | None = None


@dataclass(frozen=True)
class Assembled:
    """A whole update put back together and checked against its sha256."""

    header: UpdateChunk
    device: str
    data: bytes


class Reassembler:
    """serverd's side: each device's update, chunk by chunk, until whole.

    A device holds one update at a time (a newer update id replaces the one it held: the
    device restarted and trained again). An update is charged its ``total_bytes`` plus
    ``UPDATE_OVERHEAD_BYTES`` and ``CHUNK_OVERHEAD_BYTES`` a chunk (what holding it costs
    besides the bytes) when its first chunk comes, against ``max_pending_bytes`` for all
    devices; ``max_update_bytes`` bounds one update and ``max_chunk_bytes``, when set, one
    chunk.

    ``add`` returns the ``Assembled`` update when its last chunk arrives; a chunk outside
    these bounds or contradicting the update's first chunk, or a whole whose sha256
    differs, raises ``ProtocolError`` and drops what the device held. A chunk of an update
    there is no room for is dropped (not the device's fault: many honest updates at once)
    and the device ``waits``; ``woken`` names the waiting devices there is room for
    again, each to be told ``unknown`` (send it all), so an edge that has no answer is
    never left to send its update over and over into a full reassembly. ``ack`` answers
    an ``UpdateQuery`` (listing at most ``MAX_MISSING_LISTED`` chunks) and ``next_ack``
    the edge's resend of those, or its update's last chunk, while chunks are still
    missing.
    """

    def __init__(
        self,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        max_update_bytes: int = MAX_UPDATE_BYTES,
        max_chunk_bytes: int | None = None,
    ) -> None:
        self.max_pending_bytes = max_pending_bytes
        self.max_update_bytes = max_update_bytes
        self.max_chunk_bytes = max_chunk_bytes
        self._pending: dict[str, _Partial] = {}  # by device
        self._bytes = 0
        # devices whose update found no room, in the order they came: update id and cost
        self._waiting: dict[str, tuple[str, int]] = {}
        self._freed = False  # room given back since ``woken`` last looked

    def pending_bytes(self) -> int:
        """What the held updates are charged (whole sizes and overhead)."""
        return self._bytes

    def pending_updates(self) -> int:
        return len(self._pending)

    def waiting(self) -> int:
        """Devices whose update waits for room."""
        return len(self._waiting)

    def holds(self, device: str, update_id: str) -> bool:
        partial = self._pending.get(device)
        return partial is not None and partial.first.update_id == update_id

    def waits(self, device: str, update_id: str) -> bool:
        """True while this update from ``device`` waits for room (its chunks are dropped)."""
        return self._waiting.get(device, ("", 0))[0] == update_id

    def add(self, device: str, received: Received) -> Assembled | None:
        chunk = received.chunk
        partial = self._pending.get(device)
        if partial is not None and partial.first.update_id != chunk.update_id:
            self._drop(device)  # a newer update replaces the one held
            partial = None
        try:
            if partial is None:
                partial = self._start(device, chunk)
                if partial is None:
                    return None  # no room: it waits
            elif chunk.model_dump(exclude={"index"}) != partial.first.model_dump(exclude={"index"}):
                raise ProtocolError(f"chunk {chunk.index} contradicts update {chunk.update_id}")
            if chunk.index in partial.parts:
                return None  # a redelivery
            self._check_size(partial, chunk, len(received.body))
        except ProtocolError:
            self._drop(device)
            raise
        partial.parts[chunk.index] = received.body
        partial.size += len(received.body)
        if partial.listed is not None:
            partial.listed.discard(chunk.index)
        elif chunk.index == chunk.count - 1:
            partial.listed = set()
        if len(partial.parts) < chunk.count:
            return None
        self._drop(device)
        data = b"".join(partial.parts[i] for i in range(chunk.count))
        if len(data) != chunk.total_bytes or sha256_hex(data) != chunk.sha256:
            raise ProtocolError(f"update {chunk.update_id} does not match its sha256")
        return Assembled(partial.first, device, data)

    def ack(self, device: str, update_id: str) -> UpdateAck:
        """What is still missing of an update (``unknown``: nothing held)."""
        partial = self._pending.get(device)
        if partial is None or partial.first.update_id != update_id:
            return UpdateAck(update_id=update_id, state="unknown")
        missing = list(islice(_missing(partial), MAX_MISSING_LISTED))
        partial.listed = set(missing)
        return UpdateAck(update_id=update_id, state="partial", missing=missing)

    def next_ack(self, device: str, update_id: str) -> UpdateAck | None:
        """The next chunks to ask for, once those the last ack listed (or, before any ack,
        the update's last chunk) are all in and the update is not yet whole (an edge sends
        what an ack lists and nothing more)."""
        partial = self._pending.get(device)
        if partial is None or partial.first.update_id != update_id or partial.listed != set():
            return None  # not asked, or not all in yet
        if next(_missing(partial), None) is None:
            return None
        return self.ack(device, update_id)

    def woken(self) -> list[tuple[str, UpdateAck]]:
        """The waiting devices the room given back holds, in the order they came (one
        whose update does not fit lets a later one that does go first), each with the
        ``unknown`` ack that makes its edge send the whole update again; they no longer
        wait. The room is not kept for them: an update that comes first takes it, and
        one it leaves no room for waits again."""
        if not self._freed:
            return []
        self._freed = False
        room = self.max_pending_bytes - self._bytes
        out = []
        for device, (update_id, cost) in list(self._waiting.items()):
            if cost <= room:
                room -= cost
                del self._waiting[device]
                out.append((device, UpdateAck(update_id=update_id, state="unknown")))
        return out

    def clear(self) -> None:
        """Drop every partial and waiting update (a round opens or closes)."""
        self._pending.clear()
        self._waiting.clear()
        self._bytes = 0
        self._freed = False

    def _start(self, device: str, chunk: UpdateChunk) -> _Partial | None:
        """Hold a new update; None, and the device waits, when there is no room for it."""
        if chunk.total_bytes > self.max_update_bytes:
            raise ProtocolError(
                f"update of {chunk.total_bytes} bytes; one of this model is at most "
                f"{self.max_update_bytes}"
            )
        cost = chunk.total_bytes + UPDATE_OVERHEAD_BYTES + chunk.count * CHUNK_OVERHEAD_BYTES
        if self._bytes + cost > self.max_pending_bytes:
            self._waiting[device] = (chunk.update_id, cost)
            return None
        self._waiting.pop(device, None)
        partial = self._pending[device] = _Partial(chunk, cost)
        self._bytes += cost
        return partial

    def _check_size(self, partial: _Partial, chunk: UpdateChunk, body_bytes: int) -> None:
        """The chunk fits what its update has left and, with ``max_chunk_bytes`` set, the
        chunking: no chunk larger, no fewer chunks than the bytes need."""
        if partial.size + body_bytes > chunk.total_bytes:
            raise ProtocolError(f"update {chunk.update_id} exceeds its {chunk.total_bytes} bytes")
        size = self.max_chunk_bytes
        if size is None:
            return
        need = math.ceil(chunk.total_bytes / size)
        if chunk.count < need:
            raise ProtocolError(
                f"{chunk.count} chunks for {chunk.total_bytes} bytes; "
                f"chunks of at most {size} need {need}"
            )
        if body_bytes > size:
            raise ProtocolError(f"chunk {chunk.index} holds {body_bytes} bytes, more than {size}")

    def _drop(self, device: str) -> None:
        self._waiting.pop(device, None)
        partial = self._pending.pop(device, None)
        if partial is not None:
            self._bytes -= partial.cost
            self._freed = True


def _missing(partial: _Partial) -> Iterator[int]:
    return (i for i in range(partial.first.count) if i not in partial.parts)
