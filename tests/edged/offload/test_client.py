from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edged.netloop import NetLoop
from edged.offload.client import JobOutcome, OffloadClient, OffloadClientConfig, OutcomeListener
from edged.offload.outbox import Outbox
from edged.offload.records import Enqueued, NewJob, OutboxConfig
from edgefed.errors import OffloadError
from edgefed.lifecycle import Status
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from edgefed.wire import (
    LocalSummary,
    OffloadErrorMessage,
    OffloadResult,
    Topics,
    encode_message,
)
from tests.edged.offload.responder import Responder
from tests.support.paths import REPO

JPEG = b"\xff\xd8\xff\xe0" + b"\x10" * 2000 + b"\xff\xd9"
CHILD = Path(__file__).with_name("edge_child.py")
RESULT = {
    "device_id": "cam-1",
    "model": "det",
    "results": [{"label": "person"}],
    "served_by": "test",
    "completed": 1,
}


class Edge:
    """edged's offload half: outbox + MQTT + client, collecting outcomes."""

    def __init__(
        self,
        broker: Broker,
        db: Path,
        max_jobs: int = 10_000,
        on_outcome: OutcomeListener | None = None,
        result_timeout_s: float = 10.0,  # a reply slower than this sends the job again
        **client: object,
    ) -> None:
        self.outbox = Outbox(
            OutboxConfig(
                path=db,
                max_jobs=max_jobs,
                result_timeout_s=result_timeout_s,
                retry_base_s=0.2,
                retry_cap_s=1.0,
                max_iterations=50,
            )
        )
        self.net = NetLoop(MqttClient(MqttConfig(port=broker.port, client_id="edged-cam-1")))
        self.mqtt = self.net.mqtt
        self.outcomes: queue.Queue[JobOutcome] = queue.Queue()
        self.links: queue.Queue[bool] = queue.Queue()
        self.mqtt.add_connection_listener(self.links.put)
        config = OffloadClientConfig.model_validate({"sweep_interval_s": 0.05, **client})
        listener = on_outcome or self.outcomes.put
        self.client = OffloadClient("cam-1", self.net, self.outbox, config, listener)

    def start(self, link: bool = True) -> Edge:
        """Start the client on its network loop; with the link down if ``link`` is False
        (``net.connect()`` brings it up)."""
        self.client.start()
        self.net.start(connect=link)
        return self

    def stop(self) -> None:
        self.client.stop()
        self.net.stop()
        self.outbox.close()

    def submit(self, n: int, priority: int = 0, ttl_s: float = 60.0, model: str = "det") -> str:
        request = self.client.make_request(
            model, "jpeg", priority=priority, ttl_s=ttl_s, local=LocalSummary(box_scores=[0.3])
        )
        assert self.client.submit(request, JPEG, local_result={"n": n}, reason="test").accepted
        return request.job_id

    def closed(self, count: int) -> None:
        """Until ``count`` jobs are Exit (a delivered job is closed with the client's next
        transaction, soon after its outcome is told), and no more."""
        wait_until(f"{count} jobs Exit", lambda: self.outbox.counts()["Exit"] >= count, 10)
        assert self.outbox.counts()["Exit"] == count

    def collect(self, count: int, timeout: float = 30.0) -> dict[str, JobOutcome]:
        got: dict[str, JobOutcome] = {}
        deadline = time.monotonic() + timeout
        while len(got) < count:
            outcome = self.outcomes.get(timeout=max(0.01, deadline - time.monotonic()))
            assert outcome.job_id not in got, f"job {outcome.job_id} closed twice"
            got[outcome.job_id] = outcome
        return got


@pytest.fixture
def responder(broker: Broker) -> object:
    running = Responder(broker.port).start()
    yield running
    running.stop()


def test_jobs_go_out_and_results_come_back(
    broker: Broker, responder: Responder, tmp_path: Path
) -> None:
    edge = Edge(broker, tmp_path / "outbox.sqlite").start()
    try:
        ids = [edge.submit(n, priority=n % 4) for n in range(20)]
        tensor = edge.client.make_request("det", "tensor")
        edge.client.submit(tensor, np.ones((1, 3, 8, 8), dtype=np.float32))
        outcomes = edge.collect(21)
        assert set(outcomes) == {*ids, tensor.job_id}
        first = outcomes[ids[0]]
        assert first.status == Status.EXIT and first.local_result == {"n": 0}
        assert first.result is not None and first.result.results == [{"bytes": len(JPEG)}]
        assert outcomes[tensor.job_id].result is not None
        edge.closed(21)
        record = edge.outbox.get(ids[0])
        assert record is not None and record.started is not None and record.ended is not None
        assert all(n == 1 for n in responder.processed.values())
        # counted after the closing commit (which edge.closed saw)
        wait_until("21 completed", lambda: edge.client.status()["counters"]["completed"] == 21)
        assert edge.client.status()["counters"]["accepted"] == 21
    finally:
        edge.stop()


def test_the_client_works_on_the_network_loop(
    broker: Broker, responder: Responder, tmp_path: Path
) -> None:
    """Outcomes are committed and told on the loop that reads the replies (no hand-off);
    stopping the client from that loop would wait on itself and is refused."""
    on_loop: queue.Queue[bool] = queue.Queue()
    edge: Edge | None = None

    def listener(outcome: JobOutcome) -> None:
        assert edge is not None
        on_loop.put(edge.net.on_loop())
        with pytest.raises(RuntimeError, match="another thread"):
            edge.client.stop()

    edge = Edge(broker, tmp_path / "outbox.sqlite", on_outcome=listener).start()
    try:
        edge.submit(1)
        assert on_loop.get(timeout=30) is True
        assert edge.client.status()["counters"]["listener_errors"] == 0
    finally:
        edge.stop()


def test_a_job_stalled_before_its_wake_up_is_sent_once(
    broker: Broker, responder: Responder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submitting thread that stalls between its commit and waking the client: the job
    is due in the outbox while sweeps send from it, and none takes it (it would go out a
    second time from memory at the wake-up); the wake-up publishes it, once."""
    edge = Edge(broker, tmp_path / "outbox.sqlite", sweep_interval_s=0.05).start()
    enqueue = edge.outbox.enqueue

    def stalled(job: NewJob) -> Enqueued:
        outcome = enqueue(job)
        time.sleep(0.5)  # ten sweeps, each followed by a send from the outbox
        record = edge.outbox.get(job.request.job_id)
        assert record is not None and record.status == Status.ENQUEUE
        assert job.request.job_id not in responder.order
        return outcome

    try:
        assert edge.mqtt.wait_connected(10)
        monkeypatch.setattr(edge.outbox, "enqueue", stalled)
        job_id = edge.submit(1)
        assert edge.collect(1)[job_id].status == Status.EXIT
        time.sleep(0.3)  # a second copy would be on the wire by now
        assert responder.order.count(job_id) == 1
        assert edge.client.status()["counters"]["sent"] == 1
    finally:
        edge.stop()


def test_jobs_survive_kill_9_and_complete_exactly_once(broker: Broker, tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(broker.port), str(db)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
    responder = Responder(broker.port).start()
    edge = Edge(broker, db, result_timeout_s=1.0)  # the jobs sent before the kill go again
    try:
        counts = edge.outbox.counts()
        assert counts["Preprocessing_complete"] == 20 and counts["Enqueue"] == 10
        edge.start()
        outcomes = edge.collect(30)
        assert all(o.status == Status.EXIT for o in outcomes.values())
        time.sleep(1.5)  # any retry still under way would close a job a second time
        assert edge.outcomes.empty()
        assert edge.outbox.counts()["Exit"] == 30
        assert sorted(responder.processed) == sorted(outcomes)
        assert all(n == 1 for n in responder.processed.values())
    finally:
        edge.stop()
        responder.stop()


def test_every_job_drains_after_the_broker_restarts(
    broker: Broker, responder: Responder, tmp_path: Path
) -> None:
    # a request that reaches the restarted broker before the responder has subscribed
    # again is lost there: it goes again when its reply is this late
    edge = Edge(broker, tmp_path / "outbox.sqlite", result_timeout_s=1.0).start()
    try:
        before = [edge.submit(n) for n in range(10)]
        edge.collect(10)
        assert edge.links.get(timeout=10) is True
        broker.stop()
        assert edge.links.get(timeout=10) is False
        during = [edge.submit(n, priority=n % 3) for n in range(15)]
        time.sleep(1.0)  # the link stays down for a while
        assert edge.outbox.counts()["Exit"] == 10
        broker.start()
        outcomes = edge.collect(15)
        assert set(outcomes) == set(during)
        assert all(o.status == Status.EXIT for o in outcomes.values())
        edge.closed(25)
        assert not set(before) & set(outcomes)
    finally:
        edge.stop()


def test_jobs_drain_in_priority_order_when_the_link_returns(
    broker: Broker, responder: Responder, tmp_path: Path
) -> None:
    edge = Edge(broker, tmp_path / "outbox.sqlite").start(link=False)
    try:
        jobs = [(edge.submit(n, priority=p), p) for n, p in enumerate([1, 7, 3, 7, 0, 3])]
        edge.net.connect()
        edge.collect(6)
        expected = [job for job, _ in sorted(jobs, key=lambda jp: -jp[1])]
        assert responder.order == expected
    finally:
        edge.stop()


def test_no_server_until_the_deadline_leaves_the_local_result(
    broker: Broker, tmp_path: Path
) -> None:
    edge = Edge(broker, tmp_path / "outbox.sqlite").start()
    try:
        job = edge.submit(7, ttl_s=0.5)
        outcome = edge.collect(1)[job]
        assert outcome.status == Status.EXPIRED
        assert outcome.result is None and outcome.local_result == {"n": 7}
        assert "local result stands" in outcome.reason
        record = edge.outbox.get(job)
        assert record is not None and record.status == Status.EXPIRED and record.iteration == 0
    finally:
        edge.stop()


def test_a_final_server_error_fails_the_job_with_its_reason(broker: Broker, tmp_path: Path) -> None:
    responder = Responder(broker.port, unknown=frozenset({"mystery"})).start()
    edge = Edge(broker, tmp_path / "outbox.sqlite").start()
    try:
        job = edge.submit(1, model="mystery")
        outcome = edge.collect(1)[job]
        assert outcome.status == Status.FAILED
        assert outcome.reason == "unknown_model: model 'mystery' is not served here"
    finally:
        edge.stop()
        responder.stop()


def test_bad_messages_are_counted_and_dropped_while_good_ones_flow(
    broker: Broker, responder: Responder, tmp_path: Path
) -> None:
    edge = Edge(broker, tmp_path / "outbox.sqlite", max_message_bytes=65536).start()
    vandal = MqttClient(MqttConfig(port=broker.port, client_id="vandal"))
    vandal.start()
    try:
        assert vandal.wait_connected(10) and edge.mqtt.wait_connected(10)
        reply_topic = Topics().reply("cam-1")
        good = encode_message(
            OffloadResult(
                job_id="0123456789abcdef",
                device_id="cam-2",
                model="det",
                results=[],
                served_by="x",
                completed=1,
            )
        )
        future_version = bytearray(good)
        future_version[2] = 99
        bad = [b"garbage", bytes(future_version), b"EF" + b"\x01" * 70_000, good]
        for payload in bad:
            vandal.publish(reply_topic, payload).wait(5)
        vandal.publish(Topics().request("cam-1"), b"not a request").wait(5)
        # well-formed replies for jobs this device never sent: counted, dropped, never told
        for stray in (
            OffloadResult.model_validate({**RESULT, "job_id": "fedcba9876543210"}),
            OffloadErrorMessage(
                job_id="fedcba9876543210",
                device_id="cam-1",
                code="internal",
                reason="forged",
                retryable=False,
            ),
        ):
            vandal.publish(reply_topic, encode_message(stray)).wait(5)
        ids = [edge.submit(n) for n in range(5)]
        assert set(edge.collect(5)) == set(ids)
        deadline = time.monotonic() + 5
        while edge.mqtt.counters.dropped < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert edge.mqtt.counters.dropped == 4  # garbage, version, oversized, other device
        assert edge.client.counters.foreign_replies == 1
        wait_until("strays counted", lambda: edge.client.counters.stray_errors == 1, 5)
        assert edge.client.counters.unknown_results == 1
        assert edge.outcomes.empty()  # no outcome told for the strays
        assert responder.mqtt.counters.dropped == 1
        assert edge.client.counters.worker_errors == 0
    finally:
        vandal.stop()
        edge.stop()


def test_shed_jobs_are_reported_as_failed(broker: Broker, tmp_path: Path) -> None:
    edge = Edge(broker, tmp_path / "outbox.sqlite", max_jobs=2).start(link=False)
    try:
        low = edge.submit(1, priority=0)
        edge.submit(2, priority=5)
        edge.submit(3, priority=5)
        outcome = edge.collect(1)[low]
        assert outcome.status == Status.FAILED and "shed" in outcome.reason
        assert edge.client.status()["outbox"]["shed"] == 1
    finally:
        edge.stop()


def test_submit_refuses_foreign_devices_and_oversized_frames(
    broker: Broker, tmp_path: Path
) -> None:
    edge = Edge(broker, tmp_path / "outbox.sqlite", max_message_bytes=4096)
    try:
        other = edge.client.make_request("det", "jpeg").model_copy(update={"device_id": "cam-2"})
        with pytest.raises(OffloadError, match="cam-2"):
            edge.client.submit(other, JPEG)
        with pytest.raises(OffloadError, match="limit 4096"):
            edge.client.submit(edge.client.make_request("det", "jpeg"), JPEG * 3)
        assert edge.outbox.stats()["open_jobs"] == 0
    finally:
        edge.stop()


def test_a_failing_listener_is_counted_and_the_job_still_closes(
    broker: Broker, responder: Responder, tmp_path: Path
) -> None:
    seen: queue.Queue[str] = queue.Queue()

    def broken(outcome: JobOutcome) -> None:
        seen.put(outcome.job_id)
        raise RuntimeError("listener bug")

    edge = Edge(broker, tmp_path / "outbox.sqlite", on_outcome=broken).start()
    try:
        first, second = edge.submit(1), edge.submit(2)
        assert {seen.get(timeout=10), seen.get(timeout=10)} == {first, second}
        deadline = time.monotonic() + 5
        while edge.outbox.counts()["Exit"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert edge.outbox.counts()["Exit"] == 2
        assert edge.client.counters.listener_errors == 2
        assert edge.client.counters.worker_errors == 0
    finally:
        edge.stop()


def test_a_clean_stop_closes_the_jobs_just_delivered(broker: Broker, tmp_path: Path) -> None:
    """A delivered job is closed with the client's next transaction; ``stop`` right after
    its outcome writes the close, so the job is not told again after a restart."""
    db = tmp_path / "outbox.sqlite"
    responder = Responder(broker.port).start()
    edge = Edge(broker, db).start()
    try:
        done = edge.submit(1)
        assert edge.collect(1)[done].status == Status.EXIT
    finally:
        edge.stop()  # at once: sooner than SETTLE_DELAY_S
        responder.stop()
    again = Edge(broker, db)
    try:
        record = again.outbox.get(done)
        assert record is not None and record.status == Status.EXIT
        again.start(link=False)
        time.sleep(0.3)  # a job left in Postprocessing would be told again at once
        assert again.outcomes.empty()
    finally:
        again.stop()


def test_results_stored_before_a_restart_are_delivered_on_start(
    broker: Broker, tmp_path: Path
) -> None:
    db = tmp_path / "outbox.sqlite"
    first = Edge(broker, db)
    job = first.submit(4)
    first.outbox.claim(1)
    assert first.outbox.record_result(job, {**RESULT, "job_id": job}) == "recorded"
    first.outbox.close()
    again = Edge(broker, db).start(link=False)
    try:
        outcome = again.collect(1)[job]
        assert outcome.status == Status.EXIT and outcome.result is not None
        assert outcome.local_result == {"n": 4}
    finally:
        again.stop()
