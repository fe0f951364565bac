"""TwinService across its life: start-up, restart, reconnect, readings, events.

The twin's ``get/result`` at start wins over persisted values; twin-applied values
survive a restart; a reconnect reports and asks again; ReadOnly readings are reported;
refusals reach the EventBus topic that KubeEdge forwards to the cloud.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest

from edged.eventbus import EventBus, EventBusConfig
from edged.motion import MotionConfig, ThreeFrameGate
from edged.twin.properties import load_property_table
from edged.twin.service import TwinService
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.edgecore import EdgeCoreTwin, Subscriber, wait_until
from tests.edged.twin.daemon import DEFAULTS, Daemon, Running, gated, start

both_id_forms = pytest.mark.parametrize(
    "device_id", ["edge-01", "demo/edge-01"], ids=["single-segment", "namespace-name"]
)


@both_id_forms
def test_get_result_at_start_wins_over_persisted_values(
    broker: Broker, tmp_path: Path, device_id: str, frames: list[np.ndarray]
) -> None:
    state = tmp_path / "state" / "runtime.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps(DEFAULTS | {"motion_threshold": 40, "log_level": "ERROR"}))
    ec = EdgeCoreTwin(broker, device_id)
    # the twin as EdgeCore stored it before edged started
    ec.seed("motion_threshold", "int", expected="200", actual="40")
    ec.seed("target_fps", "float", expected="5.0", actual=None)
    daemon = Daemon(state)
    running = start(broker, daemon, device_id, ec)
    try:
        wait_until(lambda: ec.actual("motion_threshold") == "200")
        wait_until(lambda: ec.actual("target_fps") == "5.0")
        assert daemon.gate.config.threshold == 200
        assert ec.actual("log_level") == "ERROR"  # persisted, no desired value
        assert running.outcomes[0].source == "get_result"
        assert json.loads(state.read_text())["motion_threshold"] == 200
    finally:
        running.stop()
        ec.close()


def test_twin_applied_values_survive_a_restart(
    broker: Broker, tmp_path: Path, frames: list[np.ndarray]
) -> None:
    state = tmp_path / "state" / "runtime.json"
    ec = EdgeCoreTwin(broker, "demo/edge-01")
    first = start(broker, Daemon(state), "demo/edge-01", ec)
    ec.set_desired("motion_threshold", "200", "int")
    wait_until(lambda: ec.actual("motion_threshold") == "200")
    first.stop()
    ec.close()

    ec2 = EdgeCoreTwin(broker, "demo/edge-01")  # a fresh EdgeCore with no twin at all
    daemon = Daemon(state)
    second = start(broker, daemon, "demo/edge-01", ec2)
    try:
        assert daemon.gate.config.threshold == 200
        wait_until(lambda: ec2.actual("motion_threshold") == "200")
        assert gated(daemon.gate, frames) < gated(ThreeFrameGate(MotionConfig()), frames)
    finally:
        second.stop()
        ec2.close()


def test_a_retained_delta_is_applied_once_not_on_every_start(
    broker: Broker, tmp_path: Path, frames: list[np.ndarray]
) -> None:
    """On main a retained delta was applied again at every start, over any change made
    since (here the operator's, through the same door as PUT /api/v1/config)."""
    state = tmp_path / "state" / "runtime.json"
    seen = tmp_path / "state" / "twin-deltas.json"
    topic = "$hw/events/device/demo/edge-01/twin/update/delta"
    delta = {
        "event_id": "retained-0001",
        "timestamp": 1_700_000_000_000,
        "twin": {"motion_threshold": {"expected": {"value": "200"}, "metadata": {"type": "int"}}},
        "delta": {"motion_threshold": "200"},
    }
    publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="retainer")
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    publisher.publish(topic, json.dumps(delta), qos=1, retain=True).wait_for_publish(5)
    ec = EdgeCoreTwin(broker, "demo/edge-01")
    try:
        daemon = Daemon(state)
        first = start(broker, daemon, "demo/edge-01", ec, seen_path=seen)
        # reported only once the twin's handler is done (applied, kept, the delta seen)
        wait_until(lambda: ec.actual("motion_threshold") == "200")
        assert daemon.gate.config.threshold == 200
        first.runtime.apply({"motion_threshold": 30})  # the operator puts it back
        first.stop()

        daemon = Daemon(state)
        second = start(broker, daemon, "demo/edge-01", ec, seen_path=seen)
        try:
            wait_until(lambda: second.twin.counters.replayed == 1)
            assert daemon.gate.config.threshold == 30
            assert json.loads(state.read_text())["motion_threshold"] == 30
            assert second.twin.counters.deltas == 0
        finally:
            second.stop()
    finally:
        publisher.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)  # clear it
        publisher.loop_stop()
        publisher.disconnect()
        ec.close()


@both_id_forms
def test_reconnect_reports_and_asks_again(setup: tuple[Running, Daemon], broker: Broker) -> None:
    running, _ = setup
    ec = running.edgecore
    wait_until(lambda: ec.actual("log_level") == "INFO")
    ec.close()
    broker.stop()
    broker.start()
    ec2 = EdgeCoreTwin(broker, running.twin.topics.device_id)
    try:
        wait_until(lambda: ec2.gets >= 1)
        wait_until(lambda: ec2.actual("log_level") == "INFO")
        ec2.set_desired("log_level", "WARNING", "string")
        wait_until(lambda: ec2.actual("log_level") == "WARNING")
    finally:
        ec2.close()


def test_rejections_reach_the_cloud_on_the_eventbus_twin_topic(
    broker: Broker, tmp_path: Path
) -> None:
    """The wiring edged uses: TwinService(on_outcome=EventBus.publish_twin)."""
    ec = EdgeCoreTwin(broker, "demo/edge-01")
    client = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="edged-twin"))
    bus = EventBus(EventBusConfig(), client, "demo/edge-01", stats=dict)
    cloud = Subscriber(broker, "demo/user/edgefed/events/twin/#")
    twin = TwinService(
        client,
        "demo/edge-01",
        Daemon(tmp_path / "rt.json").runtime(),
        load_property_table(),
        on_outcome=bus.publish_twin,
    )
    twin.start()
    client.start()
    try:
        wait_until(lambda: ec.gets >= 1)
        ec.set_desired("motion_threshold", "999", "int")
        topic, event = cloud.get()
    finally:
        twin.stop()
        client.stop()
        ec.close()
        cloud.close()
    assert topic == "demo/user/edgefed/events/twin/demo/edge-01"
    assert event["type"] == "twin" and event["source"] == "delta"
    assert event["rejected"]["motion_threshold"]["value"] == "999"
    assert "out of range" in event["rejected"]["motion_threshold"]["reason"]


def test_readonly_readings_are_reported(broker: Broker, tmp_path: Path) -> None:
    ec = EdgeCoreTwin(broker, "edge-01")
    client = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="edged-twin"))
    readings = {"fps": 9.5, "gated_ratio": 0.25, "outbox_depth": 3, "not_in_table": 1}
    twin = TwinService(
        client,
        "edge-01",
        Daemon(tmp_path / "rt.json").runtime(),
        load_property_table(),
        readings=lambda: dict(readings),
        report_interval_s=0.05,
    )
    twin.start()
    client.start()
    try:
        wait_until(lambda: ec.actual("outbox_depth") == "3")
        assert ec.actual("fps") == "9.5" and ec.actual("gated_ratio") == "0.25"
        assert ec.last_update_of("outbox_depth") is not None
        readings["outbox_depth"] = 7
        wait_until(lambda: ec.actual("outbox_depth") == "7")
        assert ec.reports_of("fps") == 1  # unchanged readings are not sent again
        assert ec.actual("not_in_table") is None
        assert ec.update_errors == []
    finally:
        twin.stop()
        client.stop()
        ec.close()
