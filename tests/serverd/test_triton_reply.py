"""What serverd takes from a backend's reply document (``parse_reply``): results and
stage timings; anything else is a ``ModelError`` with the reason, never a value that
breaks the edge's JSON or serverd's latency histogram."""

from __future__ import annotations

import json

import pytest

from edgefed.errors import ModelError
from serverd.triton.client import parse_reply


def test_results_and_timings_are_read() -> None:
    reply = parse_reply(
        json.dumps({"results": [{"type": "x"}], "timings_ms": {"infer": 3}}).encode()
    )
    assert reply.results == [{"type": "x"}] and reply.timings_ms == {"infer": 3.0}


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b'{"results": [], "timings_ms": {"infer": NaN}}', "not durations: infer"),
        (b'{"results": [], "timings_ms": {"total": -5, "decode": Infinity}}', "decode, total"),
        (b'{"results": {}}', "not a list of objects"),
        (b'{"timings_ms": {}}', "unreadable result"),
        (b'{"results": [], "timings_ms": {"infer": "fast"}}', "unreadable result"),
    ],
)
def test_a_reply_serverd_cannot_use_is_refused_with_the_reason(
    document: bytes, reason: str
) -> None:
    with pytest.raises(ModelError, match=reason):
        parse_reply(document)
