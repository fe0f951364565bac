"""Child process for the kill -9 test: enqueue jobs, get some sent, then wait to be killed.

Usage: python edge_child.py PORT DB [MODEL]. Prints "ready" once 20 jobs are at the broker
(or further on) and 10 more wait in the outbox with the link down.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edged.netloop import NetLoop
from edged.offload.client import OffloadClient, OffloadClientConfig
from edged.offload.outbox import Outbox
from edged.offload.records import OutboxConfig
from edgefed.mqtt import MqttClient, MqttConfig

JPEG = b"\xff\xd8\xff\xe0" + b"\x10" * 2000 + b"\xff\xd9"


def main(port: int, db: Path, model: str = "det") -> None:
    outbox = Outbox(OutboxConfig(path=db, result_timeout_s=60.0))
    net = NetLoop(MqttClient(MqttConfig(port=port, client_id="edged-child")))
    client = OffloadClient("cam-1", net, outbox, OffloadClientConfig(sweep_interval_s=0.05))
    client.start()
    net.start()
    assert net.mqtt.wait_connected(10)

    def submit(n: int) -> None:
        request = client.make_request(model, "jpeg", priority=n % 3, ttl_s=120.0)
        client.submit(request, JPEG, local_result={"n": n})

    for n in range(20):
        submit(n)
    waiting = ("Enqueue", "Preprocessing")  # not yet acknowledged by the broker
    while sum(n for status, n in outbox.counts().items() if status not in waiting) < 20:
        time.sleep(0.01)
    net.mqtt.stop()  # the link goes down; the loop and the client go on
    for n in range(20, 30):
        submit(n)
    print("ready", flush=True)
    time.sleep(120)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
