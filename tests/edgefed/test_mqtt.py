from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edged.netloop import NetLoop
from edgefed import certs
from edgefed.errors import ConfigError, ProtocolError
from edgefed.mqtt import MqttClient, MqttConfig, MqttTls, loopdriver, presence, tls_context
from edgefed.testing.broker import Broker, make_tls_files
from edgefed.testing.wait import wait_until
from edgefed.wire import Availability, Topics, decode_availability
from tests.support.paths import REPO

Inbox = queue.Queue[tuple[str, bytes]]


Loop = asyncio.AbstractEventLoop | None


@pytest.fixture(params=["paho-thread", "asyncio-loop"])
def loop(request: pytest.FixtureRequest) -> Iterator[Loop]:
    """How the clients of a test run: on paho's thread, or driven by an asyncio loop
    running on a thread of its own (as in serverd)."""
    if request.param == "paho-thread":
        yield None
        return
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)
    # a client's task still cancelling would be destroyed pending when collected, and
    # asyncio's error about it would land in a later test's log
    running.run_until_complete(_settle())
    running.close()


async def _settle() -> None:
    """Let the tasks left on the loop finish (a cancelled one finishes cancelling)."""
    left = asyncio.all_tasks() - {asyncio.current_task()}
    if left:
        await asyncio.wait(left, timeout=5)


def client(broker: Broker, name: str, **changes: object) -> MqttClient:
    config = MqttConfig.model_validate({"port": broker.port, "client_id": name, **changes})
    return MqttClient(config)


def collect(mqtt: MqttClient, topic_filter: str) -> Inbox:
    inbox: Inbox = queue.Queue()
    mqtt.subscribe(topic_filter, lambda topic, payload: inbox.put((topic, payload)))
    return inbox


def test_publish_subscribe_round_trip_with_puback_and_nodelay(broker: Broker, loop: Loop) -> None:
    sub, pub = client(broker, "sub"), client(broker, "pub")
    inbox = collect(sub, "t/#")
    sub.start(loop)
    pub.start(loop)
    try:
        assert sub.wait_connected(10) and pub.wait_connected(10)
        assert pub.socket_nodelay() and sub.socket_nodelay()
        acked: list[int] = []
        ticket = pub.publish("t/a", b"\x00binary\xff", on_ack=lambda: acked.append(1))
        assert ticket.wait(5)
        assert inbox.get(timeout=5) == ("t/a", b"\x00binary\xff")
        wait_until("the PUBACK callback", lambda: acked)  # called just after the ticket is set
        assert acked == [1]
        assert pub.counters.messages_out == 1 and pub.counters.acked == 1
        assert sub.counters.messages_in == 1
    finally:
        pub.stop()
        sub.stop()


def test_mutual_tls_accepts_a_client_certificate_and_refuses_none(
    tmp_path: Path, loop: Loop
) -> None:
    with Broker(tmp_path / "tls-broker", tls=True) as broker:
        assert broker.tls is not None
        files = broker.tls
        good = client(
            broker, "good", tls=MqttTls(ca=files.ca, cert=files.client_cert, key=files.client_key)
        )
        bad = client(broker, "bad", tls=MqttTls(ca=files.ca), reconnect_max_s=1)
        inbox = collect(good, "secure/#")
        good.start(loop)
        bad.start(loop)
        try:
            assert good.wait_connected(10)
            assert good.socket_nodelay()
            good.publish("secure/x", b"hi").wait(5)
            assert inbox.get(timeout=5) == ("secure/x", b"hi")
            deadline = time.monotonic() + 10
            while bad.counters.connect_failures == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert bad.counters.connect_failures >= 1
            assert not bad.connected and bad.counters.connects == 0
        finally:
            bad.stop()
            good.stop()


@pytest.mark.parametrize("loop", ["asyncio-loop"], indirect=True)  # as both daemons run
def test_a_broker_it_cannot_reach_is_said_once_a_minute_not_per_try(
    tmp_path: Path, loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker whose certificate the client does not trust (another CA): the reason is a
    warning, once, however often it retries (it was a debug line: a site saw only "link
    down")."""
    other = make_tls_files(tmp_path / "other-ca")
    with (
        Broker(tmp_path / "tls-broker", tls=True) as broker,
        caplog.at_level(logging.WARNING, "edgefed.mqtt"),
    ):
        stranger = client(broker, "stranger", tls=MqttTls(ca=other.ca), reconnect_max_s=1)
        stranger.start(loop)
        try:
            wait_until("three failed tries", lambda: stranger.counters.connect_failures >= 3)
        finally:
            stranger.stop()
    lines = [r.getMessage() for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{broker.port}" in lines[0] and "CERTIFICATE_VERIFY_FAILED" in lines[0]


def test_a_certificate_refused_under_an_unset_clock_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused = ssl.SSLCertVerificationError("certificate is not yet valid")
    assert loopdriver._clock_hint(refused) == ""  # this machine's clock is set
    monkeypatch.setattr(loopdriver.time, "gmtime", lambda: time.struct_time((1970,) + (1,) * 8))
    assert "this device's clock says 1970" in loopdriver._clock_hint(refused)
    assert loopdriver._clock_hint(ConnectionRefusedError()) == ""


def test_a_client_certificate_near_or_past_its_end_is_said_at_start_and_connect(
    tmp_path: Path, loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    """10 days left: a warning naming the file and the date, at start and on connecting;
    run out (0 days: it ended as it was made): an error at start, and the broker refuses
    it. ``cert_expires`` is what the daemons' status and metrics show."""
    with Broker(tmp_path / "tls-broker", tls=True) as broker:
        assert broker.tls is not None
        ca, tls_dir = broker.tls.ca, broker.tls.ca.parent
        soon, over = certs.issue(tls_dir, "soon", days=10), certs.issue(tls_dir, "over", days=0)
        near = client(broker, "near", tls=MqttTls(ca=ca, cert=soon.cert, key=soon.key))
        ended = client(
            broker, "ended", tls=MqttTls(ca=ca, cert=over.cert, key=over.key), reconnect_max_s=1
        )
        assert near.cert_expires is not None and ended.cert_expires is not None
        assert abs(near.cert_expires - (time.time() + 10 * 86400)) < 60
        caplog.set_level(logging.INFO, logger="edgefed.mqtt")
        near.start(loop)
        ended.start(loop)
        try:
            assert near.wait_connected(10)
            wait_until("a refused connect", lambda: ended.counters.connect_failures >= 1)
            assert not ended.connected
        finally:
            ended.stop()
            near.stop()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "edgefed.mqtt"]
    warned = [m for level, m in lines if level == logging.WARNING and str(soon.cert) in m]
    assert len(warned) == 2 and all("in 10 days" in m for m in warned)
    (error,) = [m for level, m in lines if level == logging.ERROR and str(over.cert) in m]
    assert "expired on" in error and "the broker refuses it" in error
    assert client(broker, "plain").cert_expires is None


def test_tls_files_that_cannot_be_read_are_a_config_error_naming_the_file(
    tmp_path: Path,
) -> None:
    """ssl's own errors name no file ("[Errno 2] No such file or directory"): each
    message says which of the three it is."""
    with pytest.raises(ConfigError, match="both cert and key"):
        tls_context(MqttTls(ca=tmp_path / "ca.pem", cert=tmp_path / "c.pem"))
    with pytest.raises(ConfigError) as missing:
        tls_context(MqttTls(ca=tmp_path / "missing.pem"))
    assert str(missing.value) == f"mqtt tls: ca {tmp_path / 'missing.pem'} is not a file"
    too_long = tmp_path / ("x" * 300) / "ca.pem"  # the check itself fails: still one line
    with pytest.raises(ConfigError, match="File name too long"):
        tls_context(MqttTls(ca=too_long))
    with Broker(tmp_path / "tls-broker", tls=True) as broker:
        tls = broker.client_config("names").tls
    assert tls is not None and tls.cert is not None and tls.key is not None
    with pytest.raises(ConfigError) as no_key:
        tls_context(tls.model_copy(update={"key": tmp_path / "gone.key"}))
    assert str(no_key.value) == f"mqtt tls: key {tmp_path / 'gone.key'} is not a file"
    with pytest.raises(ConfigError) as not_pem:
        tls_context(tls.model_copy(update={"ca": tls.key}))  # a key where the CA should be
    assert str(not_pem.value).startswith(f"mqtt tls: cannot load the CA certificates {tls.key}:")
    with pytest.raises(ConfigError) as mismatched:
        tls_context(tls.model_copy(update={"key": tls.ca}))
    assert f"cannot load the client certificate {tls.cert} with the key {tls.ca}" in str(
        mismatched.value
    )


def test_failing_handlers_are_counted_and_the_loop_keeps_going(broker: Broker, loop: Loop) -> None:
    sub, pub = client(broker, "sub"), client(broker, "pub")

    def picky(topic: str, payload: bytes) -> None:
        if payload == b"malformed":
            raise ProtocolError("not a frame")
        if payload == b"boom":
            raise RuntimeError("handler bug")

    sub.subscribe("t/#", picky)
    inbox = collect(sub, "t/#")
    sub.start(loop)
    pub.start(loop)
    try:
        assert sub.wait_connected(10) and pub.wait_connected(10)
        for payload in (b"malformed", b"boom", b"fine"):
            pub.publish("t/x", payload).wait(5)
        received = [inbox.get(timeout=5)[1] for _ in range(3)]
        assert received == [b"malformed", b"boom", b"fine"]
        assert sub.counters.dropped == 1 and "not a frame" in sub.counters.last_drop
        assert sub.counters.handler_errors == 1
    finally:
        pub.stop()
        sub.stop()


def test_subscriptions_come_back_after_a_broker_restart(broker: Broker, loop: Loop) -> None:
    sub, pub = client(broker, "sub"), client(broker, "pub")
    inbox = collect(sub, "t/#")
    links: queue.Queue[bool] = queue.Queue()
    sub.add_connection_listener(links.put)
    sub.start(loop)
    pub.start(loop)
    try:
        assert links.get(timeout=10) is True
        broker.stop()
        assert links.get(timeout=10) is False
        broker.start()
        assert links.get(timeout=15) is True
        assert pub.wait_connected(15)
        pub.publish("t/after", b"again").wait(5)
        assert inbox.get(timeout=5) == ("t/after", b"again")
        assert sub.counters.reconnects == 1
    finally:
        pub.stop()
        sub.stop()


def test_a_client_started_while_the_broker_is_down_connects_when_it_comes_up(
    broker: Broker, loop: Loop
) -> None:
    broker.stop()
    late = client(broker, "late", reconnect_max_s=1)
    late.start(loop)
    try:
        deadline = time.monotonic() + 10
        while late.counters.connect_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert late.counters.connect_failures >= 2 and not late.connected  # kept trying
        broker.start()
        assert late.wait_connected(15)
        assert late.publish("t/late", b"here").wait(5)
    finally:
        late.stop()


def test_presence_is_retained_and_the_last_will_says_offline(broker: Broker) -> None:
    topics = Topics()
    topic = topics.device_availability("cam-9")
    child = textwrap.dedent(
        f"""
        import time
        from edgefed.mqtt import MqttClient, MqttConfig, presence
        from edgefed.wire import Availability
        online = Availability(role="device", id="cam-9", state="online", since=1)
        mqtt = MqttClient(
            MqttConfig(port={broker.port}, client_id="cam-9"), presence({topic!r}, online)
        )
        mqtt.start()
        assert mqtt.wait_connected(10)
        print("up", flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, cwd=REPO, env=env, text=True
    )
    watcher = client(broker, "watcher")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        inbox = collect(watcher, topics.device_availability_filter())
        watcher.start()
        first = decode_availability(inbox.get(timeout=10)[1])  # retained
        assert (first.id, first.state) == ("cam-9", "online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        last = decode_availability(inbox.get(timeout=10)[1])
        assert last.state == "offline"
    finally:
        proc.kill()
        proc.wait()
        watcher.stop()


def test_a_clean_stop_publishes_offline(broker: Broker, loop: Loop) -> None:
    online = Availability(role="server", id="srv-1", state="online", since=1, models=["m"])
    topic = Topics().server_availability("srv-1")
    server = MqttClient(MqttConfig(port=broker.port, client_id="srv-1"), presence(topic, online))
    server.start(loop)
    assert server.wait_connected(10)
    server.stop()
    watcher = client(broker, "watcher")
    inbox = collect(watcher, topic)
    watcher.start(loop)
    try:
        retained = decode_availability(inbox.get(timeout=10)[1])
        assert retained.state == "offline" and retained.models == ["m"]
    finally:
        watcher.stop()


def test_clean_stops_log_no_errors(
    broker: Broker, loop: Loop, caplog: pytest.LogCaptureFixture
) -> None:
    """paho 2.2 runs its loop once more after a clean disconnect closed the socket and
    logs "Client is not connected" as an error (in about a third of stops on paho's
    thread): a site engineer would read every restart as a fault."""
    caplog.set_level(logging.DEBUG, logger="edgefed.mqtt")
    for i in range(12):
        mqtt = client(broker, f"stopper-{i}")
        collect(mqtt, "t/#")
        mqtt.start(loop)
        assert mqtt.wait_connected(10)
        time.sleep(0.03 * (i % 4))
        mqtt.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any(r.name == "edgefed.mqtt.paho" for r in caplog.records)  # paho's own records


def test_a_loop_driven_client_runs_handlers_and_acks_on_the_loop(broker: Broker) -> None:
    async def main() -> tuple[tuple[str, bytes], bool]:
        loop = asyncio.get_running_loop()
        message: asyncio.Future[tuple[str, bytes]] = loop.create_future()
        acked: asyncio.Future[bool] = loop.create_future()

        def handler(topic: str, payload: bytes) -> None:
            assert asyncio.get_running_loop() is loop  # no hand-off: called on the loop
            if not message.done():
                message.set_result((topic, payload))

        def on_ack() -> None:
            acked.set_result(asyncio.get_running_loop() is loop)

        sub, pub = client(broker, "sub"), client(broker, "pub")
        sub.subscribe("a/#", handler)
        sub.start(loop)
        pub.start(loop)
        try:
            assert await asyncio.to_thread(sub.wait_connected, 10)
            assert await asyncio.to_thread(pub.wait_connected, 10)
            with pytest.raises(RuntimeError, match="from another thread"):
                pub.stop()  # would wait on the loop it blocks
            pub.publish("a/b", b"x", on_ack=on_ack)
            return await asyncio.wait_for(message, 10), await asyncio.wait_for(acked, 10)
        finally:
            await asyncio.to_thread(pub.stop)
            await asyncio.to_thread(sub.stop)

    assert asyncio.run(main()) == (("a/b", b"x"), True)


def test_a_message_not_yet_acked_comes_again_on_the_next_connection(
    broker: Broker, loop: Loop
) -> None:
    """``subscribe_acked``: the broker has its PUBACK only when the handler acks, so a
    message whose effect died with the client is delivered again to its session."""
    first = client(broker, "acked-sub")
    held: queue.Queue[tuple[bytes, Callable[[], None]]] = queue.Queue()
    first.subscribe_acked("acked/#", lambda _topic, payload, ack: held.put((payload, ack)))
    pub = client(broker, "acked-pub")
    first.start(loop)
    pub.start(loop)
    try:
        assert first.wait_connected(10) and pub.wait_connected(10)
        assert pub.publish("acked/a", b"stored").wait(5)
        assert pub.publish("acked/b", b"lost").wait(5)
        acks = dict(held.get(timeout=10) for _ in range(2))
        acks[b"stored"]()
        acks[b"stored"]()  # a second call does nothing
    finally:
        first.stop()  # before b"lost" is acked: gone with the process
    second = client(broker, "acked-sub")  # the same session
    inbox = collect(second, "acked/#")
    second.start(loop)
    try:
        assert inbox.get(timeout=10) == ("acked/b", b"lost")
        with pytest.raises(queue.Empty):
            inbox.get(timeout=0.5)
    finally:
        second.stop()
        pub.stop()


def test_a_publish_on_the_loop_is_written_before_the_loop_turns(broker: Broker) -> None:
    """On the loop's thread a publish goes to the socket at once: a subscriber gets it while
    the loop is still busy in the callback that published (a commit, say)."""
    watcher = client(broker, "watcher")
    inbox = collect(watcher, "now/#")
    net = NetLoop(client(broker, "publisher"))
    watcher.start()
    net.start()
    try:
        assert watcher.wait_connected(10) and net.mqtt.wait_connected(10)
        got: queue.Queue[tuple[str, bytes] | None] = queue.Queue()

        def publish_then_stay_busy() -> None:
            net.mqtt.publish("now/x", b"at once")
            try:
                got.put(inbox.get(timeout=5))  # the loop cannot turn while this waits
            except queue.Empty:
                got.put(None)

        net.loop.call_soon_threadsafe(publish_then_stay_busy)
        assert got.get(timeout=10) == ("now/x", b"at once")
    finally:
        net.stop()
        watcher.stop()
