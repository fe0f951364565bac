"""packaging/mosquitto/edgefed-node.conf: an edge node's broker, run on a real mosquitto.

As docs/kubeedge.md installed it before, the node's broker was Debian's default: anonymous
clients on 127.0.0.1:1883, so any user or hostNetwork pod on the node could read every
offloaded frame, answer jobs, open federated rounds and set twin deltas. The shipped node
config admits certificates of the EdgeFed CA only and confines each to its topics."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.mqtt.acl import render_acl
from edgefed.ports import free_ports
from edgefed.testing.broker import Broker
from edgefed.testing.edgecore import wait_until
from edgefed.wire import Topics
from tests.edgefed.test_broker_acl import delivered
from tests.packaging.test_kubeedge_nodes import run
from tests.packaging.test_mosquitto_bridge import MOSQUITTO, _sub, localised

DEVICE, OTHER = "edgefed/edge-node-1", "edgefed/edge-node-2"
DELTA = f"$hw/events/device/{DEVICE}/twin/update/delta"


def node_config(broker: Broker) -> str:
    """The shipped node config with this test's port and ACL, and the certificates
    ``nodes.py --tls`` issues for node edge-node-1 (the node broker's, the device's and
    EdgeCore's; the broker's clients connect with the last two)."""
    assert broker.tls is not None
    tls = broker.tls.ca.parent
    out = broker.directory / "site"
    issued = run(f"--out={out}", "--broker=127.0.0.1:8883", f"--tls={tls}", "edge-node-1")
    assert issued.returncode == 0, issued.stderr
    cert, key = tls / "node-broker-edge-node-1.pem", tls / "node-broker-edge-node-1.key"
    return localised("edgefed-node.conf", broker, broker.tls.ca, cert, key, render_acl())


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "node", tls=True, identities=[DEVICE, OTHER, "edgecore"])
    broker.config_path.write_text(node_config(broker))
    with broker:
        yield broker


def _listen(
    broker: Broker, identity: str, topic: str
) -> tuple[MqttClient, queue.Queue[tuple[str, bytes]]]:
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    client = MqttClient(broker.client_config(identity))
    client.subscribe(topic, lambda t, payload: got.put((t, payload)))
    client.start()
    assert client.wait_connected(10), identity
    return client, got


def test_a_client_without_a_certificate_of_the_ca_is_refused(node: Broker) -> None:
    plain = MqttClient(MqttConfig(host=node.host, port=node.port, client_id="anyone"))
    plain.start()
    try:
        wait_until(lambda: plain.counters.connect_failures >= 2)
        assert not plain.connected
    finally:
        plain.stop()


def test_on_the_node_only_edgecore_sets_the_twin_and_a_device_reads_its_own_jobs_only(
    node: Broker,
) -> None:
    topics = Topics()
    device, deltas = _listen(node, DEVICE, DELTA)
    other, snooped = _listen(node, OTHER, "edgefed/offload/#")
    core = node.started_client("edgecore")
    try:
        other.publish(DELTA, b'{"delta": {"offload_policy": "always"}}').wait(5)
        core.publish(DELTA, b'{"delta": {"log_level": "DEBUG"}}').wait(5)
        assert delivered(deltas, 1) == [b'{"delta": {"log_level": "DEBUG"}}']
        device.publish(topics.request(DEVICE), b"a frame").wait(5)
        other.publish(topics.reply(DEVICE), b"forged").wait(5)
        assert delivered(snooped, 0) == []
    finally:
        for client in (device, other, core):
            client.stop()


def test_the_node_config_and_the_bridge_config_run_together(tmp_path: Path) -> None:
    """Both go into the node's conf.d: one mosquitto loads them (the bridge's server
    away here) and serves the node's clients."""
    broker = Broker(tmp_path / "node", tls=True, identities=[DEVICE])
    (dead,) = free_ports(1)
    bridge = (MOSQUITTO / "edgefed-bridge.conf").read_text()
    bridge = _sub(r"^address .*$", f"address 127.0.0.1:{dead}", bridge)
    broker.config_path.write_text(node_config(broker) + bridge)
    with broker:
        device = broker.started_client(DEVICE)
        try:
            assert device.connected
        finally:
            device.stop()
