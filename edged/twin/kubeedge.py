"""Sans-io codec for KubeEdge device twin messages (EdgeCore DeviceTwin over MQTT).

Pure functions: parse what EdgeCore publishes (``twin/update/delta``,
``twin/get/result``, ``twin/update/result``, ``twin/update/document``, or an
error result) and build what a device publishes (``twin/update`` with actual
values, ``twin/get``). Nothing here touches the network or the clock; callers
pass ``now_ms`` and ``event_id``.

Wire facts (KubeEdge ``edge/pkg/devicetwin``): every message carries ``event_id``
and ``timestamp`` (ms); values are strings; a twin key must match
``[a-zA-Z0-9-_.,:/@#]{1,128}`` and a non-empty value ``[a-zA-Z0-9-_.,:/@#]{1,512}``
(EdgeCore answers 400 for the whole update otherwise); errors are
``{"event_id", "timestamp", "code", "reason"}``. The device id in the topic is
``<namespace>/<name>`` since KubeEdge 1.16.2 / 1.17 and a single segment before.

Inbound models ignore unknown fields on purpose (tolerant reader): Go's decoder in
EdgeCore ignores them too and newer releases add fields. Outbound messages are
built from dicts we control.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefed.errors import ConfigError, ProtocolError
from edgefed.wirejson import json_object

DEVICE_PREFIX = "$hw/events/device/"
MAX_PAYLOAD = 256 * 1024
"""Inbound twin payloads above this size are dropped as malformed."""

KEY_RE = re.compile(r"^[a-zA-Z0-9\-_.,:/@#]{1,128}\Z")
VALUE_RE = re.compile(r"^[a-zA-Z0-9\-_.,:/@#]{1,512}\Z")
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
DEVICE_ID_RE = re.compile(rf"^{_SEGMENT}(/{_SEGMENT})?\Z")

_M = TypeVar("_M", bound=BaseModel)

ERROR_CODES = {400: "bad request", 404: "not found", 409: "conflict", 500: "internal error"}


@dataclass(frozen=True)
class TwinTopics:
    """The MQTT topics of one device's twin (``$hw/events/device/{id}/...``)."""

    device_id: str
    update: str
    update_result: str
    delta: str
    document: str
    get: str
    get_result: str


def twin_topics(device_id: str) -> TwinTopics:
    """Topics for ``<name>`` or ``<namespace>/<name>``; ConfigError for any other id."""
    if not DEVICE_ID_RE.match(device_id):
        raise ConfigError(
            f"device id {device_id!r} must be <name> or <namespace>/<name> "
            "(letters, digits, '_', '.', '-'; up to 63 characters each)"
        )
    base = f"{DEVICE_PREFIX}{device_id}/twin"
    return TwinTopics(
        device_id=device_id,
        update=f"{base}/update",
        update_result=f"{base}/update/result",
        delta=f"{base}/update/delta",
        document=f"{base}/update/document",
        get=f"{base}/get",
        get_result=f"{base}/get/result",
    )


def split_device_id(device_id: str) -> tuple[str | None, str]:
    """``("ns", "name")`` for ``ns/name``, ``(None, "name")`` for a single segment."""
    namespace, _, name = device_id.rpartition("/")
    return (namespace or None), name


# -- inbound models -------------------------------------------------------------------------
class _Inbound(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ValueMetadata(_Inbound):
    timestamp: int | None = Field(
        default=None, description="When the value was set (ms since epoch)"
    )


class TwinValue(_Inbound):
    value: str | None = Field(default=None, description="The value, always a string on the wire")
    metadata: ValueMetadata | None = Field(default=None, description="Timestamp of the value")


class TypeMetadata(_Inbound):
    type: str | None = Field(
        default=None, description="Value type: int, float, string, boolean, ..."
    )


class TwinVersion(_Inbound):
    cloud: int = Field(default=0, description="Version counter of cloud-side changes")
    edge: int = Field(default=0, description="Version counter of edge-side changes")


class MsgTwin(_Inbound):
    """One twin property as EdgeCore sends it."""

    expected: TwinValue | None = Field(default=None, description="Desired value (set in the cloud)")
    actual: TwinValue | None = Field(default=None, description="Reported value (set by the device)")
    optional: bool | None = Field(default=None, description="Whether the property may be deleted")
    metadata: TypeMetadata | None = Field(default=None, description="Type of the value")
    expected_version: TwinVersion | None = Field(default=None, description="Versions of expected")
    actual_version: TwinVersion | None = Field(default=None, description="Versions of actual")


class TwinDoc(_Inbound):
    last: MsgTwin | None = Field(default=None, description="State before the change")
    current: MsgTwin | None = Field(default=None, description="State after the change")


class BaseMessage(_Inbound):
    event_id: str = Field(default="", description="Id of the event (echoed in results)")
    timestamp: int = Field(default=0, description="When the message was built (ms since epoch)")


class TwinMessage(BaseMessage):
    """``twin/update``, ``twin/get/result`` and a successful ``twin/update/result``."""

    twin: dict[str, MsgTwin | None] = Field(description="Twin properties by name")


class DeltaMessage(TwinMessage):
    """``twin/update/delta``: sent when an expected value differs from the actual one."""

    delta: dict[str, str] = Field(
        default_factory=dict, description="Expected value of each property that differs"
    )


class DocumentMessage(BaseMessage):
    """``twin/update/document``: last and current state of each changed property."""

    twin: dict[str, TwinDoc | None] = Field(description="Changed properties by name")


class ErrorResult(BaseMessage):
    """EdgeCore's answer when it rejects a request (code 400, 404, 409 or 500)."""

    code: int = Field(description="HTTP-like status code")
    reason: str = Field(default="", description="Why EdgeCore rejected the request")

    def describe(self) -> str:
        kind = ERROR_CODES.get(self.code, "error")
        return f"{self.code} {kind}: {self.reason or 'no reason given'}"


# -- parsing ----------------------------------------------------------------------------------
def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"twin message of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return json_object(payload, "twin message")


def _validate(model: type[_M], data: dict[str, Any], what: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ProtocolError(f"malformed {what}: {problems}") from None


def _error_or_none(data: dict[str, Any]) -> ErrorResult | None:
    if "code" in data and "twin" not in data:
        return _validate(ErrorResult, data, "error result")
    return None


def parse_delta(payload: bytes) -> DeltaMessage:
    """A ``twin/update/delta`` message; ProtocolError if malformed."""
    data = _load(payload)
    if "delta" not in data:
        raise ProtocolError("malformed twin delta: no 'delta' object")
    data.setdefault("twin", {})
    return _validate(DeltaMessage, data, "twin delta")


def parse_twin_result(payload: bytes) -> TwinMessage | ErrorResult:
    """``twin/get/result`` or ``twin/update/result``: the twin, or EdgeCore's error."""
    data = _load(payload)
    error = _error_or_none(data)
    if error is not None:
        return error
    if "twin" not in data:
        raise ProtocolError("malformed twin result: neither 'twin' nor 'code'")
    return _validate(TwinMessage, data, "twin result")


def parse_update(payload: bytes) -> TwinMessage:
    """A ``twin/update`` message (what a device reports)."""
    data = _load(payload)
    if "twin" not in data:
        raise ProtocolError("malformed twin update: no 'twin' object")
    return _validate(TwinMessage, data, "twin update")


def parse_document(payload: bytes) -> DocumentMessage:
    """A ``twin/update/document`` message."""
    data = _load(payload)
    if "twin" not in data:
        raise ProtocolError("malformed twin document: no 'twin' object")
    return _validate(DocumentMessage, data, "twin document")


def expected_values(twin: Mapping[str, MsgTwin | None]) -> dict[str, str]:
    """The non-empty expected (desired) value of each property of a twin."""
    out: dict[str, str] = {}
    for name, prop in twin.items():
        if prop is not None and prop.expected is not None and prop.expected.value:
            out[name] = prop.expected.value
    return out


# -- building ---------------------------------------------------------------------------------
def check_key(key: str) -> None:
    """ProtocolError unless EdgeCore accepts ``key`` as a twin property name."""
    if not KEY_RE.match(key):
        raise ProtocolError(
            f"twin key {key[:40]!r} must be 1-128 characters of letters, digits and -_.,:/@#"
        )


def check_value(value: str) -> None:
    """ProtocolError unless EdgeCore accepts ``value`` (empty, or 1-512 allowed characters)."""
    if value and not VALUE_RE.match(value):
        raise ProtocolError(
            f"twin value {value[:40]!r} must be at most 512 characters of letters, digits "
            "and -_.,:/@#"
        )


def _dump(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def build_update(actual: Mapping[str, tuple[str, str]], *, event_id: str, now_ms: int) -> bytes:
    """``twin/update`` reporting actual values: ``{name: (kubeedge_type, value)}``.

    Only ``actual`` and the type metadata are sent, never ``expected`` (that belongs
    to the cloud), and never a null property (EdgeCore would delete it).
    """
    twin: dict[str, Any] = {}
    for name, (value_type, value) in actual.items():
        check_key(name)
        check_value(value)
        twin[name] = {
            "actual": {"value": value, "metadata": {"timestamp": now_ms}},
            "metadata": {"type": value_type},
        }
    return _dump({"event_id": event_id, "timestamp": now_ms, "twin": twin})


def build_get(*, event_id: str, now_ms: int) -> bytes:
    """``twin/get``: asks EdgeCore for the whole twin (answered on ``twin/get/result``)."""
    return _dump({"event_id": event_id, "timestamp": now_ms})
