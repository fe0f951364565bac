"""TwinService against a real mosquitto and an EdgeCore stand-in: applying and refusing.

Desired values published in KubeEdge's format must change what the daemon does (the
real three-frame gate on the same frames), be reported back on ``twin/update`` in
KubeEdge's format, and be refused with a reason when invalid, the old value staying.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from edgefed.testing.edgecore import MAX_DELTAS, wait_until
from tests.edged.twin.daemon import DEFAULTS, Daemon, Running, gated

EXPECTED_WIRE = {
    "motion_threshold": "25",
    "motion_min_pixels": "5",
    "enabled_models": "person,pose",
    "offload_policy": "hard_example",
    "log_level": "INFO",
}
both_id_forms = pytest.mark.parametrize(
    "device_id", ["edge-01", "demo/edge-01"], ids=["single-segment", "namespace-name"]
)


@both_id_forms
def test_start_reports_every_actual_value_and_asks_for_the_twin(
    setup: tuple[Running, Daemon],
) -> None:
    running, _ = setup
    ec = running.edgecore
    wait_until(lambda: ec.actual("log_level") == "INFO")
    assert ec.actual("motion_threshold") == "25"
    assert ec.actual("motion_min_pixels") == "5"
    assert ec.actual("enabled_models") == "person,pose"
    assert ec.actual("offload_policy") == "hard_example"
    assert ec.actual("target_fps") is None  # unbounded: nothing to report
    assert ec.update_errors == []
    first = ec.updates[0]
    assert isinstance(first["event_id"], str) and first["event_id"]
    assert isinstance(first["timestamp"], int) and first["timestamp"] > 1_600_000_000_000
    entry = first["twin"]["motion_threshold"]
    assert entry["metadata"] == {"type": "int"}
    assert entry["actual"]["value"] == "25"
    assert entry["actual"]["metadata"]["timestamp"] == first["timestamp"]
    assert "expected" not in entry


@both_id_forms
def test_delta_changes_what_is_gated_on_the_same_frames(
    setup: tuple[Running, Daemon], frames: list[np.ndarray]
) -> None:
    running, daemon = setup
    ec = running.edgecore
    before = gated(daemon.gate, frames)
    ec.set_desired("motion_threshold", "200", "int")
    wait_until(lambda: ec.actual("motion_threshold") == "200")
    after = gated(daemon.gate, frames)
    assert daemon.gate.config.threshold == 200
    assert after < before
    reported = ec.last_update_of("motion_threshold")
    assert reported is not None and reported["metadata"] == {"type": "int"}
    assert running.runtime.current().motion_threshold == 200
    assert json.loads(daemon.state.read_text())["motion_threshold"] == 200
    assert running.outcomes[-1].applied == {"motion_threshold": "200"}
    assert running.outcomes[-1].source == "delta"

    ec.set_desired("motion_min_pixels", "100000", "int")
    wait_until(lambda: ec.actual("motion_min_pixels") == "100000")
    ec.set_desired("motion_threshold", "25", "int")
    wait_until(lambda: ec.actual("motion_threshold") == "25")
    assert gated(daemon.gate, frames) < before  # same threshold, far more pixels needed


def test_typed_values_are_applied_and_echoed_verbatim(setup: tuple[Running, Daemon]) -> None:
    running, daemon = setup
    ec = running.edgecore
    ec.set_desired("target_fps", "2.50", "float")
    ec.set_desired("enabled_models", "face,person", "string")
    ec.set_desired("offload_policy", "always", "string")
    ec.set_desired("log_level", "DEBUG", "string")
    wait_until(lambda: ec.actual("log_level") == "DEBUG")
    wait_until(lambda: ec.actual("target_fps") == "2.50")
    assert ec.actual("enabled_models") == "face,person"
    assert ec.actual("offload_policy") == "always"
    assert daemon.applied == {
        "target_fps": 2.5,
        "enabled_models": ["face", "person"],
        "offload_policy": "always",
        "log_level": "DEBUG",
    }
    reported = ec.last_update_of("target_fps")
    assert reported is not None
    assert reported["actual"]["value"] == "2.50"
    assert reported["metadata"] == {"type": "float"}
    assert ec.update_errors == []
    deltas = ec.deltas_sent
    running.twin.stop()  # nothing more to converge: no delta is pending
    assert ec.deltas_sent == deltas


@pytest.mark.parametrize(
    ("name", "value", "value_type", "reason"),
    [
        ("motion_threshold", "0", "int", "out of range (must be at least 1)"),
        ("motion_threshold", "256", "int", "out of range (must be at most 255)"),
        ("motion_threshold", "abc", "int", "not an integer"),
        ("motion_threshold", "2.5", "int", "not an integer"),
        ("motion_min_pixels", "-1", "int", "must be at least 0"),
        ("target_fps", "fast", "float", "not a finite number"),
        ("target_fps", "0", "float", "must be at least 0.01"),
        # hostile values that main accepted: processing stopped / every twin report failed
        ("target_fps", "1e-300", "float", "must be at least 0.01"),
        ("target_fps", "3.2e306", "float", "must be at most 1000"),
        ("target_fps", "1e999", "float", "not a finite number"),
        ("motion_min_pixels", "9" * 400, "int", "a number of 400 characters is out of range"),
        ("motion_min_pixels", "9" * 20, "int", "must be at most 100000000"),
        ("enabled_models", ",".join(["person"] * 2000), "string", "at most 1024 items"),
        ("enabled_models", "person,yolo9", "string", "unknown or unloaded model(s) yolo9"),
        ("offload_policy", "sometimes", "string", "not one of never, hard_example"),
        ("log_level", "TRACE", "string", "not one of DEBUG"),
        ("colour", "red", "string", "unknown property 'colour'"),
        ("fps", "30", "float", "read-only"),
    ],
)
def test_invalid_values_are_rejected_with_a_reason_and_the_old_value_stays(
    setup: tuple[Running, Daemon],
    frames: list[np.ndarray],
    name: str,
    value: str,
    value_type: str,
    reason: str,
) -> None:
    running, daemon = setup
    ec = running.edgecore
    before = running.runtime.current()
    gated_before = gated(daemon.gate, frames)
    wait_until(lambda: ec.reports_of("log_level") >= 1)
    reports = ec.reports_of(name)
    ec.set_desired(name, value, value_type)
    outcome = wait_until(lambda: [o for o in running.outcomes if name in o.rejected])[0]
    assert outcome.rejected[name].value == value
    assert reason in outcome.rejected[name].reason
    assert outcome.applied == {}
    assert running.runtime.current() == before
    assert gated(daemon.gate, frames) == gated_before
    assert daemon.applied == {}
    assert running.twin.status()["rejections"][name]["value"] == value
    if name in DEFAULTS and DEFAULTS[name] is not None:
        # The previous actual value is reported once more. EdgeCore answers every update
        # with the delta again; the refused value is not answered a second time, so the
        # exchange ends long before the stand-in would call it a loop.
        wait_until(lambda: ec.reports_of(name) == reports + 1)
        assert ec.actual(name) == EXPECTED_WIRE[name]
        wait_until(lambda: running.twin.counters.repeats >= 1)
        assert ec.reports_of(name) == reports + 1
    assert ec.deltas_sent < MAX_DELTAS


def test_valid_values_apply_even_when_others_in_the_delta_are_rejected(
    setup: tuple[Running, Daemon],
) -> None:
    running, daemon = setup
    ec = running.edgecore
    # one delta carrying both, as after a multi-property edit of the Device
    ec.seed("motion_threshold", "int", expected="300", actual="25")
    ec.seed("log_level", "string", expected="WARNING", actual="INFO")
    ec.send_delta()
    wait_until(lambda: ec.actual("log_level") == "WARNING")
    outcome = wait_until(lambda: [o for o in running.outcomes if o.rejected])[0]
    assert outcome.applied == {"log_level": "WARNING"}
    assert set(outcome.rejected) == {"motion_threshold"}
    assert daemon.gate.config.threshold == 25


def test_a_setter_failure_rolls_back_and_is_reported(setup: tuple[Running, Daemon]) -> None:
    running, daemon = setup
    daemon.fail_fps = 13.0
    ec = running.edgecore
    ec.set_desired("target_fps", "13", "float")
    outcome = wait_until(lambda: [o for o in running.outcomes if o.rejected])[0]
    assert "rolled back" in outcome.rejected["target_fps"].reason
    assert "camera refused the rate" in outcome.rejected["target_fps"].reason
    assert running.runtime.current().target_fps is None


def test_changes_by_another_path_are_reported(setup: tuple[Running, Daemon]) -> None:
    running, _ = setup
    ec = running.edgecore
    wait_until(lambda: ec.actual("offload_policy") == "hard_example")
    running.runtime.apply({"offload_policy": "never"})
    wait_until(lambda: ec.actual("offload_policy") == "never")


@both_id_forms
def test_malformed_messages_are_counted_and_dropped(setup: tuple[Running, Daemon]) -> None:
    running, daemon = setup
    ec = running.edgecore
    ec.publish("update/delta", b"{this is not json")
    ec.publish("get/result", b"[1, 2, 3]")
    ec.publish("update/delta", json.dumps({"event_id": "x", "delta": {"a": 1}}).encode())
    wait_until(lambda: running.twin.counters.malformed == 3)
    wait_until(lambda: running.client.counters.dropped == 3)
    ec.set_desired("motion_threshold", "60", "int")  # the service still works
    wait_until(lambda: ec.actual("motion_threshold") == "60")
    assert daemon.gate.config.threshold == 60


def test_edgecore_errors_are_counted(setup: tuple[Running, Daemon]) -> None:
    running, _ = setup
    error = {"event_id": "e", "timestamp": 1, "code": 404, "reason": "Device not found"}
    running.edgecore.publish("update/result", json.dumps(error).encode())
    wait_until(lambda: running.twin.counters.edgecore_errors == 1)
    assert "404 not found: Device not found" in running.twin.status()["last_error"]


def test_a_change_from_the_api_while_a_delta_arrives_leaves_both_standing(
    setup: tuple[Running, Daemon],
) -> None:
    """The API's thread applies a change whose setter takes a while; a delta arrives
    meanwhile and waits for it under the twin's lock, while the API's change, once
    applied, is reported through the twin, which takes that lock. Both complete: both
    values stand and EdgeCore sees both reported. (For a few hours of 2026-12-07 the
    settings announced changes under their own lock: the two threads waited on each
    other for good, the API's event loop and the MQTT thread with them.)"""
    running, daemon = setup
    ec = running.edgecore
    wait_until(lambda: ec.actual("motion_min_pixels") == "5")
    daemon.hold.set()
    api = threading.Thread(target=running.runtime.apply, args=({"motion_min_pixels": 7},))
    api.start()
    assert daemon.held.wait(10)
    ec.set_desired("motion_threshold", "40", "int")
    wait_until(lambda: running.twin.counters.deltas == 1)  # in, waiting for the change
    daemon.hold.clear()
    api.join(10)
    assert not api.is_alive()
    wait_until(lambda: ec.actual("motion_threshold") == "40")
    wait_until(lambda: ec.actual("motion_min_pixels") == "7")
    current = running.runtime.current()
    assert (current.motion_threshold, current.motion_min_pixels) == (40, 7)
