"""Offload through a broker that caps the packet size (mosquitto's ``max_packet_size``, as
EMQX's 1 MB default or AWS IoT Core's 128 KB do), with edged told the limit.

A 4K camera's JPEG frame is larger than many brokers take. Before, its request went to
paho, the broker closed the connection for it, and paho sent it again on every
reconnect: the offload link was wedged, every later job stuck behind it.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.netloop import NetLoop
from edged.offload.client import JobOutcome, OffloadClient, OffloadClientConfig
from edged.offload.outbox import Outbox
from edged.offload.records import OutboxConfig
from edgefed.lifecycle import Status
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from tests.edged.offload.responder import Responder
from tests.serverd.harness import frame_jpeg

LIMIT = 512 * 1024  # the broker's, and edged's max_packet_bytes
UHD, VGA = frame_jpeg(3840, 2160), frame_jpeg(640, 480)  # about 700 KB and 70 KB


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker", max_packet_size=LIMIT) as broker:
        yield broker


def test_a_frame_larger_than_the_broker_takes_fails_its_job_and_the_next_completes(
    limited: Broker, tmp_path: Path
) -> None:
    assert len(UHD) > LIMIT > len(VGA)
    responder = Responder(limited.port).start()
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.sqlite", retry_base_s=0.2))
    config = MqttConfig(port=limited.port, client_id="edged-cam-1", max_packet_bytes=LIMIT)
    net = NetLoop(MqttClient(config))
    outcomes: queue.Queue[JobOutcome] = queue.Queue()
    settings = OffloadClientConfig(sweep_interval_s=0.05)
    client = OffloadClient("cam-1", net, outbox, settings, outcomes.put)
    client.start()
    net.start()
    try:
        ids = []
        for frame in (UHD, VGA):
            request = client.make_request("det", "jpeg", ttl_s=30)
            assert client.submit(request, frame, local_result={"local": 1}).accepted
            ids.append(request.job_id)
        told = {o.job_id: o for o in (outcomes.get(timeout=15) for _ in ids)}
        big, small = told[ids[0]], told[ids[1]]
        assert small.status == Status.EXIT and small.result is not None
        assert small.result.results == [{"bytes": len(VGA)}]
        assert big.status == Status.FAILED and big.result is None
        assert big.local_result == {"local": 1}  # the edge's own result stands
        assert "request not sent" in big.reason
        assert f"more than the broker's limit (mqtt.max_packet_bytes = {LIMIT})" in big.reason
        record = outbox.get(ids[0])  # the outbox keeps the job, closed with the reason
        assert record is not None and record.status == Status.FAILED
        assert record.last_error == big.reason and record.iteration == 0
        time.sleep(1)  # a retry or a reconnect would come within this
        assert list(responder.processed) == [ids[1]]
        assert outcomes.empty() and outbox.counts()["Failed"] == 1
        counters = client.counters
        assert (counters.sent, counters.failed, counters.too_large) == (1, 1, 1)
        assert net.mqtt.connected and net.mqtt.counters.connects == 1
    finally:
        client.stop()
        net.stop()
        outbox.close()
        responder.stop()
