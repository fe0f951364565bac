"""The MQTT adapter's subscription and acknowledgement registry, without a broker: paho's
messages are built by hand and the PUBACKs it sends are recorded."""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as paho
import pytest

from edgefed.errors import ProtocolError
from edgefed.mqtt import Ack, Handler, MqttCounters
from edgefed.mqtt.registry import SubscriptionRegistry, unshared

Calls = list[tuple[str, bytes]]


class Broker:
    """Stands in for paho's ``Client.ack``: the PUBACKs sent, as (mid, qos)."""

    def __init__(self) -> None:
        self.pubacks: list[tuple[int, int]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.pubacks.append((mid, qos))


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def registry(broker: Broker) -> SubscriptionRegistry:
    return SubscriptionRegistry(MqttCounters(), broker.ack)


def message(topic: bytes, payload: bytes = b"p", mid: int = 7) -> paho.MQTTMessage:
    msg = paho.MQTTMessage(mid=mid, topic=topic)
    msg.payload = payload
    msg.qos = 1
    return msg


def bad_message(topic: str, payload: bytes) -> None:
    raise ProtocolError("not a job")


def broken(topic: str, payload: bytes) -> None:
    raise RuntimeError("bug")


def recorder(calls: Calls) -> Handler:
    return lambda topic, payload: calls.append((topic, payload))


def test_dispatch_runs_every_matching_handler_then_acknowledges(
    registry: SubscriptionRegistry, broker: Broker
) -> None:
    calls: Calls = []
    seen_pubacks: list[int] = []

    def plain(topic: str, payload: bytes) -> None:
        seen_pubacks.append(len(broker.pubacks))  # none yet: the PUBACK follows the handlers
        calls.append((f"plain {topic}", payload))

    registry.add("jobs/+/reply", plain, acked=False)
    registry.add("jobs/#", lambda t, p: calls.append((f"all {t}", p)), acked=False)
    registry.add("other/#", lambda t, p: calls.append((f"other {t}", p)), acked=False)

    registry.dispatch(message(b"jobs/e1/reply", b"hello", mid=3))

    assert calls == [("plain jobs/e1/reply", b"hello"), ("all jobs/e1/reply", b"hello")]
    assert seen_pubacks == [0]
    assert broker.pubacks == [(3, 1)]
    assert registry.counters.messages_in == 1


def test_a_message_no_filter_matches_is_acknowledged(
    registry: SubscriptionRegistry, broker: Broker
) -> None:
    registry.add("a/b", lambda t, p: None, acked=False)
    registry.dispatch(message(b"a/c", mid=4))
    assert broker.pubacks == [(4, 1)]


def test_acked_handlers_puback_only_once_every_ack_is_called(
    registry: SubscriptionRegistry, broker: Broker
) -> None:
    acks: list[Ack] = []
    calls: Calls = []
    registry.add("t/#", lambda t, p, ack: acks.append(ack), acked=True)
    registry.add("t/x", lambda t, p, ack: acks.append(ack), acked=True)
    registry.add("t/#", lambda t, p: calls.append((t, p)), acked=False)

    registry.dispatch(message(b"t/x", mid=9))
    assert calls == [("t/x", b"p")]
    assert len(acks) == 2
    assert broker.pubacks == []  # the plain handler returning is not enough

    acks[0]()
    acks[0]()  # one-shot: a second call of the same ack counts for nothing
    assert broker.pubacks == []
    acks[1]()
    assert broker.pubacks == [(9, 1)]
    acks[1]()
    assert broker.pubacks == [(9, 1)]


def test_acks_may_come_from_another_thread(registry: SubscriptionRegistry, broker: Broker) -> None:
    acks: list[Ack] = []
    registry.add("t", lambda t, p, ack: acks.append(ack), acked=True)
    registry.dispatch(message(b"t", mid=2))
    thread = threading.Thread(target=acks[0])
    thread.start()
    thread.join(5)
    assert broker.pubacks == [(2, 1)]


def test_an_ack_from_an_earlier_session_is_void(
    registry: SubscriptionRegistry, broker: Broker
) -> None:
    acks: list[Ack] = []
    registry.add("t", lambda t, p, ack: acks.append(ack), acked=True)
    assert registry.new_session() == ["t"]
    registry.dispatch(message(b"t", mid=5))

    assert registry.new_session() == ["t"]  # reconnected: the broker sends it again
    acks[0]()
    assert broker.pubacks == []

    registry.dispatch(message(b"t", mid=6))  # the redelivery, acked on its own session
    acks[1]()
    assert broker.pubacks == [(6, 1)]


def test_protocol_error_counts_as_dropped_and_other_failures_as_handler_errors(
    registry: SubscriptionRegistry, broker: Broker
) -> None:
    calls: Calls = []

    registry.add("t", bad_message, acked=False)
    registry.add("t", broken, acked=False)
    registry.add("t", recorder(calls), acked=False)

    registry.dispatch(message(b"t", mid=8))

    counters = registry.counters
    assert (counters.dropped, counters.handler_errors) == (1, 1)
    assert counters.last_drop == "t: not a job"
    assert calls == [("t", b"p")]  # the handlers after a failing one still run
    assert broker.pubacks == [(8, 1)]


def test_an_acked_handler_that_raises_has_its_ack_called_for_it(
    registry: SubscriptionRegistry, broker: Broker
) -> None:
    def bad_message(topic: str, payload: bytes, ack: Ack) -> None:
        raise ProtocolError("garbled")

    registry.add("t", bad_message, acked=True)
    registry.dispatch(message(b"t", mid=11))
    assert registry.counters.dropped == 1
    assert broker.pubacks == [(11, 1)]


def test_a_topic_that_is_not_utf8_is_dropped_and_acknowledged(
    registry: SubscriptionRegistry, broker: Broker
) -> None:
    calls: Calls = []
    registry.add("#", recorder(calls), acked=False)
    registry.dispatch(message(b"\xff\xfe", mid=12))
    assert calls == []
    assert registry.counters.dropped == 1
    assert registry.counters.last_drop == "topic is not UTF-8"
    assert broker.pubacks == [(12, 1)]


def test_a_puback_completes_its_ticket(registry: SubscriptionRegistry) -> None:
    done: list[str] = []
    ticket = registry.published(21, "up", on_ack=lambda: done.append("up"))
    assert not ticket.acked.is_set()
    registry.puback(21)
    assert ticket.wait(0)
    assert done == ["up"]
    assert (registry.counters.messages_out, registry.counters.acked) == (1, 1)


def test_a_puback_before_the_ticket_exists_completes_it_at_once(
    registry: SubscriptionRegistry,
) -> None:
    done: list[str] = []
    registry.puback(30)  # paho's thread got the PUBACK before publish() returned
    ticket = registry.published(30, "fast", on_ack=lambda: done.append("fast"))
    assert ticket.wait(0)
    assert done == ["fast"]
    assert registry.counters.acked == 1

    later = registry.published(30, "again")  # the early PUBACK was used up
    assert not later.acked.is_set()


def test_a_failing_puback_callback_is_counted(registry: SubscriptionRegistry) -> None:
    def broken() -> None:
        raise RuntimeError("bug")

    ticket = registry.published(40, "t", on_ack=broken)
    registry.puback(40)
    assert ticket.wait(0)
    assert registry.counters.handler_errors == 1


def test_forgotten_publishes_never_complete(registry: SubscriptionRegistry) -> None:
    ticket = registry.published(50, "t")
    registry.puback(51)
    registry.forget_publishes()
    registry.puback(50)
    assert not ticket.acked.is_set()
    assert not registry.published(51, "t").acked.is_set()


def test_a_shared_subscription_matches_topics_with_the_filter_after_its_group() -> None:
    assert unshared("$share/serverd/edgefed/offload/request/#") == "edgefed/offload/request/#"
    assert unshared("edgefed/offload/request/#") == "edgefed/offload/request/#"
    assert unshared("$share/only-group") == "$share/only-group"  # not a shared filter


def test_a_flood_of_bad_messages_is_counted_in_full_and_logged_in_a_few_lines(
    registry: SubscriptionRegistry, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer publishing bad messages by the thousand filled the log with a line (or a
    traceback) per message; each is still counted, dropped and acknowledged."""

    registry.add("bad", bad_message, acked=False)
    registry.add("broken", broken, acked=False)
    caplog.set_level(logging.DEBUG, logger="edgefed.mqtt.registry")
    for mid in range(1, 1001):
        registry.dispatch(message(b"bad" if mid % 2 else b"broken", mid=mid))
    counters = registry.counters
    assert (counters.dropped, counters.handler_errors) == (500, 500)
    assert len(broker.pubacks) == 1000
    logged = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert logged[0] == (logging.WARNING, "mqtt: dropped a message on bad: not a job")
    assert logged[1][0] == logging.ERROR and "handler for broken failed: bug" in logged[1][1]
    assert len(logged) == 2
