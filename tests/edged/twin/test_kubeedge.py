"""The sans-io KubeEdge twin codec: topics, parsing, building, limits."""

from __future__ import annotations

import json

import pytest

from edged.twin.kubeedge import (
    ErrorResult,
    TwinMessage,
    build_get,
    build_update,
    check_key,
    check_value,
    expected_values,
    parse_delta,
    parse_document,
    parse_twin_result,
    parse_update,
    split_device_id,
    twin_topics,
)
from edgefed.errors import ConfigError, ProtocolError


def _json(data: object) -> bytes:
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("device_id", "base"),
    [
        ("edge-01", "$hw/events/device/edge-01/twin"),
        ("demo/edge-01", "$hw/events/device/demo/edge-01/twin"),
    ],
)
def test_topics_for_both_id_forms(device_id: str, base: str) -> None:
    t = twin_topics(device_id)
    assert t.update == f"{base}/update"
    assert t.update_result == f"{base}/update/result"
    assert t.delta == f"{base}/update/delta"
    assert t.document == f"{base}/update/document"
    assert t.get == f"{base}/get"
    assert t.get_result == f"{base}/get/result"


@pytest.mark.parametrize("bad", ["", "a/b/c", "edge/+", "edge/#", "/edge", "-edge", "x" * 64])
def test_bad_device_ids_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="device id"):
        twin_topics(bad)


def test_split_device_id() -> None:
    assert split_device_id("demo/edge-01") == ("demo", "edge-01")
    assert split_device_id("edge-01") == (None, "edge-01")


DELTA = {
    "event_id": "e1",
    "timestamp": 1700000000000,
    "twin": {
        "motion_threshold": {
            "expected": {"value": "40", "metadata": {"timestamp": 1700000000000}},
            "actual": {"value": "25", "metadata": {"timestamp": 1690000000000}},
            "optional": False,
            "metadata": {"type": "int"},
        }
    },
    "delta": {"motion_threshold": "40"},
}


def test_parse_delta() -> None:
    msg = parse_delta(_json(DELTA))
    assert msg.event_id == "e1"
    assert msg.timestamp == 1700000000000
    assert msg.delta == {"motion_threshold": "40"}
    twin = msg.twin["motion_threshold"]
    assert twin is not None and twin.metadata is not None
    assert twin.metadata.type == "int"
    assert twin.expected is not None and twin.expected.value == "40"


def test_parse_delta_ignores_unknown_fields_like_edgecore() -> None:
    msg = parse_delta(_json({**DELTA, "new_field": 1, "delta": {"a": "1"}}))
    assert msg.delta == {"a": "1"}


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"{}",
        _json({"event_id": "e", "timestamp": 1, "delta": {"a": 5}}),
        _json({"event_id": "e", "timestamp": "yesterday", "delta": {}}),
        b"{" + b" " * (300 * 1024) + b"}",
        b"[" * 100_000,  # deeper than the parser's recursion limit
        b'{"event_id": "e", "timestamp": ' + b"9" * 5000 + b', "delta": {}}',  # > 4300 digits
    ],
)
def test_malformed_delta_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_delta(payload)


def test_get_result_with_twin_and_expected_values() -> None:
    payload = _json(
        {
            "event_id": "g1",
            "timestamp": 1,
            "twin": {
                "motion_threshold": {"expected": {"value": "30"}, "metadata": {"type": "int"}},
                "target_fps": {"actual": {"value": "5.0"}, "metadata": {"type": "float"}},
                "log_level": {"expected": {"value": ""}},
                "deleted_one": None,
            },
        }
    )
    result = parse_twin_result(payload)
    assert isinstance(result, TwinMessage)
    assert expected_values(result.twin) == {"motion_threshold": "30"}


def test_error_results() -> None:
    payload = _json({"event_id": "g1", "timestamp": 1, "code": 404, "reason": "Device not found"})
    result = parse_twin_result(payload)
    assert isinstance(result, ErrorResult)
    assert result.describe() == "404 not found: Device not found"
    with pytest.raises(ProtocolError, match="neither"):
        parse_twin_result(_json({"event_id": "g1", "timestamp": 1}))


def test_parse_document() -> None:
    doc = parse_document(
        _json(
            {
                "event_id": "d",
                "timestamp": 2,
                "twin": {
                    "log_level": {
                        "last": {"actual": {"value": "INFO"}},
                        "current": {"actual": {"value": "DEBUG"}},
                    }
                },
            }
        )
    )
    entry = doc.twin["log_level"]
    assert entry is not None and entry.current is not None and entry.current.actual is not None
    assert entry.current.actual.value == "DEBUG"
    with pytest.raises(ProtocolError):
        parse_document(_json({"event_id": "d"}))


def test_build_update_is_kubeedge_format_and_round_trips() -> None:
    payload = build_update(
        {"motion_threshold": ("int", "40"), "enabled_models": ("string", "person,pose")},
        event_id="u1",
        now_ms=1700000000123,
    )
    data = json.loads(payload)
    assert data == {
        "event_id": "u1",
        "timestamp": 1700000000123,
        "twin": {
            "motion_threshold": {
                "actual": {"value": "40", "metadata": {"timestamp": 1700000000123}},
                "metadata": {"type": "int"},
            },
            "enabled_models": {
                "actual": {"value": "person,pose", "metadata": {"timestamp": 1700000000123}},
                "metadata": {"type": "string"},
            },
        },
    }
    parsed = parse_update(payload)
    twin = parsed.twin["motion_threshold"]
    assert twin is not None and twin.expected is None and twin.actual is not None


def test_build_get() -> None:
    assert json.loads(build_get(event_id="g", now_ms=5)) == {"event_id": "g", "timestamp": 5}


def test_key_and_value_limits() -> None:
    check_key("k" * 128)
    check_value("v" * 512)
    check_value("")
    for bad_key in ("", "k" * 129, "with space", "uni\u00e9", "key\n"):
        with pytest.raises(ProtocolError, match="twin key"):
            check_key(bad_key)
    for bad_value in ("v" * 513, "a b", "x;y", '"quoted"', "40\n"):
        with pytest.raises(ProtocolError, match="twin value"):
            check_value(bad_value)
    with pytest.raises(ProtocolError):
        build_update({"bad key": ("string", "x")}, event_id="u", now_ms=1)
