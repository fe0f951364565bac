"""packaging/mosquitto: the shipped server and bridge configs carry the offload and
federation contracts.

Two real mosquittos: the server broker runs ``edgefed-server.conf`` (mutual TLS) and
the edge broker runs ``edgefed-bridge.conf`` with its commented TLS options switched
on. edged's and serverd's MQTT adapters then exchange a real offload request and reply,
and a federated round's messages, across the bridge; twin traffic stays on the edge.
"""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgefed import certs
from edgefed.clock import now_ms
from edgefed.federation_wire import FederationTopics
from edgefed.mqtt import MqttClient, MqttConfig, MqttTls
from edgefed.mqtt.acl import render_acl
from edgefed.testing.broker import Broker, TlsFiles, make_tls_files
from edgefed.testing.edgecore import wait_until
from edgefed.wire import (
    OffloadRequest,
    OffloadResult,
    Topics,
    decode_reply,
    decode_request,
    encode_message,
    encode_payload,
    encode_request,
)
from tests.support.paths import REPO

MOSQUITTO = REPO / "packaging" / "mosquitto"
DEVICE = "demo/edge-01"
BRIDGE = "edgefed-bridge-demo"


def _sub(pattern: str, replacement: str, text: str) -> str:
    out, n = re.subn(pattern, replacement, text, flags=re.M)
    assert n == 1, f"{pattern!r} not found exactly once"
    return out


def _without_listener(config: str) -> str:
    keep = ("user ", "log_", "persistence ")
    return "".join(line + "\n" for line in config.splitlines() if line.startswith(keep))


def server_config(broker: Broker, tls: TlsFiles) -> str:
    """The shipped config, its ACL with this test's bridge (namespace "demo") added."""
    acl = broker.directory / "edgefed.acl"
    acl.write_text(render_acl(bridges={BRIDGE: "demo"}))
    text = (MOSQUITTO / "edgefed-server.conf").read_text()
    text = _sub(r"^listener 8883 0\.0\.0\.0$", f"listener {broker.port} 127.0.0.1", text)
    text = _sub(r"^cafile .*$", f"cafile {tls.ca}", text)
    text = _sub(r"^certfile .*$", f"certfile {tls.server_cert}", text)
    text = _sub(r"^keyfile .*$", f"keyfile {tls.server_key}", text)
    text = _sub(r"^acl_file .*$", f"acl_file {acl}", text)
    return _without_listener(broker.config_path.read_text()) + text


def bridge_config(edge: Broker, server: Broker, tls: TlsFiles) -> str:
    bridge = certs.issue(tls.ca.parent, BRIDGE, days=1)
    text = (MOSQUITTO / "edgefed-bridge.conf").read_text()
    text = _sub(r"^address .*$", f"address 127.0.0.1:{server.port}", text)
    text = _sub(r"^#bridge_cafile .*$", f"bridge_cafile {tls.ca}", text)
    text = _sub(r"^#bridge_certfile .*$", f"bridge_certfile {bridge.cert}", text)
    text = _sub(r"^#bridge_keyfile .*$", f"bridge_keyfile {bridge.key}", text)
    return edge.config_path.read_text() + text


@dataclass
class Sites:
    edge: Broker
    server: Broker
    tls: TlsFiles
    serverd: certs.Issued  # serverd's client certificate (common name "serverd")


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    tls = make_tls_files(tmp_path / "tls")
    serverd = certs.issue(tls.ca.parent, "serverd", days=1)
    server = Broker(tmp_path / "server")
    server.config_path.write_text(server_config(server, tls))
    edge = Broker(tmp_path / "edge")
    edge.config_path.write_text(bridge_config(edge, server, tls))
    server.start()
    try:
        edge.start()
        try:
            yield Sites(edge, server, tls, serverd)
        finally:
            edge.stop()
    finally:
        server.stop()


def client(
    broker: Broker, client_id: str, tls: TlsFiles | None = None, cert: certs.Issued | None = None
) -> MqttClient:
    config = MqttConfig(
        host=broker.host,
        port=broker.port,
        client_id=client_id,
        tls=None
        if tls is None or cert is None
        else MqttTls(ca=tls.ca, cert=cert.cert, key=cert.key),
    )
    c = MqttClient(config)
    c.start()
    assert c.wait_connected(10), f"{client_id} could not connect"
    return c


def test_server_config_requires_a_client_certificate(sites: Sites, tmp_path: Path) -> None:
    stranger = make_tls_files(tmp_path / "other-ca")  # a certificate from another CA
    bad = MqttClient(
        MqttConfig(
            host=sites.server.host,
            port=sites.server.port,
            client_id="stranger",
            tls=MqttTls(ca=sites.tls.ca, cert=stranger.client_cert, key=stranger.client_key),
        )
    )
    bad.start()
    try:
        wait_until(lambda: bad.counters.connect_failures >= 1)
        assert not bad.connected
    finally:
        bad.stop()


def test_offload_request_and_reply_cross_the_bridge(sites: Sites) -> None:
    topics = Topics()
    requests: queue.Queue[bytes] = queue.Queue()
    replies: queue.Queue[bytes] = queue.Queue()
    twin_at_server: queue.Queue[bytes] = queue.Queue()
    serverd = client(sites.server, "serverd", sites.tls, sites.serverd)
    edged = client(sites.edge, "edged")
    try:
        # Subscriptions are applied in order on each connection: once a request arrives,
        # the "$hw/#" subscription before it is active, and so is edged's reply one.
        serverd.subscribe("$hw/#", lambda t, p: twin_at_server.put(p))
        serverd.subscribe(topics.requests_filter(), lambda t, p: requests.put(p))
        edged.subscribe(topics.reply(DEVICE), lambda t, p: replies.put(p))
        now = now_ms()
        request = OffloadRequest(
            job_id="job-0000000001",
            device_id=DEVICE,
            model="scene",
            deadline=now + 60_000,
            created=now,
            payload_kind="tensor",
        )
        body = encode_payload("tensor", np.arange(12, dtype=np.float32).reshape(3, 4))
        bridged = _send_until_bridged(edged, encode_request(request, body), requests)
        got = decode_request(bridged)
        assert got.request == request
        assert got.array is not None and got.array.shape == (3, 4)
        assert twin_at_server.empty()

        result = OffloadResult(
            job_id=request.job_id,
            device_id=DEVICE,
            model="scene",
            results=[{"label": "espresso", "score": 0.96}],
            served_by="serverd-0/triton-0",
            completed=now + 5,
        )
        serverd.publish(topics.reply(DEVICE), encode_message(result))
        assert decode_reply(replies.get(timeout=10)) == result
    finally:
        edged.stop()
        serverd.stop()


def test_a_federated_round_crosses_the_bridge(sites: Sites) -> None:
    """The round (retained on the server broker) and this device's ack reach edged; its
    update reaches serverd; another namespace's ack never leaves the server broker."""
    fed = FederationTopics()
    serverd = client(sites.server, "serverd", sites.tls, sites.serverd)
    edged = client(sites.edge, "edged")
    rounds: queue.Queue[bytes] = queue.Queue()
    acks: queue.Queue[tuple[str, bytes]] = queue.Queue()
    updates: queue.Queue[bytes] = queue.Queue()
    try:
        serverd.subscribe(fed.filter("update"), lambda t, p: updates.put(p))
        serverd.publish(fed.round("digits"), b"round 1", retain=True).wait(5)
        edged.subscribe(fed.round("digits"), lambda t, p: rounds.put(p))
        edged.subscribe(fed.filter("ack"), lambda t, p: acks.put((t, p)))
        assert rounds.get(timeout=15) == b"round 1"
        deadline = time.monotonic() + 15
        while updates.empty() and time.monotonic() < deadline:
            edged.publish(fed.update(DEVICE), b"update chunk")
            time.sleep(0.5)
        assert updates.get(timeout=1) == b"update chunk"
        serverd.publish(fed.ack("other/edge-09"), b"not this node's")
        serverd.publish(fed.ack(DEVICE), b"ack")
        assert acks.get(timeout=10) == (fed.ack(DEVICE), b"ack")
        time.sleep(0.5)
        assert acks.empty()
    finally:
        edged.stop()
        serverd.stop()


def _send_until_bridged(edged: MqttClient, request: bytes, inbox: queue.Queue[bytes]) -> bytes:
    """Publish twin traffic then the request until the bridge (which connects on its own
    schedule) carries the request. Had it carried the twin message published just before
    on the same connection, that would have arrived first."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        edged.publish(f"$hw/events/device/{DEVICE}/twin/update", b"{}")
        edged.publish(Topics().request(DEVICE), request)
        try:
            return inbox.get(timeout=0.5)
        except queue.Empty:
            continue
    raise AssertionError("the bridge did not carry the request within 15 s")
