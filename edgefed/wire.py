"""The wire contract of the offload path: topics, messages and their binary framing.

edged and serverd both import this module; nothing else declares topics or messages.

Topics (``prefix`` defaults to ``edgefed``; ``<node>/user/edgefed`` also works, so that
KubeEdge's EventBus forwards the traffic to the cloud through its ``+/user/#`` rule)::

    {prefix}/offload/request/{device}      edge -> server  OffloadRequest + frame/tensor
    {prefix}/offload/reply/{device}        server -> edge  OffloadAccepted | OffloadResult
                                                           | OffloadErrorMessage
    {prefix}/availability/device/{device}  retained         Availability (Last Will: offline)
    {prefix}/availability/server/{server}  retained         Availability (Last Will: offline)

The device id comes last because it may hold a slash (``<namespace>/<name>`` since
KubeEdge 1.16); a ``#`` filter then matches both id forms. Results and errors share one
reply topic so that MQTT keeps them in order for a job.

Every message is one binary frame, never JSON-base64 and never pickle::

    b"EF" | version (1 byte) | header length (4 bytes, big-endian) | JSON header | body

The JSON header is one of the pydantic models below (discriminated on ``type``); the
body is raw JPEG bytes or an ``.npy`` tensor (``allow_pickle=False``) for a request and
empty for every other message. Decoding a malformed, oversized or unknown-version
frame raises ``ProtocolError`` with a one-line reason.
"""

from __future__ import annotations

import io
import json
import re
import struct
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from edgefed.errors import ProtocolError

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "edgefed"
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_METADATA_BYTES = 4096
MAX_JPEG_PIXELS = 36_000_000  # an 8K frame (7680x4320, 33 Mpx) fits
MAX_EPOCH_MS = 2**53  # what a JSON number holds exactly; SQLite's integers hold it too
_SOF_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)}) | {
    0xCD,
    0xCE,
    0xCF,
}

MAGIC = b"EF"
_PREFIX = struct.Struct(">2sBI")

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,62})?$"
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{7,63}$"
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

PayloadKind = Literal["jpeg", "tensor"]
# ``shed``: the server dropped the job unrun under overload; the edge closes it Expired and
# its local result stands (never retried: retrying would add to the overload).
ErrorCode = Literal["unknown_model", "bad_request", "overloaded", "unavailable", "internal", "shed"]
MetadataValue = str | int | float | bool | None


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalSummary(_Message):
    """What the edge's own model found, compact enough for the policy and the wire."""

    box_scores: list[float] = Field(
        default_factory=list, max_length=1000, description="Score of every local detection"
    )
    class_probs: list[float] = Field(
        default_factory=list,
        max_length=10000,
        description="Class probabilities of a local classification (empty for detectors)",
    )


class OffloadRequest(_Message):
    """Header of a request: one frame or tensor for the server to run ``model`` on."""

    type: Literal["request"] = Field(default="request", description="Message discriminator")
    job_id: str = Field(pattern=JOB_ID_PATTERN, description="Idempotent job id (uuid/ulid)")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="Device that asks")
    model: str = Field(pattern=MODEL_PATTERN, description="Model the server should run")
    priority: int = Field(default=0, ge=0, le=255, description="Higher is served first")
    deadline: int = Field(
        gt=0, le=MAX_EPOCH_MS, description="Epoch ms after which the answer is useless"
    )
    created: int = Field(
        gt=0, le=MAX_EPOCH_MS, description="Epoch ms when the job was made on the edge"
    )
    payload_kind: PayloadKind = Field(description="Body: raw JPEG bytes or an .npy tensor")
    attempt: int = Field(
        default=0, ge=0, description="Delivery attempt (0 first); the server dedupes"
    )
    metadata: dict[str, MetadataValue] = Field(
        default_factory=dict, description="Small free-form context (camera, frame, region)"
    )
    local: LocalSummary | None = Field(default=None, description="The edge's own result, if any")

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
        if len(json.dumps(value)) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes of JSON")
        return value


class OffloadAccepted(_Message):
    """Optional: the server has the job (deduplicated and queued); sent once per attempt."""

    type: Literal["accepted"] = Field(default="accepted", description="Message discriminator")
    job_id: str = Field(pattern=JOB_ID_PATTERN, description="Job the server holds")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="Device that asked")
    served_by: str = Field(description="Server that holds the job")
    queued: int = Field(default=0, ge=0, description="Jobs ahead of it on the server")


class OffloadResult(_Message):
    """The server's answer to one request."""

    type: Literal["result"] = Field(default="result", description="Message discriminator")
    job_id: str = Field(pattern=JOB_ID_PATTERN, description="Job this answers")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="Device that asked")
    model: str = Field(pattern=MODEL_PATTERN, description="Model that ran")
    results: list[dict[str, Any]] = Field(description="Decoded results, JSON objects")
    timings_ms: dict[str, float] = Field(
        default_factory=dict, description="Server-side timings, e.g. queue, infer, total"
    )
    served_by: str = Field(description="Server and instance that ran the job")
    completed: int = Field(gt=0, description="Epoch ms when the server finished")


class OffloadErrorMessage(_Message):
    """The server could not run a request (named so as not to shadow ``errors.OffloadError``)."""

    type: Literal["error"] = Field(default="error", description="Message discriminator")
    job_id: str = Field(pattern=JOB_ID_PATTERN, description="Job that failed")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN, description="Device that asked")
    code: ErrorCode = Field(description="Machine-readable cause")
    reason: str = Field(max_length=1000, description="One-line human-readable cause")
    retryable: bool = Field(description="True if sending the job again may succeed")
    at: int | None = Field(
        default=None,
        gt=0,
        le=MAX_EPOCH_MS,
        description="Epoch ms on the server's clock when it answered (edges learn its clock)",
    )


class Availability(_Message):
    """Retained presence of a device or server; the Last Will says offline."""

    type: Literal["availability"] = Field(
        default="availability", description="Message discriminator"
    )
    role: Literal["device", "server"] = Field(description="Who this is")
    id: str = Field(pattern=DEVICE_ID_PATTERN, description="Device or server id")
    state: Literal["online", "offline"] = Field(description="Presence")
    since: int = Field(gt=0, description="Epoch ms when the state began (or the client started)")
    models: list[str] = Field(default_factory=list, description="Models served (servers)")


Header = Annotated[
    OffloadRequest | OffloadAccepted | OffloadResult | OffloadErrorMessage | Availability,
    Field(discriminator="type"),
]
_HEADER = TypeAdapter(Header)


@dataclass(frozen=True)
class RequestMessage:
    """A decoded request: header, raw body and (for tensors) the decoded array."""

    request: OffloadRequest
    body: bytes
    array: np.ndarray | None = None


Reply = OffloadAccepted | OffloadResult | OffloadErrorMessage


def new_job_id() -> str:
    """A fresh job id (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def encode_payload(kind: PayloadKind, payload: bytes | np.ndarray) -> bytes:
    """The wire body for a payload: JPEG bytes as they are, an array as ``.npy``."""
    if kind == "jpeg":
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise ProtocolError("a jpeg payload must be bytes")
        body = bytes(payload)
        _check_jpeg(body)
        return body
    if not isinstance(payload, np.ndarray):
        raise ProtocolError("a tensor payload must be a numpy array")
    if payload.dtype.hasobject:
        raise ProtocolError("a tensor payload cannot hold Python objects")
    out = io.BytesIO()
    np.save(out, payload, allow_pickle=False)
    return out.getvalue()


def decode_tensor(body: bytes) -> np.ndarray:
    """An ``.npy`` body back to an array; never unpickles."""
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, EOFError, OSError for bad bytes
        raise ProtocolError(f"tensor body is not a valid .npy array: {one_line(exc)}") from exc
    if not isinstance(array, np.ndarray):
        raise ProtocolError("tensor body is not a single .npy array")
    return array


def encode_request(request: OffloadRequest, body: bytes) -> bytes:
    """Frame a request with its wire body (see ``encode_payload``)."""
    return frame(request, body)


def encode_message(message: Reply | Availability) -> bytes:
    """Frame a reply or an availability message (no body)."""
    return frame(message, b"")


def decode(
    data: bytes, max_bytes: int = DEFAULT_MAX_BYTES
) -> RequestMessage | Reply | Availability:
    """Any frame back to its message; ``ProtocolError`` says why one is refused."""
    header, body = unframe(data, max_bytes, _HEADER)
    if isinstance(header, OffloadRequest):
        if header.payload_kind == "jpeg":
            _check_jpeg(body)
            return RequestMessage(header, body)
        return RequestMessage(header, body, decode_tensor(body))
    if body:
        raise ProtocolError(f"a {header.type} message carries no body, got {len(body)} bytes")
    return header


def decode_request(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> RequestMessage:
    message = decode(data, max_bytes)
    if not isinstance(message, RequestMessage):
        raise ProtocolError(f"expected a request, got {_kind(message)}")
    return message


def decode_reply(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Reply:
    message = decode(data, max_bytes)
    if not isinstance(message, OffloadAccepted | OffloadResult | OffloadErrorMessage):
        raise ProtocolError(f"expected a reply, got {_kind(message)}")
    return message


def decode_availability(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Availability:
    message = decode(data, max_bytes)
    if not isinstance(message, Availability):
        raise ProtocolError(f"expected an availability message, got {_kind(message)}")
    return message


TopicKind = Literal["request", "reply", "device_availability", "server_availability"]
_TAILS: dict[TopicKind, tuple[str, ...]] = {
    "request": ("offload", "request"),
    "reply": ("offload", "reply"),
    "device_availability": ("availability", "device"),
    "server_availability": ("availability", "server"),
}


@dataclass(frozen=True)
class TopicMatch:
    """A parsed topic: the concrete prefix it came under, its kind and the device/server id."""

    prefix: str
    kind: TopicKind
    id: str


class Topics:
    """Topic names under one prefix; a ``+`` segment in the prefix is allowed for filters."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        segments = prefix.split("/")
        if any(s == "" or "#" in s or (("+" in s) and s != "+") for s in segments):
            raise ProtocolError(f"invalid topic prefix {prefix!r}")
        self.prefix = prefix
        self._segments = segments

    def request(self, device: str) -> str:
        return self._topic("request", device)

    def reply(self, device: str) -> str:
        return self._topic("reply", device)

    def device_availability(self, device: str) -> str:
        return self._topic("device_availability", device)

    def server_availability(self, server: str) -> str:
        return self._topic("server_availability", server)

    def requests_filter(self) -> str:
        """What serverd subscribes to: every device's requests."""
        return self._filter("request")

    def device_availability_filter(self) -> str:
        return self._filter("device_availability")

    def server_availability_filter(self) -> str:
        return self._filter("server_availability")

    def parse(self, topic: str) -> TopicMatch | None:
        """Which of our topics this is (None for a foreign topic)."""
        parts = topic.split("/")
        n = len(self._segments)
        if len(parts) < n + 3:
            return None
        head = parts[:n]
        if any(p != "+" and p != h for p, h in zip(self._segments, head, strict=True)):
            return None
        tail = (parts[n], parts[n + 1])
        ident = "/".join(parts[n + 2 :])
        for kind, expected in _TAILS.items():
            if tail == expected:
                if not _valid_id(kind, ident):
                    return None
                return TopicMatch("/".join(head), kind, ident)
        return None

    def _topic(self, kind: TopicKind, ident: str) -> str:
        if "+" in self._segments:
            raise ProtocolError(f"prefix {self.prefix!r} has a wildcard: it names filters only")
        if not _valid_id(kind, ident):
            raise ProtocolError(f"invalid id {ident!r} for a {kind} topic")
        return "/".join((self.prefix, *_TAILS[kind], ident))

    def _filter(self, kind: TopicKind) -> str:
        return "/".join((self.prefix, *_TAILS[kind], "#"))


def _valid_id(kind: TopicKind, ident: str) -> bool:
    pattern = ID_PATTERN if kind == "server_availability" else DEVICE_ID_PATTERN
    return re.fullmatch(pattern, ident) is not None


def frame(message: BaseModel, body: bytes) -> bytes:
    """One binary frame (see the module docstring); other message families (the
    federation's, ``edgefed.federation_wire``) use the same framing."""
    header = message.model_dump_json().encode()
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {len(header)} bytes, limit {MAX_HEADER_BYTES}")
    return b"".join((_PREFIX.pack(MAGIC, PROTOCOL_VERSION, len(header)), header, body))


def unframe(data: bytes, max_bytes: int, headers: TypeAdapter[Any]) -> tuple[Any, bytes]:
    """A frame's header, validated by ``headers``, and its body; ``ProtocolError`` says why
    a frame is refused."""
    if len(data) > max_bytes:
        raise ProtocolError(f"message is {len(data)} bytes, limit {max_bytes}")
    if len(data) < _PREFIX.size:
        raise ProtocolError(f"message is {len(data)} bytes, shorter than the frame prefix")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"not an EdgeFed frame (magic {bytes(magic)!r})")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unknown protocol version {version} (this side speaks {PROTOCOL_VERSION})"
        )
    end = _PREFIX.size + header_len
    if header_len > MAX_HEADER_BYTES or end > len(data):
        raise ProtocolError(f"header length {header_len} does not fit a {len(data)}-byte message")
    try:
        header = headers.validate_json(data[_PREFIX.size : end])
    except ValidationError as exc:
        raise ProtocolError(f"invalid header: {summarise(exc)}") from exc
    return header, bytes(data[end:])


def jpeg_size(body: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header, read without decoding any pixel;
    ProtocolError if there is no SOI marker or no frame header before the scan."""
    if len(body) < 4 or body[:2] != b"\xff\xd8":
        raise ProtocolError("jpeg body does not start with a JPEG SOI marker")
    i = 2
    while i + 4 <= len(body):
        if body[i] != 0xFF:
            raise ProtocolError(f"jpeg body: no marker at byte {i}")
        marker = body[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = int.from_bytes(body[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            if length < 7 or i + 9 > len(body):
                break
            height = int.from_bytes(body[i + 5 : i + 7], "big")
            width = int.from_bytes(body[i + 7 : i + 9], "big")
            return width, height
        if marker == 0xDA or length < 2:  # the scan starts: no frame header came before it
            break
        i += 2 + length
    raise ProtocolError("jpeg body has no frame header (SOF) before its image data")


def check_jpeg_pixels(body: bytes) -> tuple[int, int]:
    """The (width, height) of a JPEG if it is not larger than ``MAX_JPEG_PIXELS``, read
    from its header before anything decodes it (a 16000x16000 JPEG of 4 MB takes ~770 MB
    to decode); ProtocolError otherwise. For whoever decodes a body: the wire itself
    checks only the SOI marker, as a body may be a model's own input (``echo``)."""
    width, height = jpeg_size(body)
    if width == 0 or height == 0 or width * height > MAX_JPEG_PIXELS:
        raise ProtocolError(
            f"jpeg of {width}x{height} pixels: at most {MAX_JPEG_PIXELS:,} pixels, none empty"
        )
    return width, height


def _check_jpeg(body: bytes) -> None:
    if len(body) < 4 or body[:2] != b"\xff\xd8":
        raise ProtocolError("jpeg body does not start with a JPEG SOI marker")


def summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "header"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _kind(message: RequestMessage | Reply | Availability) -> str:
    return "request" if isinstance(message, RequestMessage) else message.type
