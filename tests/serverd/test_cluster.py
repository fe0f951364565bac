"""serverd on a clustered broker: a three-node NATS cluster (MQTT over JetStream) started
here on free ports; serverd on one node, a device on another; the third node is killed
mid-run and no job is lost."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefed.testing.natscluster import NATS_SERVER, NatsCluster
from edgefed.wire import OffloadResult
from tests.serverd.conftest import _require_triton
from tests.serverd.harness import Edge, ServerdThread, frame_jpeg, serverd_config

JPEG = frame_jpeg(320, 240)


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
    edge: Edge | None = None
    try:
        edge = Edge(edge_port, device_id="site/cam-nats")
        time.sleep(1.0)  # the subscription has reached the other nodes
        sent = []
        for n in range(60):
            if n == 30:
                cluster.kill(2)
            request = edge.request("echo" if n % 2 else "person")
            sent.append(request.job_id)
            edge.send(request, JPEG)
            time.sleep(0.02)
        replies = [reply for reply, _ in edge.collect(60, timeout=120)]
        assert not edge.quiet(1.0)
    finally:
        if edge is not None:
            edge.close()
        server.stop()
    assert Counter(r.job_id for r in replies) == Counter(sent)
    assert all(isinstance(r, OffloadResult) for r in replies)
