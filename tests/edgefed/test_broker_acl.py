"""Identities and the ACL on a real mosquitto configured as shipped (``edgefed.mqtt.acl``):
anonymous clients and clients without a certificate are refused, a device publishes and
reads only its own topics, only serverd answers, only EdgeCore sets twin deltas."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edged.netloop import NetLoop
from edged.offload.client import JobOutcome, OffloadClient
from edged.offload.outbox import Outbox
from edged.offload.records import OutboxConfig
from edgefed.federation_wire import FederationTopics
from edgefed.lifecycle import Status
from edgefed.mqtt import Handler, MqttClient, MqttConfig
from edgefed.mqtt.acl import render_acl
from edgefed.testing.broker import Broker
from edgefed.wire import OffloadResult, Topics, decode_request, encode_message
from tests.edged.offload.responder import Responder
from tests.serverd.harness import frame_jpeg
from tests.support.paths import REPO

IDENTITIES = ["serverd", "edgecore", "site/cam-1", "evil"]
TOPICS = Topics()
DELTA = "$hw/events/device/site/cam-1/twin/update/delta"


def connect(
    broker: Broker, identity: str, subscriptions: dict[str, Handler] | None = None
) -> MqttClient:
    """Connected as ``identity``, with ``subscriptions`` (filter: handler) confirmed."""
    client = MqttClient(broker.client_config(identity))
    for topic_filter, handler in (subscriptions or {}).items():
        client.subscribe(topic_filter, handler)
    client.start()
    assert client.wait_connected(10), f"{identity} could not connect"
    return client


Listen = Callable[..., "queue.Queue[tuple[str, bytes]]"]


@pytest.fixture
def listen() -> Iterator[Listen]:
    """``listen(broker, identity, topic_filter)``: what ``identity`` receives on the
    filter, through a connection of its own made with the subscription, so that it is in
    place (the broker's SUBACK) when this returns; closed after the test."""
    clients: list[MqttClient] = []

    def listen(broker: Broker, identity: str, topic_filter: str) -> queue.Queue[tuple[str, bytes]]:
        got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        clients.append(connect(broker, identity, {topic_filter: lambda t, p: got.put((t, p))}))
        return got

    yield listen
    for client in clients:
        client.stop()


def delivered(got: queue.Queue[tuple[str, bytes]], count: int, quiet: float = 0.3) -> list[bytes]:
    """The payloads received: ``count`` of them waited for (10 s at most), then any more
    that come within ``quiet`` seconds (none is allowed to, where the ACL works)."""
    out = []
    deadline = time.monotonic() + 10
    while len(out) < count and (left := deadline - time.monotonic()) > 0:
        try:
            out.append(got.get(timeout=left)[1])
        except queue.Empty:
            break
    while True:
        try:
            out.append(got.get(timeout=quiet)[1])
        except queue.Empty:
            return out


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("acl"), identities=IDENTITIES) as running:
        yield running


def paho_connect_code(broker: Broker, **auth: str) -> int:
    """The CONNACK reason code a raw paho client gets (0: accepted)."""
    codes: queue.Queue[int] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="raw", protocol=paho.MQTTv311)
    if auth:
        client.username_pw_set(auth["username"], auth["password"])
    client.on_connect = lambda c, u, f, rc, p: codes.put(rc.value)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        return codes.get(timeout=5)
    finally:
        client.loop_stop()
        client.disconnect()


def test_anonymous_and_wrong_password_clients_are_refused(broker: Broker) -> None:
    assert paho_connect_code(broker) != 0
    assert paho_connect_code(broker, username="site/cam-1", password="guess") != 0
    config = broker.client_config("site/cam-1")
    password = config.password.get_secret_value() if config.password else ""
    assert paho_connect_code(broker, username="site/cam-1", password=password) == 0


def test_a_device_publishes_only_its_own_requests(broker: Broker, listen: Listen) -> None:
    cam, evil = connect(broker, "site/cam-1"), connect(broker, "evil")
    try:
        requests = listen(broker, "serverd", TOPICS.requests_filter())
        cam.publish(TOPICS.request("site/cam-1"), b"mine").wait(5)
        evil.publish(TOPICS.request("site/cam-1"), b"posing as cam-1").wait(5)
        evil.publish(TOPICS.request("evil"), b"evil's own").wait(5)
        assert sorted(delivered(requests, 2)) == [b"evil's own", b"mine"]
    finally:
        cam.stop()
        evil.stop()


def test_only_serverd_answers_and_a_device_reads_only_its_own_replies(
    broker: Broker, listen: Listen
) -> None:
    server, cam, evil = (connect(broker, i) for i in ("serverd", "site/cam-1", "evil"))
    try:
        mine = listen(broker, "site/cam-1", TOPICS.reply("site/cam-1"))
        snooped = listen(broker, "evil", "edgefed/offload/#")  # granted only where the ACL says
        evil.publish(TOPICS.reply("site/cam-1"), b"forged").wait(5)
        server.publish(TOPICS.reply("site/cam-1"), b"real").wait(5)
        cam.publish(TOPICS.request("site/cam-1"), b"request").wait(5)
        assert delivered(mine, 1) == [b"real"]
        assert delivered(snooped, 0) == []
    finally:
        for c in (server, cam, evil):
            c.stop()


def test_only_edgecore_sets_twin_deltas(broker: Broker, listen: Listen) -> None:
    core, cam = connect(broker, "edgecore"), connect(broker, "site/cam-1")
    try:
        deltas = listen(broker, "site/cam-1", DELTA)
        cam.publish(DELTA, b'{"delta": {"offload_policy": "always"}}').wait(5)
        assert delivered(deltas, 0) == []
        core.publish(DELTA, b'{"delta": {"log_level": "DEBUG"}}').wait(5)
        assert delivered(deltas, 1) == [b'{"delta": {"log_level": "DEBUG"}}']
    finally:
        core.stop()
        cam.stop()


def test_federation_a_device_answers_for_itself_and_only_serverd_runs_rounds(
    broker: Broker, listen: Listen
) -> None:
    """Federated learning works on the shipped ACL (it granted none of its topics), and a
    device can neither send updates, reports or offers as another, nor open a round,
    publish a version or acknowledge an update, nor read another device's acks."""
    fed = FederationTopics()
    server, cam, evil = (connect(broker, i) for i in ("serverd", "site/cam-1", "evil"))
    try:
        to_server = {
            k: listen(broker, "serverd", fed.filter(k)) for k in ("update", "adoption", "samples")
        }
        rounds = listen(broker, "site/cam-1", fed.filter("round"))
        models = listen(broker, "site/cam-1", fed.filter("model"))
        acks = listen(broker, "site/cam-1", fed.filter("ack"))
        snooped = listen(broker, "evil", fed.filter("ack"))
        for kind, got in to_server.items():
            topic = getattr(fed, kind)
            cam.publish(topic("site/cam-1"), b"mine").wait(5)
            evil.publish(topic("site/cam-1"), b"posing as cam-1").wait(5)
            assert delivered(got, 1) == [b"mine"], kind
        evil.publish(fed.round("digits"), b"1000 epochs").wait(5)
        evil.publish(fed.model("digits"), b"a version").wait(5)
        evil.publish(fed.ack("site/cam-1"), b"forged ack").wait(5)
        server.publish(fed.round("digits"), b"round").wait(5)
        server.publish(fed.model("digits"), b"version").wait(5)
        server.publish(fed.ack("site/cam-1"), b"ack").wait(5)
        assert (delivered(rounds, 1), delivered(models, 1)) == ([b"round"], [b"version"])
        assert delivered(acks, 1) == [b"ack"]
        assert delivered(snooped, 0) == []
    finally:
        for c in (server, cam, evil):
            c.stop()


def test_forged_results_never_reach_the_edge(broker: Broker, tmp_path: Path) -> None:
    """On main an anonymous client that read the requests answered every job first
    (``served_by: attacker``). On the shipped ACL it can neither read them nor answer."""
    responder = Responder(broker.port, config=broker.client_config("serverd")).start()
    attacker = connect(broker, "evil")

    def forge(topic: str, payload: bytes) -> None:
        req = decode_request(payload).request
        forged = OffloadResult(
            job_id=req.job_id,
            device_id=req.device_id,
            model=req.model,
            results=[],
            served_by="attacker",
            completed=1,
        )
        attacker.publish(TOPICS.reply(req.device_id), encode_message(forged))

    attacker.subscribe(TOPICS.requests_filter(), forge)
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.sqlite"))
    net = NetLoop(MqttClient(broker.client_config("site/cam-1")))
    outcomes: queue.Queue[JobOutcome] = queue.Queue()
    client = OffloadClient("site/cam-1", net, outbox, on_outcome=outcomes.put)
    client.start()
    net.start()
    try:
        jpeg = frame_jpeg(64, 48)
        for _ in range(10):
            client.submit(client.make_request("det", "jpeg", ttl_s=30), jpeg)
        got = [outcomes.get(timeout=20) for _ in range(10)]
    finally:
        client.stop()
        net.stop()
        outbox.close()
        attacker.stop()
        responder.stop()
    assert all(o.status == Status.EXIT for o in got)
    assert {o.result.served_by for o in got if o.result} == {"responder"}
    assert client.counters.duplicate_results == 0


def test_tls_clients_are_known_by_their_certificate(tmp_path: Path, listen: Listen) -> None:
    with Broker(tmp_path, tls=True, identities=IDENTITIES) as broker:
        assert broker.tls is not None
        no_cert = MqttClient(
            MqttConfig.model_validate(
                {
                    "host": broker.host,
                    "port": broker.port,
                    "client_id": "no-cert",
                    "tls": {"ca": str(broker.tls.ca)},
                }
            )
        )
        no_cert.start()
        try:
            assert not no_cert.wait_connected(2)
        finally:
            no_cert.stop()
        requests = listen(broker, "serverd", TOPICS.requests_filter())
        cam = connect(broker, "site/cam-1")
        try:
            cam.publish(TOPICS.request("site/cam-1"), b"by certificate").wait(5)
            cam.publish(TOPICS.request("evil"), b"not cam-1's topic").wait(5)
            assert delivered(requests, 1) == [b"by certificate"]
        finally:
            cam.stop()


def test_the_shipped_acl_is_the_generated_one() -> None:
    shipped = (REPO / "packaging" / "mosquitto" / "edgefed.acl").read_text()
    assert shipped == render_acl()
    with pytest.raises(TypeError, match="not the string 'serverd'"):
        render_acl(servers="serverd")
