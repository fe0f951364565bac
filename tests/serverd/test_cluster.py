"""serverd on a clustered broker: a three-node NATS cluster (MQTT over JetStream) started
here on free ports; serverd on one node, edged's offload client (SQLite outbox, QoS 1,
retries) on another; the third node is killed mid-run and no job is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.netloop import NetLoop
from edged.offload.client import JobOutcome, OffloadClient
from edged.offload.outbox import Outbox
from edged.offload.records import OutboxConfig
from edgefed.lifecycle import Status
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.natscluster import NATS_SERVER, NatsCluster
from edgefed.testing.wait import wait_until
from tests.serverd.conftest import _require_triton
from tests.serverd.harness import ServerdThread, frame_jpeg, serverd_config

JPEG = frame_jpeg(320, 240)
JOBS = 60


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    if not Path(NATS_SERVER).exists():
        pytest.fail(
            "nats-server is missing: run packaging/dev/setup.sh (setup.d/65-nats-server.sh)"
        )
    with NatsCluster(tmp_path / "nats") as running:
        yield running


def test_one_broker_node_killed_mid_run_loses_no_job(cluster: NatsCluster, tmp_path: Path) -> None:
    _require_triton()
    serverd_port, edge_port = cluster.mqtt_ports[0], cluster.mqtt_ports[1]
    config = serverd_config(
        tmp_path / "serverd",
        serverd_port,
        instances=1,
        mqtt={"host": "127.0.0.1", "port": serverd_port, "client_id": "serverd-on-nats"},
    )
    server = ServerdThread(config)
    server.start()
    outcomes: list[JobOutcome] = []
    net = NetLoop(MqttClient(MqttConfig(port=edge_port, client_id="edge-on-nats")))
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.sqlite", result_timeout_s=5.0))
    client = OffloadClient("site/cam-nats", net, outbox, on_outcome=outcomes.append)
    client.start()
    net.start()
    try:
        assert net.mqtt.wait_connected(20)
        time.sleep(1.0)  # serverd's subscription has reached the other nodes
        sent = []
        for n in range(JOBS):
            if n == JOBS // 2:
                cluster.kill(2)
            request = client.make_request("echo" if n % 2 else "person", "jpeg", ttl_s=120)
            sent.append(request.job_id)
            client.submit(request, JPEG)
            time.sleep(0.05)
        wait_until(f"{JOBS} outcomes", lambda: len(outcomes) == JOBS, timeout=150)
        completed = server.status()["counters"]["completed"]
    finally:
        client.stop()
        net.stop()
        outbox.close()
        server.stop()
    assert sorted(o.job_id for o in outcomes) == sorted(sent)  # each job closed once
    assert [o.status for o in outcomes] == [Status.EXIT] * JOBS
    assert completed == JOBS  # a job sent again after the failover was not run again
