"""The shipped broker for ``python -m bench faults``, and what it refuses.

``ShippedBroker`` is mosquitto started with ``packaging/mosquitto/edgefed-server.conf``
and the ACL file next to it, byte for byte, except for what cannot be shipped: the
listener moves to 127.0.0.1 on a free port, the TLS files are a throw-away CA's and
``acl_file`` points at the shipped ``edgefed.acl`` in this checkout (plus ``user`` and
``log_dest`` lines so that it runs as the current user and logs to its own file). A
change to the shipped file that these substitutions no longer find fails the bench.

The probes connect to it as an attacker would: without a certificate, and with a valid
certificate for device A that publishes on topics that are not A's or connects under
serverd's client id.
"""

from __future__ import annotations

import functools
import os
import pwd
import queue
import time
from collections.abc import Sequence
from pathlib import Path

from edgefed.mqtt import MqttClient, MqttConfig, MqttTls
from edgefed.testing.broker import Broker
from edgefed.wire import Topics

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONF = REPO / "packaging" / "mosquitto" / "edgefed-server.conf"
SHIPPED_ACL = REPO / "packaging" / "mosquitto" / "edgefed.acl"
DEVICE_A, DEVICE_B = "site/cam-a", "site/cam-b"
IDENTITIES = ("serverd", "edgecore", DEVICE_A, DEVICE_B)


class ShippedBroker(Broker):
    """A ``Broker`` (free port, restartable, per-identity certificates) whose config is the
    shipped one; always mutual TLS."""

    def __init__(self, directory: Path, identities: Sequence[str] = IDENTITIES) -> None:
        super().__init__(directory, tls=True, identities=identities)

    def _config(self) -> str:
        assert self.tls is not None
        text = SHIPPED_CONF.read_text(encoding="utf-8")
        for shipped, here in (
            ("listener 8883 0.0.0.0", f"listener {self.port} 127.0.0.1"),
            ("cafile /etc/edgefed/tls/ca.pem", f"cafile {self.tls.ca}"),
            ("certfile /etc/edgefed/tls/broker.pem", f"certfile {self.tls.server_cert}"),
            ("keyfile /etc/edgefed/tls/broker.key", f"keyfile {self.tls.server_key}"),
            ("acl_file /etc/mosquitto/edgefed.acl", f"acl_file {SHIPPED_ACL}"),
        ):
            if shipped not in text:
                raise SystemExit(f"{SHIPPED_CONF}: line {shipped!r} not found; update bench")
            text = text.replace(shipped, here)
        user = pwd.getpwuid(os.getuid()).pw_name
        return f"user {user}\nlog_dest stderr\n{text}"


def _connect(config: MqttConfig, timeout: float = 10.0) -> MqttClient | None:
    client = MqttClient(config)
    client.start()
    if client.wait_connected(timeout):
        return client
    client.stop()
    return None


def anonymous_refused(broker: ShippedBroker) -> bool:
    """No CONNECT gets through without a client certificate: not with the CA trusted and
    no certificate, not with a user name and password, not in plain TCP."""
    assert broker.tls is not None
    strangers = [
        MqttConfig(port=broker.port, client_id="anon-tls", tls=MqttTls(ca=broker.tls.ca)),
        MqttConfig(
            port=broker.port,
            client_id="anon-password",
            tls=MqttTls(ca=broker.tls.ca),
            username=DEVICE_A,
            password="guess",
        ),
        MqttConfig(port=broker.port, client_id="anon-plain"),
    ]
    for config in strangers:
        client = _connect(config, timeout=2.0)
        if client is not None:
            client.stop()
            return False
    return True


def takeover_refused(broker: ShippedBroker) -> bool:
    """Device A, with a valid certificate, connects under the client id serverd is
    connected with: true if both stay connected, each on its first connection (the broker
    gave A its own name as its id), false if A took serverd's place."""
    victim = _connect(broker.client_config("serverd", client_id="serverd-01"))
    if victim is None:
        raise SystemExit("serverd cannot connect to the shipped broker")
    try:
        intruder = _connect(broker.client_config(DEVICE_A, client_id="serverd-01"))
        if intruder is None:
            raise SystemExit(f"{DEVICE_A} cannot connect to the shipped broker")
        try:
            time.sleep(1.0)  # a takeover closes serverd's link at once, and it reconnects
            return victim.connected and victim.counters.connects == 1 and intruder.connected
        finally:
            intruder.stop()
    finally:
        victim.stop()


def foreign_publish_refused(broker: ShippedBroker) -> bool:
    """Device A, with a valid certificate, publishes on B's twin topics, B's and its own
    reply topics and B's request topic; privileged subscribers (serverd, EdgeCore, B, A)
    see none of it. Each subscriber first receives an allowed message (so its
    subscription is live), and A's last publish is an allowed request: once serverd has
    it, the broker has handled A's forged ones before it."""
    topics = Topics()
    twin = f"$hw/events/device/{DEVICE_B}/twin"
    observers = {  # identity: (its filter, an allowed (publisher, topic) it must receive)
        "serverd": (topics.requests_filter(), (DEVICE_A, topics.request(DEVICE_A))),
        "edgecore": ("$hw/events/#", (DEVICE_A, f"$hw/events/device/{DEVICE_A}/twin/update")),
        DEVICE_B: (topics.reply(DEVICE_B), ("serverd", topics.reply(DEVICE_B))),
        DEVICE_A: (topics.reply(DEVICE_A), ("serverd", topics.reply(DEVICE_A))),
    }
    seen: queue.Queue[tuple[str, str, bytes]] = queue.Queue()
    clients: dict[str, MqttClient] = {}
    try:
        for identity, (topic_filter, _) in observers.items():
            client = _connect(broker.client_config(identity))
            if client is None:
                raise SystemExit(f"{identity} cannot connect to the shipped broker")
            client.subscribe(topic_filter, functools.partial(_record, seen, identity))
            clients[identity] = client
        expected = {(who, topic, b"allowed") for who, (_, (_, topic)) in observers.items()}
        got: set[tuple[str, str, bytes]] = set()
        deadline = time.monotonic() + 15
        while not expected <= got and time.monotonic() < deadline:
            for _, (publisher, topic) in observers.values():
                clients[publisher].publish(topic, b"allowed").wait(5)
            got |= _drain(seen, 0.3)
        if not expected <= got:
            raise SystemExit(f"allowed messages never arrived: {sorted(expected - got)}")
        attacker = clients[DEVICE_A]
        for topic in (
            f"{twin}/update", f"{twin}/update/delta", f"{twin}/get/result",
            topics.reply(DEVICE_B), topics.reply(DEVICE_A), topics.request(DEVICE_B),
        ):  # fmt: skip
            attacker.publish(topic, b"forged by A").wait(5)
        attacker.publish(topics.request(DEVICE_A), b"last").wait(5)
        after: set[tuple[str, str, bytes]] = set()
        deadline = time.monotonic() + 10
        while ("serverd", topics.request(DEVICE_A), b"last") not in after:
            if time.monotonic() > deadline:
                raise SystemExit("A's last allowed request never reached serverd")
            after |= _drain(seen, 0.2)
        after |= _drain(seen, 0.5)  # anything still on its way to the other observers
    finally:
        for client in clients.values():
            client.stop()
    return not any(payload == b"forged by A" for _, _, payload in after)


def _record(
    seen: queue.Queue[tuple[str, str, bytes]], who: str, topic: str, payload: bytes
) -> None:
    seen.put((who, topic, payload))


def _drain(
    seen: queue.Queue[tuple[str, str, bytes]], seconds: float
) -> set[tuple[str, str, bytes]]:
    out = set()
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.add(seen.get(timeout=left))
        except queue.Empty:
            break
    return out
