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
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgefed import certs
from edgefed.clock import now_ms
from edgefed.federation_wire import MAX_VERSION_FRAME_BYTES, FederationTopics
from edgefed.mqtt import Handler, MqttClient, MqttConfig, MqttTls
from edgefed.mqtt.acl import render_acl
from edgefed.ports import free_ports
from edgefed.testing.broker import Broker, TlsFiles, make_tls_files
from edgefed.testing.edgecore import wait_until
from edgefed.wire import (
    DEFAULT_MAX_BYTES,
    OffloadRequest,
    OffloadResult,
    Topics,
    decode_reply,
    decode_request,
    encode_message,
    encode_payload,
    encode_request,
)
from tests.packaging.test_kubeedge_manifests import the
from tests.support.paths import REPO

MOSQUITTO = REPO / "packaging" / "mosquitto"
DOCS = REPO / "docs"
TLS_FILES = ("cafile", "certfile", "keyfile")
DEVICE = "demo/edge-01"
BRIDGE = "edgefed-bridge-demo"


def _sub(pattern: str, replacement: str, text: str) -> str:
    out, n = re.subn(pattern, replacement, text, flags=re.M)
    assert n == 1, f"{pattern!r} not found exactly once"
    return out


def _without_listener(config: str) -> str:
    keep = ("user ", "log_", "persistence ")
    return "".join(line + "\n" for line in config.splitlines() if line.startswith(keep))


def localised(shipped: str, broker: Broker, ca: Path, cert: Path, key: Path, acl_text: str) -> str:
    """The shipped broker config ``shipped`` on this test's port, files and ACL."""
    acl = broker.directory / "edgefed.acl"
    acl.write_text(acl_text)
    text = (MOSQUITTO / shipped).read_text()
    text = _sub(r"^listener 8883 \S+$", f"listener {broker.port} 127.0.0.1", text)
    for option, path in (("cafile", ca), ("certfile", cert), ("keyfile", key), ("acl_file", acl)):
        text = _sub(rf"^{option} .*$", f"{option} {path}", text)
    return _without_listener(broker.config_path.read_text()) + text


def server_config(broker: Broker, tls: TlsFiles) -> str:
    """The shipped config, its ACL with this test's bridge (namespace "demo") added."""
    acl = render_acl(bridges={BRIDGE: "demo"})
    return localised("edgefed-server.conf", broker, tls.ca, tls.server_cert, tls.server_key, acl)


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
    broker: Broker,
    client_id: str,
    tls: TlsFiles | None = None,
    cert: certs.Issued | None = None,
    subscriptions: dict[str, Handler] | None = None,
) -> MqttClient:
    """Connected, with ``subscriptions`` (filter: handler) confirmed by the broker."""
    config = MqttConfig(
        host=broker.host,
        port=broker.port,
        client_id=client_id,
        tls=None
        if tls is None or cert is None
        else MqttTls(ca=tls.ca, cert=cert.cert, key=cert.key),
    )
    c = MqttClient(config)
    for topic_filter, handler in (subscriptions or {}).items():
        c.subscribe(topic_filter, handler)
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


def test_a_certificate_holder_cannot_take_serverd_s_client_id_over(sites: Sites) -> None:
    """Any client with a certificate from the CA connecting under serverd's client id
    would disconnect serverd (and take its session over, each reconnecting in turn) if
    the broker kept the id a client asks for: it uses the certificate's name instead."""
    serverd = client(sites.server, "serverd-01", sites.tls, sites.serverd)
    device = certs.issue(sites.tls.ca.parent, "edge-07", days=1)
    intruder = client(sites.server, "serverd-01", sites.tls, device)
    try:
        time.sleep(1.0)  # a takeover would have closed serverd's link by now
        assert serverd.connected and intruder.connected
        assert serverd.counters.connects == 1 and not serverd.counters.last_disconnect
        assert intruder.counters.connects == 1
    finally:
        intruder.stop()
        serverd.stop()


def test_serverd_replicas_on_the_tls_listener_each_have_an_identity(tmp_path: Path) -> None:
    """Replicas that all ask for client id "serverd" stay connected side by side, each
    under its own certificate's name, and the ACL grants each listed one the requests."""
    tls = make_tls_files(tmp_path / "tls")
    broker = Broker(tmp_path / "server")
    acl = render_acl(servers=("serverd-1", "serverd-2"))
    config = localised("edgefed-server.conf", broker, tls.ca, tls.server_cert, tls.server_key, acl)
    broker.config_path.write_text(config)
    topics = Topics()
    names = ("serverd-1", "serverd-2", "serverd-unlisted")
    got: dict[str, queue.Queue[bytes]] = {name: queue.Queue() for name in names}
    with broker:
        replicas = [
            client(
                broker,
                "serverd",
                tls,
                certs.issue(tls.ca.parent, name, days=1),
                {topics.requests_filter(): lambda t, p, n=name: got[n].put(p)},
            )
            for name in names
        ]
        device = client(broker, "edged", tls, certs.issue(tls.ca.parent, "edge-01", days=1))
        try:
            device.publish(topics.request("edge-01"), b"job").wait(5)
            assert got["serverd-1"].get(timeout=5) == got["serverd-2"].get(timeout=5) == b"job"
            time.sleep(0.5)
            assert got["serverd-unlisted"].empty()
            assert all(r.connected and r.counters.connects == 1 for r in replicas)
        finally:
            device.stop()
            for replica in replicas:
                replica.stop()


def test_serverd_s_shipped_config_is_serverd_on_the_shipped_broker(sites: Sites) -> None:
    """serverd/example-config.yaml (the .deb's /etc/edgefed/serverd.yaml) as it is, but
    for the broker's address and the directory of the certificates: on the listener
    of edgefed-server.conf, with the files ``edged certs`` writes for serverd, it reads
    the devices' requests as serverd."""
    raw = yaml.safe_load((REPO / "serverd" / "example-config.yaml").read_text())["mqtt"]
    listener = re.search(r"^listener (\d+) ", (MOSQUITTO / "edgefed-server.conf").read_text(), re.M)
    assert listener and raw["port"] == int(listener.group(1))
    assert raw["max_packet_bytes"] == int(shipped()["max_packet_size"])
    assert raw["tls"]["ca"] == shipped()["cafile"]
    tls_dir = Path(shipped()["cafile"]).parent
    made = {"ca": sites.tls.ca, "cert": sites.serverd.cert, "key": sites.serverd.key}
    assert {k: Path(v) for k, v in raw["tls"].items()} == {
        k: tls_dir / p.name for k, p in made.items()
    }
    config = MqttConfig.model_validate(
        raw | {"host": sites.server.host, "port": sites.server.port, "tls": made}
    )
    topics = Topics()
    requests: queue.Queue[bytes] = queue.Queue()
    serverd = MqttClient(config)
    serverd.subscribe(topics.requests_filter(), lambda t, p: requests.put(p))
    serverd.start()
    device = client(sites.server, "edged", sites.tls, certs.issue(sites.tls.ca.parent, DEVICE))
    try:
        assert serverd.wait_connected(10)
        device.publish(topics.request(DEVICE), b"job").wait(5)
        assert requests.get(timeout=5) == b"job"
    finally:
        device.stop()
        serverd.stop()


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


def settings(config: str) -> dict[str, str]:
    """The ``option value`` lines of a mosquitto config (the last of an option wins)."""
    found = {}
    for line in config.splitlines():
        option, _, value = line.strip().partition(" ")
        if option and not option.startswith("#"):
            found[option] = value.strip()
    return found


def shipped() -> dict[str, str]:
    return settings((MOSQUITTO / "edgefed-server.conf").read_text())


def in_the_cluster() -> dict[str, str]:
    """The KubeEdge manifests' broker (packaging/kubeedge/serverd.yaml)."""
    return settings(the("ConfigMap", "edgefed-mqtt-config")["data"]["mosquitto.conf"])


def test_the_server_broker_refuses_packets_only_above_the_largest_message() -> None:
    limit = int(shipped()["max_packet_size"])
    header = 5 + 2 + 65_535 + 2  # fixed header, the longest topic with its length, packet id
    assert limit >= MAX_VERSION_FRAME_BYTES + header  # a federated global version
    assert limit >= DEFAULT_MAX_BYTES + header  # an offload request
    assert limit <= 2 * MAX_VERSION_FRAME_BYTES  # a bound, not the protocol's 256 MiB


def test_the_kubeedge_broker_has_the_shipped_settings() -> None:
    ours, cluster = shipped(), in_the_cluster()
    for option in (
        "set_tcp_nodelay",
        "max_queued_messages",
        "queue_qos0_messages",
        "max_packet_size",
        "require_certificate",
        "use_identity_as_username",
        "use_username_as_clientid",
        "tls_version",
    ):
        assert cluster.get(option) == ours[option], option


def test_the_brokers_and_the_docs_use_the_files_edged_certs_init_writes(tmp_path: Path) -> None:
    init = subprocess.run(
        [sys.executable, "-m", "edged", "certs", "init", str(tmp_path / "tls")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    written = {path.name for path in (tmp_path / "tls").iterdir()}
    files = [Path(shipped()[option]) for option in TLS_FILES]
    directory = files[0].parent
    assert {path.parent for path in files} == {directory} == {Path("/etc/edgefed/tls")}
    names = [path.name for path in files]
    assert set(names) <= written, f"edged certs init writes {sorted(written)}"
    assert [Path(in_the_cluster()[option]).name for option in TLS_FILES] == names
    kubeedge = (DOCS / "kubeedge.md").read_text()
    assert all(f"--from-file={directory}/{name}" in kubeedge for name in names)
    for doc in (DOCS / "security.md", DOCS / "kubeedge.md"):
        text = doc.read_text()
        for used in re.findall(r"edged certs (?:init|issue) (/\S*)", text):
            assert Path(used) == directory, f"{doc.name}: edged certs ... {used}"
        for option, used in re.findall(r"^(cafile|certfile|keyfile) (\S+)$", text, re.M):
            assert used == shipped()[option], f"{doc.name}: {option} {used}"


def generate_nodes(out: Path, nodes: list[str], broker: str, tls: Path) -> None:
    """``packaging/kubeedge/nodes.py`` as a site runs it, its bridge certificates issued
    from the test CA and read by the bridges from that directory."""
    subprocess.run(
        [
            sys.executable,
            str(REPO / "packaging/kubeedge/nodes.py"),
            f"--out={out}",
            f"--broker={broker}",
            f"--tls={tls}",
            f"--tls-dir={tls}",
            *nodes,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def cluster_broker(tmp_path: Path, acl: str, tls: TlsFiles, outside: int, inside: int) -> Broker:
    """The KubeEdge manifests' broker as its ConfigMap configures it (ports and paths
    substituted) with ``acl``: bridges on ``outside``, in-cluster clients on ``inside``."""
    config_map = the("ConfigMap", "edgefed-mqtt-config")["data"]
    broker = Broker(tmp_path / "cluster-broker", port=outside)
    acl_file = tmp_path / "edgefed.acl"
    acl_file.write_text(acl)
    text = config_map["mosquitto.conf"]
    text = _sub(r"^\s*listener 1883 0\.0\.0\.0$", f"listener {inside} 127.0.0.1", text)
    text = _sub(r"^\s*listener 8883 0\.0\.0\.0$", f"listener {broker.port} 127.0.0.1", text)
    text = _sub(r"^\s*persistence true$", "persistence false", text)
    text = _sub(r"^\s*persistence_location .*$", "", text)
    text = _sub(r"^\s*cafile .*$", f"cafile {tls.ca}", text)
    text = _sub(r"^\s*certfile .*$", f"certfile {tls.server_cert}", text)
    text = _sub(r"^\s*keyfile .*$", f"keyfile {tls.server_key}", text)
    text, n = re.subn(r"^\s*acl_file .*$", f"acl_file {acl_file}", text, flags=re.M)
    assert n == 2, "one acl_file per listener (per_listener_settings)"
    broker.config_path.write_text(_without_listener(broker.config_path.read_text()) + text)
    return broker


def generated_acl(out: Path) -> str:
    """The ACL of the overlay's ConfigMap patch (what the cluster broker runs with)."""
    (patch,) = yaml.safe_load_all((out / "generated" / "broker-acl.yaml").read_text())
    assert patch["kind"] == "ConfigMap" and patch["metadata"]["name"] == "edgefed-mqtt-config"
    acl: str = patch["data"]["edgefed.acl"]
    return acl


def test_the_cluster_broker_lets_each_bridge_use_its_namespace_only(tmp_path: Path) -> None:
    """The KubeEdge manifests' broker with the ACL ``packaging/kubeedge/nodes.py`` writes
    for two nodes (device ids edgefed/<node>): serverd, anonymous on the in-cluster
    listener, reads the requests; a bridge publishes and reads its own node's only, and
    one without a block nothing of the offload (with no ACL, any certificate from the CA
    could read every reply and forge any)."""
    assert the("ConfigMap", "edgefed-mqtt-config")["data"]["edgefed.acl"] == render_acl(servers=())
    tls = make_tls_files(tmp_path / "tls")
    generate_nodes(tmp_path / "site", ["node1", "node2"], "127.0.0.1:8883", tls.ca.parent)
    outside, inside = free_ports(2)
    broker = cluster_broker(tmp_path, generated_acl(tmp_path / "site"), tls, outside, inside)
    topics = Topics()
    requests: queue.Queue[bytes] = queue.Queue()
    replies: queue.Queue[tuple[str, bytes]] = queue.Queue()
    with broker:
        serverd = MqttClient(MqttConfig(host="127.0.0.1", port=inside, client_id="serverd"))
        serverd.subscribe(topics.requests_filter(), lambda t, p: requests.put(p))
        serverd.start()
        assert serverd.wait_connected(10)  # with its subscription confirmed
        identities = ("edgefed-bridge-node1", "edgefed-bridge-node2", "edgefed-bridge-unlisted")
        issued = {name: tls.ca.parent / name for name in identities[:2]}  # by nodes.py
        bridges = {
            name: client(
                broker,
                name,
                tls,
                certs.Issued(issued[name].with_suffix(".pem"), issued[name].with_suffix(".key"))
                if name in issued
                else certs.issue(tls.ca.parent, name, days=1),
                {"edgefed/offload/#": lambda t, p, n=name: replies.put((n, p))},
            )
            for name in identities
        }
        try:
            node1, node2 = bridges["edgefed-bridge-node1"], bridges["edgefed-bridge-node2"]
            node1.publish(topics.request("edgefed/node1"), b"node1's").wait(5)
            node1.publish(topics.request("edgefed/node2"), b"as node2").wait(5)
            node2.publish(topics.request("edgefed/node1"), b"as node1").wait(5)
            unlisted = bridges["edgefed-bridge-unlisted"]
            unlisted.publish(topics.request("edgefed/node1"), b"forged").wait(5)
            serverd.publish(topics.reply("edgefed/node1"), b"answer").wait(5)
            assert requests.get(timeout=5) == b"node1's"
            assert replies.get(timeout=5) == ("edgefed-bridge-node1", b"answer")
            time.sleep(0.5)
            assert requests.empty() and replies.empty()
        finally:
            serverd.stop()
            for bridge in bridges.values():
                bridge.stop()


def test_a_node_s_generated_bridge_carries_its_device_s_jobs_only(tmp_path: Path) -> None:
    """The overlay's ``generated/bridges/node1.conf`` on a node's own broker, the cluster
    broker with the overlay's ACL: node1's device gets its reply across the bridge; a job
    published on that node's broker under node2's device id, each time just before node1's
    on the same connection, never reaches the cluster."""
    tls = make_tls_files(tmp_path / "tls")
    site = tmp_path / "site"
    outside, inside = free_ports(2)
    generate_nodes(site, ["node1", "node2"], f"127.0.0.1:{outside}", tls.ca.parent)
    cluster = cluster_broker(tmp_path, generated_acl(site), tls, outside, inside)
    edge = Broker(tmp_path / "edge")
    edge.config_path.write_text(
        edge.config_path.read_text() + (site / "generated" / "bridges" / "node1.conf").read_text()
    )
    topics = Topics()
    requests: queue.Queue[bytes] = queue.Queue()
    replies: queue.Queue[bytes] = queue.Queue()
    with cluster, edge:
        serverd = MqttClient(MqttConfig(host="127.0.0.1", port=inside, client_id="serverd"))
        serverd.subscribe(topics.requests_filter(), lambda t, p: requests.put(p))
        serverd.start()
        reply_topic = topics.reply("edgefed/node1")
        device = client(
            edge, "node1-edged", subscriptions={reply_topic: lambda t, p: replies.put(p)}
        )
        try:
            assert serverd.wait_connected(10)
            deadline = time.monotonic() + 30
            while requests.empty() and time.monotonic() < deadline:
                device.publish(topics.request("edgefed/node2"), b"forged")
                device.publish(topics.request("edgefed/node1"), b"job").wait(5)
                time.sleep(0.2)
            assert not requests.empty(), "the bridge did not carry node1's job in 30 s"
            assert requests.get() == b"job"  # node2's, published just before, was refused
            serverd.publish(reply_topic, b"answer").wait(5)
            assert replies.get(timeout=10) == b"answer"
            time.sleep(0.5)
            assert set(_drain(requests)) <= {b"job"}
        finally:
            device.stop()
            serverd.stop()


def _drain(q: queue.Queue[bytes]) -> list[bytes]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out
