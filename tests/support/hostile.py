"""Hypothesis strategies for hostile wire messages: random bytes, and frames with the
right magic and version around headers that are almost right (every message type, wrong
types, huge numbers, deep nesting, unknown keys, bad ids, bodies where none belong)."""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import strategies as st

from edgefed.wire import MAGIC, PROTOCOL_VERSION

TYPES = ["request", "accepted", "result", "error", "availability", "other", ""]
KEYS = [
    "type",
    "job_id",
    "device_id",
    "model",
    "priority",
    "deadline",
    "created",
    "payload_kind",
    "attempt",
    "metadata",
    "local",
    "results",
    "served_by",
    "completed",
    "code",
    "reason",
    "retryable",
    "queued",
    "timings_ms",
    "role",
    "id",
    "state",
    "since",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**400, -(10**400), 2**63, 0, -1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["cam-1", "site/cam-1", "evil", "0123456789abcdef", "person", "echo"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _deep(depth: int) -> Any:
    out: Any = 1
    for _ in range(depth):
        out = [out]
    return out


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    header: dict[str, Any] = {"type": draw(st.sampled_from(TYPES))}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=10, unique=True)):
        header[key] = draw(values)
    if draw(st.booleans()):
        header[draw(st.sampled_from(KEYS))] = _deep(draw(st.integers(1, 200)))
    text = json.dumps(header)
    if draw(st.integers(0, 9)) == 0:  # not JSON at all now and then
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode()


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    header = draw(headers())
    body = draw(st.one_of(st.just(b""), st.just(b"\xff\xd8\xff\xd9"), st.binary(max_size=64)))
    version = draw(st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2, 255]))
    length = draw(st.sampled_from([len(header), len(header), 0, 2**32 - 1, len(header) + 1]))
    return MAGIC + struct.pack(">BI", version, length) + header + body


hostile_payloads = st.one_of(st.binary(max_size=256), frames())
