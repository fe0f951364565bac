"""``python -m bench broker-cluster``: the clustered broker against the single mosquitto.

Starts a three-node NATS cluster (``edgefed.testing.natscluster``: MQTT over JetStream,
free loopback ports) and times its start (processes launched to every node's MQTT
listener accepting connections, then to the first QoS 1 message crossing nodes), its RSS
per node, and a QoS 1 round trip of a 50 KB frame from a client on one node to a responder
on another and back (``bench.offload_rtt``'s floor responder: the two MQTT legs alone).
The same round trip through one mosquitto (TCP_NODELAY) is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.offload_rtt import FLOOR_REPLY, FLOOR_REQUEST, REPO
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.natscluster import NatsCluster


def round_trips(client_port: int, responder_port: int, n: int) -> dict[str, Any]:
    """``n`` QoS 1 round trips of a 50 KB payload; the responder on ``responder_port``."""
    responder = subprocess.Popen(
        [sys.executable, "-c", f"from bench.offload_rtt import respond; respond({responder_port})"],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    replies: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    mqtt = MqttClient(MqttConfig(port=client_port, client_id="bench-cluster-client"))
    mqtt.subscribe(FLOOR_REPLY, lambda _t, data: replies.put(data))
    mqtt.start()
    try:
        if responder.stdout is None or responder.stdout.readline().strip() != "ready":
            raise SystemExit("the responder did not start")
        if not mqtt.wait_connected(30):
            raise SystemExit("no broker")
        payload = os.urandom(50_000)
        first = time.perf_counter()
        while True:  # the first message that crosses: the cluster's subscriptions are in place
            mqtt.publish(FLOOR_REQUEST, payload)
            try:
                replies.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        ready_s = time.perf_counter() - first
        times = []
        for _ in range(n):
            start = time.perf_counter()
            mqtt.publish(FLOOR_REQUEST, payload)
            replies.get(timeout=30)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        mqtt.stop()
        responder.communicate(timeout=30)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
        "first_crossing_s": round(ready_s, 3),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench broker-cluster", description=__doc__)
    parser.add_argument("--requests", type=int, default=500, help="timed round trips each")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        cluster = NatsCluster(directory / "nats")
        start = time.perf_counter()
        cluster.start()
        listening_s = time.perf_counter() - start
        try:
            nats = round_trips(cluster.mqtt_ports[1], cluster.mqtt_ports[0], args.requests)
            rss = [
                round(psutil.Process(pid).memory_info().rss / 2**20, 1) for pid in cluster.pids()
            ]
        finally:
            cluster.stop()
        with Broker(directory / "mosquitto") as broker:
            mosquitto = round_trips(broker.port, broker.port, args.requests)
    report = {
        "nats_nodes": 3,
        "nats_listening_s": round(listening_s, 3),
        "nats_first_crossing_s": nats.pop("first_crossing_s"),
        "nats_rss_mb": rss,
        "nats_cross_node_p50_ms": nats["p50_ms"],
        "nats_cross_node_p99_ms": nats["p99_ms"],
        "mosquitto_p50_ms": mosquitto["p50_ms"],
        "mosquitto_p99_ms": mosquitto["p99_ms"],
        "payload_bytes": 50_000,
        "requests": args.requests,
    }
    print(json.dumps(report))
    return 0
