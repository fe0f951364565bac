"""The chunked, resumable upload of one update (see ``edgefed.federation_wire`` for the
protocol): ``Upload`` is the edge's side, ``Reassembler`` serverd's. Sans-io."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefed.errors import ProtocolError
from edgefed.federation_wire import (
    MAX_MISSING_LISTED,
    MAX_UPDATE_BYTES,
    Received,
    UpdateAck,
    UpdateChunk,
    UpdateQuery,
    encode,
    sha256_hex,
)


def split(data: bytes, max_chunk_bytes: int) -> list[bytes]:
    """``data`` cut into chunks of at most ``max_chunk_bytes``."""
    if max_chunk_bytes < 1:
        raise ProtocolError("max_chunk_bytes must be positive")
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
        chunks = split(data, max_chunk_bytes)
        digest = sha256_hex(data)
        headers = [
            UpdateChunk(
                update_id=update_id,
                model=model,
                round=round,
                base_version=base_version,
                num_samples=num_samples,
                metrics=metrics,
                index=i,
                count=len(chunks),
                total_bytes=len(data),
                sha256=digest,
            )
            for i in range(len(chunks))
        ]
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
        """What to send after ``ack``: the missing chunks, all of them, or nothing."""
        if ack.update_id != self.update_id:
            return []
        if ack.state in ("accepted", "rejected"):
            self.done, self.verdict = True, ack
            return []
        return self.frames(None if ack.state == "unknown" else ack.missing)


@dataclass
class _Partial:
    first: UpdateChunk
    parts: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


@dataclass(frozen=True)
class Assembled:
    """A whole update put back together and checked against its sha256."""

    header: UpdateChunk
    device: str
    data: bytes


class Reassembler:
    """serverd's side: chunks per (device, update id), bounded in bytes, until whole.

    ``add`` returns the ``Assembled`` update when its last chunk arrives; a chunk that
    contradicts the update's first chunk, or a whole whose sha256 differs, raises
    ``ProtocolError`` and drops what was held. ``ack`` answers an ``UpdateQuery``.
    """

    def __init__(self, max_pending_bytes: int = 4 * MAX_UPDATE_BYTES) -> None:
        self.max_pending_bytes = max_pending_bytes
        self._pending: dict[tuple[str, str], _Partial] = {}

    def pending_bytes(self) -> int:
        return sum(p.size for p in self._pending.values())

    def add(self, device: str, received: Received) -> Assembled | None:
        chunk, key = received.chunk, (device, received.chunk.update_id)
        partial = self._pending.get(key)
        if partial is not None and chunk.model_dump(exclude={"index"}) != partial.first.model_dump(
            exclude={"index"}
        ):
            del self._pending[key]
            raise ProtocolError(f"chunk {chunk.index} contradicts update {chunk.update_id}")
        if partial is not None and chunk.index in partial.parts:
            return None  # a redelivery
        if self.pending_bytes() + len(received.body) > self.max_pending_bytes:
            raise ProtocolError(f"reassembly holds {self.max_pending_bytes} bytes already")
        if partial is None:
            partial = self._pending[key] = _Partial(chunk)
        partial.parts[chunk.index] = received.body
        partial.size += len(received.body)
        if partial.size > chunk.total_bytes:
            del self._pending[key]
            raise ProtocolError(f"update {chunk.update_id} exceeds its {chunk.total_bytes} bytes")
        if len(partial.parts) < chunk.count:
            return None
        del self._pending[key]
        data = b"".join(partial.parts[i] for i in range(chunk.count))
        if len(data) != chunk.total_bytes or sha256_hex(data) != chunk.sha256:
            raise ProtocolError(f"update {chunk.update_id} does not match its sha256")
        return Assembled(partial.first, device, data)

    def ack(self, device: str, update_id: str) -> UpdateAck:
        """What is still missing of an update (``unknown``: nothing held)."""
        partial = self._pending.get((device, update_id))
        if partial is None:
            return UpdateAck(update_id=update_id, state="unknown")
        missing = [i for i in range(partial.first.count) if i not in partial.parts]
        return UpdateAck(update_id=update_id, state="partial", missing=missing[:MAX_MISSING_LISTED])

    def forget(self, keep_round: int) -> None:
        """Drop partial updates of rounds other than ``keep_round``."""
        for key in [k for k, p in self._pending.items() if p.first.round != keep_round]:
            del self._pending[key]
