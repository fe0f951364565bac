"""Hostile replies on edged's own reply topic (hypothesis, a real mosquitto, a real
outbox): each is dropped and counted; the client never fails and still completes jobs."""

from __future__ import annotations

import queue
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from edged.netloop import NetLoop
from edged.offload.client import JobOutcome, OffloadClient
from edged.offload.outbox import Outbox
from edged.offload.records import OutboxConfig
from edgefed.lifecycle import Status
from edgefed.mqtt import MqttClient
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from edgefed.wire import Topics
from tests.edged.offload.responder import Responder
from tests.support.hostile import hostile_payloads

CASES = 400  # CI-sized
JPEG = b"\xff\xd8\xff\xe0" + b"\x10" * 200 + b"\xff\xd9"


def test_hostile_replies_never_break_the_offload_client(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker", identities=["serverd", "cam-1"]) as broker:
        outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.sqlite"))
        net = NetLoop(MqttClient(broker.client_config("cam-1")))
        outcomes: queue.Queue[JobOutcome] = queue.Queue()
        client = OffloadClient("cam-1", net, outbox, on_outcome=outcomes.put)
        fuzzer = MqttClient(broker.client_config("serverd"))  # the one allowed to answer
        client.start()
        net.start()
        fuzzer.start()
        sent = [0]
        try:
            assert net.mqtt.wait_connected(10) and fuzzer.wait_connected(10)
            topic = Topics().reply("cam-1")

            @settings(
                max_examples=CASES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(payload=hostile_payloads)
            def publish(payload: bytes) -> None:
                assert fuzzer.publish(topic, payload).wait(5)
                sent[0] += 1

            publish()
            mqtt = net.mqtt.counters
            wait_until("every hostile reply handled", lambda: mqtt.messages_in >= sent[0], 20)
            assert mqtt.handler_errors == 0
            assert client.counters.worker_errors == 0 and client.counters.listener_errors == 0
            assert outcomes.empty()  # none of them closed a job
            # and it still works: a real job goes out and its answer comes back
            responder = Responder(broker.port, config=broker.client_config("serverd")).start()
            try:
                client.submit(client.make_request("det", "jpeg", ttl_s=30), JPEG)
                assert outcomes.get(timeout=20).status == Status.EXIT
            finally:
                responder.stop()
        finally:
            fuzzer.stop()
            client.stop()
            net.stop()
            outbox.close()
    assert sent[0] >= CASES // 2
