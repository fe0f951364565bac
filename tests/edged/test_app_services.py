"""edged with every optional service wired from config, on a real broker and the real video."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edged.api.client import format_status
from edged.app import EdgedApp
from edged.config import parse_config
from edged.offload.serverclock import ServerClock
from edgefed.clock import now_ms
from edgefed.lifecycle import Status
from edgefed.testing.broker import Broker
from edgefed.testing.dmi import FakeEdgeCoreDmi
from edgefed.testing.wait import wait_until
from edgefed.wire import OffloadResult, Topics, encode_message
from tests.support.configs import demo_config

TOKEN = "s3cret-token-for-tests"


def full_config(tmp_path: Path, broker: Broker) -> dict[str, Any]:
    return demo_config(
        tmp_path,
        mqtt={"host": broker.host, "port": broker.port, "client_id": "edged-services-test"},
        offload={
            "enabled": True,
            "policy": {"policy": "always"},
            "models": ["scene"],
            "ttl_s": 0.5,
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        },
        api={"port": 0, "token": TOKEN},
    )


def api_text(app: EdgedApp, path: str) -> str:
    server = next(s for s in app.services if type(s).__name__ == "ApiServer")
    with urllib.request.urlopen(f"{server.url}{path}", timeout=5) as resp:  # type: ignore[attr-defined]
        return str(resp.read().decode())


def api_get(app: EdgedApp, path: str) -> Any:
    return json.loads(api_text(app, path))


def test_offload_twin_and_api_are_wired_from_config(tmp_path: Path, broker: Broker) -> None:
    app = EdgedApp(parse_config(full_config(tmp_path, broker), env={}))
    app.start()
    try:
        # no serverd: every offloaded job expires at its deadline and the local result stands
        expired = wait_until(
            "offloaded jobs to expire",
            lambda: app.offload is not None and app.offload.outbox.counts().get("Expired", 0),
        )
        assert expired >= 1
        status = api_get(app, "/api/v1/status")
        scene = next(m for m in status["models"] if m["name"] == "scene")
        assert scene["inferences"] >= 1
        assert status["outbox"]["available"] and status["outbox"]["counts"]["Expired"] >= expired

        # a KubeEdge twin delta changes the running gate and is persisted
        delta = {
            "event_id": "e1",
            "timestamp": now_ms(),
            "twin": {},
            "delta": {"motion_threshold": "60"},
        }
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        pub.publish("$hw/events/device/demo/edge-01/twin/update/delta", json.dumps(delta), qos=1)
        wait_until("the twin value", lambda: app.runtime.current().motion_threshold == 60)
        assert app.pipeline.cameras[0].gate.config.threshold == 60
        # one out of range is refused, and the status says which and why
        delta |= {"event_id": "e2", "delta": {"motion_threshold": "999"}}
        pub.publish("$hw/events/device/demo/edge-01/twin/update/delta", json.dumps(delta), qos=1)
        twin = wait_until(
            "the refusal",
            lambda: api_get(app, "/api/v1/status")["twin"]["mqtt"]["rejections"],
        )
        assert twin["motion_threshold"]["value"] == "999"
        assert app.runtime.current().motion_threshold == 60
        lines = format_status(api_get(app, "/api/v1/status")).splitlines()
        assert "twin (mqtt): 1 refused" in lines
        assert 'edged_twin_refused_properties{way="mqtt"} 1.0' in api_text(app, "/metrics")
        assert any(ln.startswith("  motion_threshold = '999': ") for ln in lines)
        pub.loop_stop()
        pub.disconnect()
    finally:
        app.stop()

    # the twin-applied value survives a restart until the twin changes it
    again = EdgedApp(parse_config(full_config(tmp_path, broker), env={}))
    try:
        assert again.runtime.current().motion_threshold == 60
        assert again.pipeline.cameras[0].gate.config.threshold == 60
    finally:
        again.models.close()
        if again.offload is not None:
            again.offload.outbox.close()


def test_offload_and_federation_share_serverds_clock(tmp_path: Path, broker: Broker) -> None:
    """What an offload reply teaches edged of serverd's clock times its jobs and its
    federation offers alike (an offer stamped on the device's own clock, over 2 min off,
    was never chosen for a round)."""
    raw = full_config(tmp_path, broker)
    raw["federation"] = {
        "enabled": True,
        "models": [{"name": "digits", "classes": list("0123456789")}],
    }
    app = EdgedApp(parse_config(raw, env={}))
    try:
        assert app.offload is not None and app.federation is not None
        clock = app.federation.clock
        assert isinstance(clock, ServerClock)
        clock.observe(now_ms() + 3_600_000)  # serverd an hour ahead, as a reply says
        assert abs(app.offload.outbox.clock_offset_ms - 3_600_000) < 5_000
        assert abs(app.federation.offer().sent_ms - (now_ms() + 3_600_000)) < 5_000
    finally:
        app.models.close()
        app.offload.outbox.close()  # type: ignore[union-attr]


def test_a_result_kept_by_the_broker_while_edged_was_down_is_recorded_on_start(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker keeps a reply for edged's session while it is away; on start it
    delivers it right after connecting, and the offload client's handler must already
    be there to take it, however long the services take to start (no serverd runs here,
    so nothing else could close the job)."""
    raw = full_config(tmp_path, broker)
    raw["offload"]["ttl_s"] = 120.0
    raw["output"]["max_results"] = 5
    config = parse_config(raw, env={})
    app = EdgedApp(config)
    app.start()
    try:
        assert app.offload is not None
        outbox = app.offload.outbox
        sent = wait_until(
            "a job sent",
            lambda: outbox.page(statuses=[Status.PREPROCESSING_COMPLETE], limit=1),
        )
    finally:
        app.stop()
    job = sent[0]
    result = OffloadResult(
        job_id=job.id,
        device_id=config.device_id,
        model=job.model,
        results=[{"label": "from-the-server"}],
        served_by="test",
        completed=now_ms(),
    )
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    topic = Topics(config.offload.client.prefix).reply(config.device_id)
    pub.publish(topic, encode_message(result), qos=1).wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()

    again = EdgedApp(config)
    assert again.offload is not None
    start = again.offload.start

    def slow_start() -> None:
        time.sleep(0.5)
        start()

    monkeypatch.setattr(again.offload, "start", slow_start)
    again.start()
    try:
        box = again.offload.outbox

        def closed() -> Any:
            record = box.get(job.id)
            return record is not None and record.status == Status.EXIT and record

        record = wait_until("the kept result to close the job", closed, timeout=20)
        assert record.result is not None
        assert record.result["results"] == [{"label": "from-the-server"}]
    finally:
        again.stop()


def test_dmi_mapper_is_wired_from_config_and_drives_the_running_gate(
    tmp_path: Path, dmi_stubs: None
) -> None:
    sockets = Path(tempfile.mkdtemp(prefix="dmi-app-"))  # short: unix socket paths are limited
    raw = demo_config(
        tmp_path,
        device_id="demo/edge-01",
        dmi={
            "enabled": True,
            "socket": str(sockets / "edgefed.sock"),
            "edgecore_socket": str(sockets / "dmi.sock"),
            "report_interval_s": 0.5,
        },
    )
    edgecore = FakeEdgeCoreDmi(sockets / "dmi.sock")
    app = EdgedApp(parse_config(raw, env={}))
    app.start()
    try:
        wait_until("MapperRegister", lambda: edgecore.mappers)
        desired = {"motion_threshold": "120"}
        edgecore.register_device(edgecore.device("edge-01", "demo", "edgefed", "cam", desired))
        assert {cam.gate.config.threshold for cam in app.pipeline.cameras} == {120}
        twins = edgecore.wait_reported("demo", "edge-01", "motion_threshold", "120", "120")
        assert float(twins["fps"][0]) >= 0  # the pipeline's readings travel too
        desired = {"motion_threshold": "0"}  # out of range: refused, 120 stays and is reported
        edgecore.update_device(edgecore.device("edge-01", "demo", "edgefed", "cam", desired))
        edgecore.wait_reported("demo", "edge-01", "motion_threshold", "120", "0")
        assert {cam.gate.config.threshold for cam in app.pipeline.cameras} == {120}
    finally:
        app.stop()
        edgecore.close()
        shutil.rmtree(sockets, ignore_errors=True)
