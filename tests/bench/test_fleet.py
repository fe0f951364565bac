"""bench fleet: Jain's fairness index, the ceiling interpolation, and the simulated devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.fleet import HIGH, LOW, ceiling, jain
from edgefed.clock import now_ms
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.wire import (
    OffloadErrorMessage,
    OffloadResult,
    Topics,
    decode_request,
    encode_message,
)
from tests.serverd.harness import frame_jpeg
from tests.support.paths import REPO


def test_jain_index_is_one_when_every_device_is_served_alike_and_1_over_n_at_worst() -> None:
    assert jain([0.5] * 10) == 1.0
    assert jain([1.0] + [0.0] * 9) == pytest.approx(0.1)
    assert jain([1.0, 0.5]) == pytest.approx(0.9)
    assert jain([]) == 0.0


def step(offered: float, p99: float | None) -> dict[str, float | None]:
    return {"offered_jobs_per_s": offered, "p99_ms_high": p99}


def test_the_ceiling_is_where_high_priority_p99_crosses_80_ms() -> None:
    steps = [step(300.0, 60.0), step(30.0, 10.0), step(600.0, 100.0)]
    assert ceiling(steps) == pytest.approx(450.0)  # 60 ms at 300/s, 100 ms at 600/s
    assert ceiling([step(30.0, 10.0), step(300.0, 70.0)]) is None  # never crossed
    assert ceiling([step(30.0, 90.0)]) == 30.0  # crossed at the first step


def test_simulated_devices_speak_the_wire_contract_and_count_what_they_get(
    broker: Broker, tmp_path: Path
) -> None:
    """A device worker against a real mosquitto and a responder on the real MQTT adapter
    that answers priority 5 with a result and priority 0 with a shed error."""
    seen: list[str] = []
    responder = MqttClient(MqttConfig(port=broker.port, client_id="fleet-test-responder"))

    def answer(topic: str, data: bytes) -> None:
        request = decode_request(data).request
        seen.append(topic)
        reply: OffloadResult | OffloadErrorMessage
        if request.priority == HIGH:
            reply = OffloadResult(
                job_id=request.job_id, device_id=request.device_id, model=request.model,
                results=[], served_by="test", completed=now_ms(),
            )  # fmt: skip
        else:
            reply = OffloadErrorMessage(
                job_id=request.job_id, device_id=request.device_id, code="shed",
                reason="test", retryable=False,
            )  # fmt: skip
        responder.publish(Topics().reply(request.device_id), encode_message(reply))

    responder.subscribe(Topics().requests_filter(), answer)
    responder.start()
    assert responder.wait_connected(10)
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    (jpegs / "000.jpg").write_bytes(frame_jpeg(224, 224))
    devices = [f"site-00/cam-{i:04d}" for i in range(20)]
    step = {
        "device_ids": devices, "port": broker.port, "rate": 5.0, "high_share": 0.5,
        "model": "echo", "duration_s": 2.0, "jpeg_dir": str(jpegs), "seed": 3,
    }  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench._fleet_devices", json.dumps(step)],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "connected"
        report = json.loads(worker.communicate("go\n", timeout=60)[0])
    finally:
        responder.stop()
    offered = sum(report["offered"])
    assert offered > 100  # 20 devices x 5 jobs/s x 2 s, Poisson
    assert {t.rsplit("/", 2)[-2] + "/" + t.rsplit("/", 1)[-1] for t in seen} == set(devices)
    high, shed = len(report["rtt_ms"][str(HIGH)]), report["shed"][str(LOW)]
    assert high + shed == offered and high > 0 and shed > 0
    assert sum(report["completed"]) == high
    assert report["lost"] == 0 and report["errors"] == 0
    assert all(ms > 0 for ms in report["rtt_ms"][str(HIGH)])
