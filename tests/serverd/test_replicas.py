"""Two serverd replicas on one mosquitto share the requests through a shared subscription
($share/<group>/...): each job goes to one replica and is processed once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefed.testing.broker import Broker
from edgefed.wire import OffloadResult
from tests.serverd.conftest import _require_triton
from tests.serverd.harness import Edge, ServerdThread, frame_jpeg, serverd_config

JPEG = frame_jpeg(320, 240)


@pytest.fixture
def replicas(broker: Broker, tmp_path: Path) -> Iterator[list[ServerdThread]]:
    _require_triton()
    running: list[ServerdThread] = []
    try:
        for name in ("replica-a", "replica-b"):
            config = serverd_config(
                tmp_path / name,
                broker.port,
                instances=1,
                server_id=name,
                share_group="serverd",
                overload={"max_wait_ms": 60_000},  # sharing, not shedding, is tested here
                mqtt={"host": "127.0.0.1", "port": broker.port, "client_id": name},
            )
            replica = ServerdThread(config)
            replica.start()
            running.append(replica)
        yield running
    finally:
        for replica in running:
            replica.stop()


def test_two_replicas_share_the_load_and_no_job_is_processed_twice(
    replicas: list[ServerdThread], broker: Broker
) -> None:
    edges = [Edge(broker.port, device_id=f"site/cam-{i}") for i in range(3)]
    try:
        sent: dict[str, str] = {}
        for n in range(90):
            edge = edges[n % 3]
            request = edge.request("echo" if n % 2 else "person")
            sent[request.job_id] = edge.device_id
            edge.send(request, JPEG, wait=False)
        replies = [reply for edge in edges for reply, _ in edge.collect(30, timeout=120)]
        for edge in edges:
            assert not edge.quiet(0.5)  # nothing answered twice
    finally:
        for edge in edges:
            edge.close()
    assert Counter(r.job_id for r in replies) == Counter(sent.keys())
    assert all(isinstance(r, OffloadResult) for r in replies), [
        r for r in replies if not isinstance(r, OffloadResult)
    ][:3]
    servers = Counter(r.served_by.split("/")[0] for r in replies if isinstance(r, OffloadResult))
    assert set(servers) == {"replica-a", "replica-b"}, servers
    completed = [replica.status()["counters"]["completed"] for replica in replicas]
    assert sum(completed) == 90 and min(completed) > 0
    for job_id, device in sent.items():  # in exactly one replica's job table
        rows = [replica.job(device, job_id) for replica in replicas]
        assert sum(row is not None for row in rows) == 1
