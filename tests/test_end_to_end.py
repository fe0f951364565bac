"""The whole system: edged on the real video offloads by policy, serverd answers on a real
Triton over a real broker, edged records the server's results in its outbox."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edged.api.server import ApiServer
from edged.app import EdgedApp
from edged.config import parse_config
from edged.netloop import NetLoop
from edged.offload.client import JobOutcome, OffloadClient
from edged.offload.outbox import Outbox
from edged.offload.records import OutboxConfig, Status
from edged.offload.serverclock import ServerClock
from edgefed.clock import now_ms
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.edgecore import Subscriber
from edgefed.testing.wait import wait_until
from tests.serverd.harness import ServerdThread, serverd_config
from tests.support.configs import demo_config
from tests.support.paths import IMAGES_DIR, REPO

CHILD = REPO / "tests" / "edged" / "offload" / "edge_child.py"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, ServerdThread]]:
    if not (REPO / ".venv-triton" / ".edgefed-installed").exists():
        pytest.fail("Triton's environment is missing: run packaging/dev/setup.sh")
    assert (IMAGES_DIR / "pose_detector").is_dir(), "run packaging/dev/setup.sh"
    with Broker(tmp_path_factory.mktemp("broker")) as broker:
        config = serverd_config(tmp_path_factory.mktemp("serverd"), broker.port, instances=1)
        with ServerdThread(config) as server:
            yield broker, server


def edged_config(tmp_path: Path, broker: Broker, **offload: Any) -> dict[str, Any]:
    return demo_config(
        tmp_path,
        mqtt={"host": broker.host, "port": broker.port, "client_id": f"edge-{tmp_path.name}"},
        offload={
            "enabled": True,
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            "ttl_s": 30,
            **offload,
        },
    )


def test_edged_offloads_and_records_the_servers_results(
    tmp_path: Path, system: tuple[Broker, ServerdThread]
) -> None:
    broker, server = system
    # "person" exists on both sides; the policy sends every person result to the server
    raw = edged_config(tmp_path, broker, policy={"policy": "always"}, models=["person"])
    app = EdgedApp(parse_config(raw, env={}))
    assert app.offload is not None
    events = Subscriber(broker, "+/user/edgefed/events/offload/#")
    app.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and app.offload.outbox.counts()[Status.EXIT] < 5:
            time.sleep(0.2)
        done = app.offload.outbox.page([Status.EXIT], limit=100)
        counts = app.offload.outbox.counts()
        api = next(s for s in app.services if isinstance(s, ApiServer)).url
        wait_until(
            "5 offload results", lambda: app.offload_results.status()["counts"].get("Exit", 0) >= 5
        )
        status = json.loads(urllib.request.urlopen(api + "/api/v1/status").read())
        metrics = urllib.request.urlopen(api + "/metrics").read().decode()
        topic, event = events.get()
    finally:
        app.stop()
        events.close()
    assert len(done) >= 5, counts
    # the server's results reach the user: results file, EventBus, status API, /metrics
    lines = [json.loads(line) for line in Path(raw["output"]["results"]).read_text().splitlines()]
    offloaded = {r["job_id"]: r for r in lines if r.get("type") == "offload_result"}
    for job in done:
        record = offloaded[job.id]
        assert set(record) == {
            "type",
            "job_id",
            "camera",
            "frame",
            "model",
            "status",
            "served_by",
            "result",
        }
        assert record["status"] == "Exit" and record["model"] == "person"
        assert record["camera"] == job.metadata["camera"] and isinstance(record["frame"], int)
        assert record["served_by"] == job.result["served_by"]
        assert record["result"] == job.result["results"]
    assert topic.endswith(f"/events/offload/{raw['device_id']}") and event["job_id"] in offloaded
    shown = status["offload_results"]
    assert shown["available"] and shown["counts"]["Exit"] >= 5
    assert shown["recent"][0]["served_by"] and "local_result" in shown["recent"][0]
    exits = re.search(r'^edged_offload_results_total\{status="Exit"\} (\S+)$', metrics, re.M)
    assert exits is not None and float(exits.group(1)) >= 5
    for job in done:
        assert job.model == "person" and job.reason == "offload policy is always"
        assert job.result is not None and job.result["served_by"]
        assert job.started is not None and job.ended is not None and job.ended >= job.started
        assert isinstance(job.result["results"], list)
        assert all(r["label"] == "person" and 0 < r["score"] <= 1 for r in job.result["results"])
    assert server.status()["jobs"].get("Exit", 0) >= len(done)


def test_unregistered_model_goes_to_the_server_and_hard_examples_are_chosen(
    tmp_path: Path, system: tuple[Broker, ServerdThread]
) -> None:
    broker, _ = system
    raw = edged_config(
        tmp_path,
        broker,
        policy={"policy": "hard_example", "hard_example": {"threshold": 0.99}},
        models=["person"],
        remote_models=[{"name": "echo", "every_n": 3}],
    )
    app = EdgedApp(parse_config(raw, env={}))
    assert app.offload is not None
    app.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            models = {j.model for j in app.offload.outbox.page([Status.EXIT], limit=200)}
            if {"echo", "person"} <= models:
                break
            time.sleep(0.2)
        jobs = app.offload.outbox.page([Status.EXIT], limit=200)
    finally:
        app.stop()
    reasons = {j.model: j.reason for j in jobs}
    assert "not registered locally" in reasons["echo"]
    assert reasons["person"] == "hard example by threshold"
    decisions = app.offload.dispatcher.status()["decisions"]
    assert decisions.get("unregistered_model", 0) >= 1 and decisions.get("hard_example", 0) >= 1


def test_kill_9_of_edged_with_jobs_in_the_outbox_then_every_job_completes_once(
    tmp_path: Path, system: tuple[Broker, ServerdThread]
) -> None:
    """A real serverd answers; the edge is killed with 20 jobs sent and 10 not yet sent."""
    broker, server = system
    db = tmp_path / "outbox.sqlite"
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(broker.port), str(db), "echo"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
    outcomes: queue.SimpleQueue[JobOutcome] = queue.SimpleQueue()
    outbox = Outbox(OutboxConfig(path=db, result_timeout_s=60.0))
    # the restarted daemon has the same MQTT identity: the broker kept its session and replies
    net = NetLoop(MqttClient(MqttConfig(port=broker.port, client_id="edged-child")))
    client = OffloadClient("cam-1", net, outbox, on_outcome=outcomes.put)
    assert outbox.counts()["Enqueue"] == 10
    closed_before = outbox.counts()["Exit"]  # answered before the kill (a server is running)
    client.start()
    net.start()
    try:
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while len(seen) < 30 - closed_before and time.monotonic() < deadline:
            try:
                outcome = outcomes.get(timeout=0.5)
            except queue.Empty:
                continue
            seen[outcome.job_id] = seen.get(outcome.job_id, 0) + 1
            assert outcome.status == Status.EXIT, outcome
        time.sleep(1.0)  # a duplicate delivery would close a job a second time
        while not outcomes.empty():
            late = outcomes.get()
            seen[late.job_id] = seen.get(late.job_id, 0) + 1
        missing = {
            job.id: (job.status, job.iteration, job.last_error, server.job(job.device, job.id))
            for job in outbox.page(limit=100)
            if job.status != Status.EXIT
        }
        assert len(seen) == 30 - closed_before, f"not completed (edge, server): {missing}"
        assert set(seen.values()) == {1}
        assert outbox.counts()["Exit"] == 30
        rows = [server.job(job.device, job.id) for job in outbox.page([Status.EXIT], limit=100)]
        assert all(row is not None and row["status"] == "Exit" for row in rows)
        assert all(row is not None and row["iteration"] == 0 for row in rows), "ran once each"
    finally:
        client.stop()
        net.stop()
        outbox.close()


def test_jobs_queued_while_the_broker_is_down_drain_when_it_returns(
    tmp_path: Path, system: tuple[Broker, ServerdThread]
) -> None:
    """Both daemons lose the broker; jobs wait in the outbox and all complete after it returns."""
    broker, _ = system
    outcomes: queue.SimpleQueue[JobOutcome] = queue.SimpleQueue()
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.sqlite", result_timeout_s=30.0))
    net = NetLoop(MqttClient(MqttConfig(port=broker.port, client_id="edged-broker-restart")))
    client = OffloadClient("cam-2", net, outbox, on_outcome=outcomes.put)
    client.start()
    net.start()
    try:
        assert net.mqtt.wait_connected(10)
        broker.stop()
        for n in range(10):
            request = client.make_request("echo", "jpeg", priority=n % 3, ttl_s=120.0)
            client.submit(request, b"\xff\xd8" + bytes(2000) + b"\xff\xd9")
        time.sleep(1.0)
        assert outbox.counts()["Exit"] == 0
        broker.start()
        done: set[str] = set()
        deadline = time.monotonic() + 60
        while len(done) < 10 and time.monotonic() < deadline:
            try:
                outcome = outcomes.get(timeout=0.5)
            except queue.Empty:
                continue
            assert outcome.status == Status.EXIT, outcome
            done.add(outcome.job_id)
        assert len(done) == 10
        wait_until("10 jobs Exit", lambda: outbox.counts()["Exit"] == 10, 10)
    finally:
        if not broker.running:
            broker.start()
        client.stop()
        net.stop()
        outbox.close()


@pytest.mark.parametrize("skew_h", [-1, 1])
def test_an_edge_whose_clock_is_an_hour_off_learns_serverds_and_is_served(
    tmp_path: Path, system: tuple[Broker, ServerdThread], skew_h: int
) -> None:
    """An edge box without NTP, its clock an hour behind serverd's (every job refused as
    late on arrival, before) or ahead: its first job's answer carries serverd's time, and
    the jobs made after it carry deadlines serverd honours."""
    broker, _ = system
    skew_ms = skew_h * 3_600_000
    clock = ServerClock(local=lambda: now_ms() + skew_ms)
    outcomes: queue.SimpleQueue[JobOutcome] = queue.SimpleQueue()
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.sqlite"), clock)
    mqtt = MqttClient(MqttConfig(port=broker.port, client_id=f"edged-skew-{skew_h}"))
    net = NetLoop(mqtt)
    client = OffloadClient(f"cam-skew{skew_h}", net, outbox, on_outcome=outcomes.put, clock=clock)
    client.start()
    net.start()
    jpeg = b"\xff\xd8" + bytes(2000) + b"\xff\xd9"
    try:
        assert net.mqtt.wait_connected(10)
        first = client.make_request("echo", "jpeg", ttl_s=5.0)
        client.submit(first, jpeg)
        outcome = outcomes.get(timeout=30)
        assert outcome.job_id == first.job_id
        # an edge behind has its first job refused (its deadline passed an hour ago on
        # serverd's clock); one ahead has it served
        assert outcome.status == (Status.FAILED if skew_h < 0 else Status.EXIT), outcome
        # the job made on the edge's own clock moved with the clock when it was learnt
        record = outbox.get(first.job_id)
        assert record is not None and abs(record.created - now_ms()) < 10_000, record
        offset = client.status()["clock_offset_ms"]
        assert abs(offset + skew_ms) < 2_000, offset  # serverd's clock minus the edge's
        assert abs(outbox.clock_offset_ms - offset) < 1_000  # the status API's and metrics'
        later = [client.make_request("echo", "jpeg", ttl_s=30.0) for _ in range(5)]
        # made an hour off the edge's own clock: on serverd's
        assert abs(later[0].created - now_ms()) < 2_000
        for request in later:
            client.submit(request, jpeg)
        served = [outcomes.get(timeout=30) for _ in later]
        assert {o.job_id for o in served} == {r.job_id for r in later}
        assert all(o.status == Status.EXIT for o in served), served
    finally:
        client.stop()
        net.stop()
        outbox.close()
