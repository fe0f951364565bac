"""The wire contract of federated learning: topics, messages, the parameter encoding and
the chunked, resumable upload of an update. Sans-io: bytes in, bytes and decisions out.

Topics (same ``prefix`` rules as ``edgefed.wire``; the id comes last)::

    {prefix}/federation/round/{model}      server -> edges  RoundOpen (retained)
    {prefix}/federation/update/{device}    edge -> server   UpdateChunk + chunk bytes
                                                            | UpdateQuery
    {prefix}/federation/ack/{device}       server -> edge   UpdateAck
    {prefix}/federation/model/{model}      server -> edges  GlobalModel + parameters (retained)
    {prefix}/federation/adoption/{device}  edge -> server   AdoptionReport
    {prefix}/federation/samples/{device}   edge -> server   SampleOffer (retained)

Every message is one ``edgefed.wire`` frame (``EF`` | version | JSON header | body).

An update's parameters are encoded as ``encode_params`` says: a 4-byte big-endian length,
a JSON list of ``{"dtype", "shape"}`` and the arrays' raw little-endian C-order bytes,
one after the other. Never pickle, never ``.npy`` object arrays; only the numeric dtypes
of ``DTYPES``. The encoded bytes are cut into chunks of ``max_chunk_bytes`` (at least
``MIN_CHUNK_BYTES``; the last one holds the rest); each chunk's header carries its
``index``, the ``count`` of chunks, the ``total_bytes`` and the ``sha256`` of the whole,
and a count no chunking of ``total_bytes`` can give is refused as the chunk is decoded.
The server's ``Reassembler`` (``edgefed.federation_upload``) keeps what it has per
device; after a disconnect the edge sends an ``UpdateQuery`` and the ``UpdateAck`` lists
chunks still ``missing`` (at most ``MAX_MISSING_LISTED``: once those are in, the server
lists the next ones), which the edge's ``Upload`` sends again. A whole whose
sha256 differs is refused and dropped. No raw sample ever appears in these messages:
only parameters, a sample count and training metrics. A global version is signed by
serverd (Ed25519 over ``signed_text``); an edge verifies the hash and the signature.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, TypeAdapter

from edgefed.errors import ProtocolError
from edgefed.wire import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PREFIX,
    DEVICE_ID_PATTERN,
    MODEL_PATTERN,
    frame,
    unframe,
)

DTYPES = ("float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64")
DEFAULT_CHUNK_BYTES = 256 * 1024
MIN_CHUNK_BYTES = 1024
MAX_UPDATE_BYTES = 64 * 1024 * 1024
# a GlobalModel frame: its header and a packed version image (edgefed.images.federated)
MAX_VERSION_FRAME_BYTES = 64 * 1024 * 1024 + 64 * 1024
MAX_TENSORS = 64
MAX_MISSING_LISTED = 4096
MAX_PARTICIPANTS = 10_000  # a RoundOpen's list (its 64 KiB header holds fewer long ids)
_LEN = struct.Struct(">I")
UPDATE_ID_PATTERN = r"^[0-9a-f]{32}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainConfig(_Message):
    """How each participant trains in a round."""

    epochs: int = Field(default=3, ge=1, le=1000, description="Passes over the local samples")
    learning_rate: float = Field(default=0.1, gt=0, le=100, description="Step size")
    batch_size: int = Field(default=32, ge=1, le=65536, description="Samples per step")


class RoundOpen(_Message):
    """A round opened by serverd: who trains, from which version, until when."""

    type: Literal["fed_round"] = Field(default="fed_round", description="Discriminator")
    model: str = Field(pattern=MODEL_PATTERN, description="Model the round trains")
    round: int = Field(ge=1, description="Round number of this model")
    base_version: int = Field(ge=0, description="Global version every update must start from")
    participants: list[str] = Field(max_length=MAX_PARTICIPANTS, description="Selected device ids")
    deadline_ms: int = Field(
        gt=0,
        description="When the round closes, on serverd's steady clock (epoch ms; informational)",
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training settings")
    max_chunk_bytes: int = Field(
        default=DEFAULT_CHUNK_BYTES,
        ge=MIN_CHUNK_BYTES,
        le=DEFAULT_MAX_BYTES // 2,
        description="Chunk bound",
    )


class UpdateChunk(_Message):
    """One chunk of an edge's update; the body holds the chunk's bytes."""

    type: Literal["fed_chunk"] = Field(default="fed_chunk", description="Discriminator")
    update_id: str = Field(pattern=UPDATE_ID_PATTERN, description="Id of the whole update")
    model: str = Field(pattern=MODEL_PATTERN, description="Model trained")
    round: int = Field(ge=1, description="Round answered")
    base_version: int = Field(ge=0, description="Version the edge trained from")
    num_samples: int = Field(ge=1, description="Samples the update was trained on")
    metrics: dict[str, FiniteFloat] = Field(
        default_factory=dict,
        max_length=16,
        description="Training metrics (loss, accuracy); finite numbers only (JSON has no NaN)",
    )
    index: int = Field(ge=0, description="Index of this chunk")
    count: int = Field(ge=1, description="Number of chunks of the whole")
    total_bytes: int = Field(ge=1, le=MAX_UPDATE_BYTES, description="Bytes of the whole")
    sha256: str = Field(pattern=SHA256_PATTERN, description="sha256 (hex) of the whole")


class UpdateQuery(_Message):
    """An edge asking, after a reconnect, which chunks of an update are still missing."""

    type: Literal["fed_query"] = Field(default="fed_query", description="Discriminator")
    update_id: str = Field(pattern=UPDATE_ID_PATTERN, description="Update asked about")


class UpdateAck(_Message):
    """serverd's answer about one update."""

    type: Literal["fed_ack"] = Field(default="fed_ack", description="Discriminator")
    update_id: str = Field(pattern=UPDATE_ID_PATTERN, description="Update answered")
    state: Literal["partial", "unknown", "accepted", "rejected"] = Field(
        description="partial: chunks missing; unknown: nothing held, send all; "
        "accepted/rejected: the round's verdict"
    )
    missing: list[int] = Field(
        default_factory=list, max_length=MAX_MISSING_LISTED, description="Chunks to send again"
    )
    reason: str = Field(default="", max_length=500, description="Why it was rejected")


class GlobalModel(_Message):
    """A new global version (retained per model); the body holds the version's signed
    model image, packed (``edgefed.images.federated.pack``). ``signature``: Ed25519 by
    serverd's key over ``signed_text``; the image carries its own signature too."""

    type: Literal["fed_model"] = Field(default="fed_model", description="Discriminator")
    model: str = Field(pattern=MODEL_PATTERN, description="Model")
    version: int = Field(ge=1, description="Global version")
    round: int = Field(ge=1, description="Round that made it")
    sha256: str = Field(pattern=SHA256_PATTERN, description="sha256 (hex) of the packed image")
    signature: str = Field(pattern=r"^[0-9a-f]{128}$", description="Ed25519 signature (hex)")


class AdoptionReport(_Message):
    """An edge telling serverd whether it adopted a global version, and why not."""

    type: Literal["fed_adoption"] = Field(default="fed_adoption", description="Discriminator")
    model: str = Field(pattern=MODEL_PATTERN, description="Model")
    version: int = Field(ge=1, description="Version judged")
    adopted: bool = Field(description="True if the edge now serves it")
    reason: str = Field(default="", max_length=500, description="Why it was refused")
    holdout_accuracy: FiniteFloat | None = Field(
        default=None, description="Accuracy of the version (finite: the status is JSON)"
    )
    current_accuracy: FiniteFloat | None = Field(
        default=None, description="Accuracy of the current (finite: the status is JSON)"
    )


def init_head(features: int, classes: int) -> list[np.ndarray]:
    """Version 1 of every federated head, the same on serverd and every edge: zeros
    (``W``: features x classes, ``b``: classes), every class equally likely."""
    return [np.zeros((features, classes), np.float32), np.zeros(classes, np.float32)]


def signed_text(model: str, version: int, sha256: str) -> bytes:
    """What a global version's signature covers: model, version and parameter hash, so a
    signed version cannot be replayed under another model or version."""
    return f"edgefed-fed-model\n{model}\n{version}\n{sha256}".encode()


class SampleOffer(_Message):
    """An edge advertising, per federated model, how many samples it could train on now
    (0 while training is forbidden on the device). Counts only: never a sample."""

    type: Literal["fed_samples"] = Field(default="fed_samples", description="Discriminator")
    samples: dict[str, int] = Field(
        max_length=64, description="Model -> trainable samples held (held-back slice excluded)"
    )
    training_allowed: bool = Field(description="False while the device twin forbids training")
    sent_ms: int = Field(ge=0, description="Epoch ms when the edge sent it")
    run: str = Field(
        "", max_length=64, description="A random id of the edged run that sent it ('': unknown)"
    )
    seq: int = Field(
        0,
        ge=0,
        le=2**53,
        description="Offers that run has sent, this one included: a copy a broker "
        "or bridge delivers again repeats a number serverd has seen",
    )


FedMessage = (
    RoundOpen | UpdateChunk | UpdateQuery | UpdateAck | GlobalModel | AdoptionReport | SampleOffer
)
FedHeader = Annotated[FedMessage, Field(discriminator="type")]
_FED_HEADER: TypeAdapter[Any] = TypeAdapter(FedHeader)


@dataclass(frozen=True)
class Received:
    """A decoded chunk: its header and bytes."""

    chunk: UpdateChunk
    body: bytes


_WITH_BODY = (UpdateChunk, GlobalModel)


def encode(message: FedMessage, body: bytes = b"") -> bytes:
    """Frame a federation message; only an ``UpdateChunk`` and a ``GlobalModel`` carry a
    body."""
    if body and not isinstance(message, _WITH_BODY):
        raise ProtocolError(f"a {message.type} message carries no body")
    return frame(message, body)


def decode(
    data: bytes, max_bytes: int = DEFAULT_MAX_BYTES
) -> Received | ReceivedModel | FedMessage:
    """A frame back to its message (a chunk or a model with its bytes); ``ProtocolError``
    says why not."""
    header, body = unframe(data, max_bytes, _FED_HEADER)
    if isinstance(header, GlobalModel):
        if sha256_hex(body) != header.sha256:
            raise ProtocolError(f"{header.model} v{header.version}: image fails its sha256")
        return ReceivedModel(header, body)
    if isinstance(header, UpdateChunk):
        _check_chunking(header, len(body))
        return Received(header, body)
    if body:
        raise ProtocolError(f"a {header.type} message carries no body, got {len(body)} bytes")
    message: FedMessage = header
    return message


def _check_chunking(chunk: UpdateChunk, body_bytes: int) -> None:
    """Refuse a chunk no chunking of its update can give (its holder would trust ``count``
    for as long as it keeps the update)."""
    if chunk.index >= chunk.count:
        raise ProtocolError(f"chunk index {chunk.index} >= count {chunk.count}")
    most = math.ceil(chunk.total_bytes / MIN_CHUNK_BYTES)
    if chunk.count > most:
        raise ProtocolError(
            f"{chunk.count} chunks for {chunk.total_bytes} bytes: chunks of at least "
            f"{MIN_CHUNK_BYTES} bytes make at most {most}"
        )
    if not 1 <= body_bytes <= chunk.total_bytes:
        raise ProtocolError(
            f"an update chunk carries 1 to {chunk.total_bytes} bytes, got {body_bytes}"
        )


@dataclass(frozen=True)
class ReceivedModel:
    """A decoded global version: header and parameter bytes (hash checked, signature not)."""

    model: GlobalModel
    body: bytes


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_params(params: list[np.ndarray]) -> bytes:
    """Arrays as a JSON list of dtype and shape, then their raw little-endian bytes."""
    if not params or len(params) > MAX_TENSORS:
        raise ProtocolError(f"an update holds 1 to {MAX_TENSORS} tensors, got {len(params)}")
    specs, blobs = [], []
    for array in params:
        if array.dtype.name not in DTYPES:
            raise ProtocolError(f"dtype {array.dtype} is not one of {DTYPES}")
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        specs.append({"dtype": array.dtype.name, "shape": list(array.shape)})
        blobs.append(little.tobytes())
    header = json.dumps(specs, separators=(",", ":")).encode()
    data = b"".join((_LEN.pack(len(header)), header, *blobs))
    if len(data) > MAX_UPDATE_BYTES:
        raise ProtocolError(f"update is {len(data)} bytes, limit {MAX_UPDATE_BYTES}")
    return data


def max_encoded_bytes(shapes: list[tuple[int, ...]]) -> int:
    """The most bytes ``encode_params`` gives for tensors of these ``shapes`` in any of
    the ``DTYPES`` (all float64, whose name is as long as any): a bound on an update of a
    model whose tensors have these shapes."""
    specs = [{"dtype": "float64", "shape": list(shape)} for shape in shapes]
    header = json.dumps(specs, separators=(",", ":")).encode()
    return _LEN.size + len(header) + sum(8 * math.prod(shape) for shape in shapes)


def decode_params(data: bytes) -> list[np.ndarray]:
    """``encode_params`` reversed; every size is computed in Python integers (no numpy
    overflow) and checked against the bytes present; anything wrong is a
    ``ProtocolError`` saying what."""
    if len(data) < _LEN.size:
        raise ProtocolError("parameters are shorter than their length prefix")
    (header_len,) = _LEN.unpack_from(data)
    end = _LEN.size + header_len
    if end > len(data):
        raise ProtocolError(f"parameter header of {header_len} bytes does not fit")
    try:
        specs = json.loads(data[_LEN.size : end])
    except ValueError as exc:  # also not UTF-8, and an integer of over 4300 digits
        raise ProtocolError(f"parameter header is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("parameter header is not JSON: nested too deep") from None
    if not isinstance(specs, list) or not 1 <= len(specs) <= MAX_TENSORS:
        raise ProtocolError(f"parameter header must list 1 to {MAX_TENSORS} tensors")
    out, offset = [], end
    for spec in specs:
        dtype, shape = _spec(spec)
        count = math.prod(shape)
        size = count * np.dtype(dtype).itemsize
        if offset + size > len(data):
            raise ProtocolError(
                f"tensor {list(shape)} {dtype} of {size} bytes runs past the end of the "
                f"{len(data)} bytes of parameters"
            )
        raw = np.frombuffer(
            data, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=offset
        )
        out.append(raw.astype(dtype).reshape(shape))
        offset += size
    if offset != len(data):
        raise ProtocolError(f"{len(data) - offset} stray bytes after the last tensor")
    return out


def _spec(spec: object) -> tuple[str, tuple[int, ...]]:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"}:
        raise ProtocolError("each tensor is described by exactly dtype and shape")
    dtype, shape = spec["dtype"], spec["shape"]
    if dtype not in DTYPES:
        raise ProtocolError(f"dtype {dtype!r} is not one of {DTYPES}")
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError(f"invalid shape {shape!r}: at most 8 dimensions, each an integer >= 0")
    # bounded with its zeros taken as ones: numpy sizes an array by its other dimensions
    # too, and [0, 2**26, 2**26, 2**26, 2**26] holds no bytes but is past what numpy can shape
    if math.prod(max(d, 1) for d in shape) > MAX_UPDATE_BYTES:
        raise ProtocolError(
            f"shape {shape!r} spans more than {MAX_UPDATE_BYTES} elements (zeros counted as 1)"
        )
    return dtype, tuple(shape)


TopicKind = Literal["round", "update", "ack", "model", "adoption", "samples"]


class FederationTopics:
    """Topic names of the federation under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if any(s in ("", "+") or "#" in s or "+" in s for s in prefix.split("/")):
            raise ProtocolError(f"invalid topic prefix {prefix!r}")
        self.prefix = prefix

    def round(self, model: str) -> str:
        return self._topic("round", model, MODEL_PATTERN)

    def update(self, device: str) -> str:
        return self._topic("update", device, DEVICE_ID_PATTERN)

    def ack(self, device: str) -> str:
        return self._topic("ack", device, DEVICE_ID_PATTERN)

    def model(self, model: str) -> str:
        return self._topic("model", model, MODEL_PATTERN)

    def adoption(self, device: str) -> str:
        return self._topic("adoption", device, DEVICE_ID_PATTERN)

    def samples(self, device: str) -> str:
        return self._topic("samples", device, DEVICE_ID_PATTERN)

    def filter(self, kind: TopicKind) -> str:
        return f"{self.prefix}/federation/{kind}/#"

    def device_of(self, kind: TopicKind, topic: str) -> str | None:
        """The id at the end of one of our ``kind`` topics (None for any other topic)."""
        head = f"{self.prefix}/federation/{kind}/"
        if not topic.startswith(head):
            return None
        ident = topic[len(head) :]
        pattern = MODEL_PATTERN if kind in ("round", "model") else DEVICE_ID_PATTERN
        return ident if re.fullmatch(pattern, ident) else None

    def _topic(self, kind: TopicKind, ident: str, pattern: str) -> str:
        if re.fullmatch(pattern, ident) is None:
            raise ProtocolError(f"invalid id {ident!r} for a federation {kind} topic")
        return f"{self.prefix}/federation/{kind}/{ident}"
