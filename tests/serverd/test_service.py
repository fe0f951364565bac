"""serverd end to end on a real mosquitto and two real Tritons running the pose detector.

One serverd (two supervised ``tritonserver`` processes) is shared by the session; the
test that kills a Triton runs last and checks that the supervisor brings it back.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509

from edged.netloop import NetLoop
from edged.offload.client import JobOutcome, OffloadClient
from edged.offload.outbox import Outbox
from edged.offload.records import OutboxConfig
from edgefed.lifecycle import Status
from edgefed.mqtt import MqttClient, MqttConfig, MqttTls
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from edgefed.wire import (
    OffloadErrorMessage,
    OffloadResult,
    encode_request,
)
from serverd.api.metrics import ServerdMetrics
from tests.serverd.harness import (
    Edge,
    ServerdThread,
    frame_jpeg,
    serverd_config,
    triton_successes,
)

JPEG = frame_jpeg()


def test_detector_jobs_are_answered_with_real_detections(
    serverd: ServerdThread, edge: Edge
) -> None:
    requests = [edge.request("person") for _ in range(6)]
    for r in requests:
        edge.send(r, JPEG)
    replies = [reply for reply, _ in edge.collect(6)]
    assert {r.job_id for r in replies} == {r.job_id for r in requests}
    for reply in replies:
        assert isinstance(reply, OffloadResult), reply
        people = [d for d in reply.results if d["label"] == "person"]
        assert people and people[0]["score"] > 0.5
        x1, y1, x2, y2 = people[0]["box"]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480  # frame pixels of the 640x480 JPEG
        assert reply.served_by.startswith("test-server/local-")
        assert (
            reply.timings_ms["infer"] > 0
            and reply.timings_ms["total"] >= reply.timings_ms["triton"]
        )
    rows = [serverd.job(r.device_id, r.job_id) for r in requests]
    assert all(row is not None and row["status"] == "Exit" for row in rows)
    accepted = [edge.accepted.get(timeout=5) for _ in requests]
    assert {a.job_id for a in accepted} == {r.job_id for r in requests}
    assert all(a.served_by == "test-server" for a in accepted)


def test_a_job_delivered_twice_is_processed_once(serverd: ServerdThread, edge: Edge) -> None:
    before = triton_successes(serverd, "person")
    counters = serverd.status()["counters"]
    request = edge.request("person")
    data = encode_request(request, JPEG)
    edge.publish_raw(data, wait=False)
    edge.publish_raw(data)  # at-least-once delivery: the same job again, right behind it
    replies = edge.collect(1) + edge.quiet(1.0)
    # the duplicate is dropped while the job runs, or answered with the stored result:
    # either way the job ran once and every reply is the same result
    assert 1 <= len(replies) <= 2 and len({raw for _, raw in replies}) == 1
    first, first_bytes = replies[0]
    assert isinstance(first, OffloadResult) and first.job_id == request.job_id
    assert triton_successes(serverd, "person") == before + 1
    after = serverd.status()["counters"]
    seen_twice = after["duplicates"] - counters["duplicates"] + after["resent"] - counters["resent"]
    assert seen_twice == 1
    # a duplicate of a finished job gets the stored result again, without running it
    edge.publish_raw(data)
    ((_, again_bytes),) = edge.collect(1)
    assert again_bytes == first_bytes
    assert triton_successes(serverd, "person") == before + 1
    row = serverd.job(request.device_id, request.job_id)
    assert row is not None and row["deliveries"] == 3 and row["status"] == "Exit"


def test_another_device_sending_a_known_job_id_never_gets_that_devices_result(
    serverd: ServerdThread, edge: Edge, shared_broker: Broker
) -> None:
    """On main serverd keyed jobs on the job id: device ``evil`` that sent edge's job id
    got edge's stored result. Now evil's job is its own, run for it and answered to it."""
    request = edge.request("echo")
    edge.send(request, JPEG)
    ((mine, _),) = edge.collect(1)
    assert isinstance(mine, OffloadResult)
    evil = Edge(shared_broker.port, device_id="evil")
    try:
        stolen = request.model_copy(update={"device_id": "evil"})
        evil.send(stolen, frame_jpeg(320, 240))
        ((theirs, _),) = evil.collect(1)
    finally:
        evil.close()
    assert isinstance(theirs, OffloadResult)
    assert theirs.device_id == "evil" and theirs.job_id == request.job_id
    assert theirs.completed > mine.completed  # run for evil, not the stored reply resent
    assert edge.quiet(0.3) == []  # nothing on the first device's reply topic
    row = serverd.job("evil", request.job_id)
    mine_row = serverd.job(edge.device_id, request.job_id)
    assert row is not None and row["deliveries"] == 1 and row["status"] == "Exit"
    assert mine_row is not None and mine_row["deliveries"] == 1


def test_unknown_model_and_unsupported_payloads_get_an_error_back(
    serverd: ServerdThread, edge: Edge
) -> None:
    unknown = edge.request("yolo-v99")
    edge.send(unknown, JPEG)
    tensor = edge.request("person").model_copy(update={"payload_kind": "tensor"})
    edge.send(tensor, np.zeros((4, 4), dtype=np.float32))
    broken = edge.request("person")
    edge.send(broken, b"\xff\xd8\xff\xe0 this is no image")
    replies = {reply.job_id: reply for reply, _ in edge.collect(3)}
    for job, code, words in (
        (unknown, "unknown_model", "not served"),
        (tensor, "bad_request", "JPEG"),
        (broken, "bad_request", "not a decodable image"),
    ):
        reply = replies[job.job_id]
        assert isinstance(reply, OffloadErrorMessage), reply
        assert reply.code == code and words in reply.reason and not reply.retryable
    # the final error is stored: a redelivery gets it again
    edge.send(unknown, JPEG)
    ((again, _),) = edge.collect(1)
    assert isinstance(again, OffloadErrorMessage) and again.code == "unknown_model"


def test_malformed_messages_are_counted_and_dropped(
    serverd: ServerdThread, edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serverd.service")
    before = serverd.status()["counters"]["dropped"]
    good = edge.request("echo")
    frame = encode_request(good, JPEG)
    wrong_version = frame[:2] + bytes([9]) + frame[3:]
    truncated = frame[:2] + bytes([1]) + struct.pack(">I", 10_000) + b"{}"
    spoofed = encode_request(good.model_copy(update={"device_id": "site/other"}), JPEG)
    for payload in (
        *[b"garbage by the hundred"] * 300,  # a line each filled the log
        b"garbage",
        wrong_version,
        truncated,
        spoofed,
        b"EF\x01" + b"\x00" * (8 * 1024 * 1024),
    ):
        edge.publish_raw(payload)
    wait_until("all drops counted", lambda: serverd.status()["counters"]["dropped"] >= before + 305)
    drop_lines = [r for r in caplog.records if "dropped a message" in r.getMessage()]
    assert len(drop_lines) <= 2, len(drop_lines)
    assert not edge.quiet(0.5), "a dropped message must not be answered"
    assert "limit" in serverd.status()["counters"]["last_drop"]
    edge.send(good, JPEG)  # and serverd still works
    ((reply, _),) = edge.collect(1)
    assert isinstance(reply, OffloadResult)


def test_a_job_table_that_refuses_writes_still_answers_every_job(
    serverd: ServerdThread, edge: Edge
) -> None:
    """The job table read-only (as a full disk or a file made read-only leaves it): jobs
    still run and are answered, a redelivery runs again, and the refusals are counted."""
    table = serverd.app.jobs
    assert table is not None
    before, refused = serverd.status(), table.failures
    serverd.call(lambda: table._db.execute("PRAGMA query_only=1"))
    try:
        request = edge.request("echo")
        edge.send(request, JPEG, wait=False)
        edge.send(request, JPEG)  # a duplicate while it runs: dropped, or run once it is done
        replies = edge.collect(1) + edge.quiet(1.0)
        edge.send(request, JPEG)  # unrecorded, so a redelivery runs again
        replies += edge.collect(1)
    finally:
        serverd.call(lambda: table._db.execute("PRAGMA query_only=0"))
    assert 2 <= len(replies) <= 3 and {type(r) for r, _ in replies} == {OffloadResult}
    assert {r.job_id for r, _ in replies} == {request.job_id}
    after = serverd.status()
    assert table.failures > refused
    assert serverd.call(serverd.app.status)["job_table_failures"] == table.failures
    assert after["counters"]["errors"] == before["counters"]["errors"]
    assert serverd.job(request.device_id, request.job_id) is None
    edge.send(recorded := edge.request("echo"), JPEG)  # writes work again
    ((reply, _),) = edge.collect(1)
    assert isinstance(reply, OffloadResult)
    wait_until(
        "the job recorded as done",
        lambda: (
            (row := serverd.job(recorded.device_id, recorded.job_id)) is not None
            and row["status"] == "Exit"
        ),
    )


def test_the_edge_offload_client_gets_its_results(
    serverd: ServerdThread, shared_broker: Broker, tmp_path: Path
) -> None:
    outcomes: list[JobOutcome] = []
    net = NetLoop(MqttClient(MqttConfig(port=shared_broker.port, client_id="edge-real-client")))
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.sqlite"))
    client = OffloadClient("site/cam-2", net, outbox, on_outcome=outcomes.append)
    client.start()
    net.start()
    try:
        for _ in range(4):
            client.submit(client.make_request("person", "jpeg", ttl_s=30), JPEG)
        wait_until("4 outcomes", lambda: len(outcomes) == 4)
    finally:
        client.stop()
        net.stop()
        outbox.close()
    assert [o.status for o in outcomes] == [Status.EXIT] * 4
    assert all(o.result is not None and o.result.results for o in outcomes)


def test_serverd_over_mutual_tls_with_an_external_triton(
    serverd: ServerdThread, tmp_path: Path
) -> None:
    process = serverd.app.supervisors["local-1"].process  # another serverd's, on its socket
    with Broker(tmp_path / "tls-broker", tls=True) as broker:
        assert broker.tls is not None
        files = broker.tls
        tls = MqttTls(ca=files.ca, cert=files.client_cert, key=files.client_key)
        config = serverd_config(
            tmp_path / "state",
            broker.port,
            instances=0,
            prefix="tls",
            server_id="tls-server",
            endpoints=[{"name": "ext", "url": process.grpc_url}],
        )
        config.mqtt.tls = tls
        second = ServerdThread(config)
        second.start()
        edge = Edge(broker.port, device_id="tls-cam", prefix="tls", tls=tls)
        try:
            request = edge.request("person")
            edge.send(request, JPEG)
            ((reply, _),) = edge.collect(1)
            mqtt = second.call(second.app.status)["mqtt"]
            metrics = second.call(second.app.metrics.own).decode()
        finally:
            edge.close()
            second.stop()
    assert isinstance(reply, OffloadResult) and reply.served_by == "tls-server/ext"
    assert reply.results
    # the client certificate's end, for an alert before the broker refuses it
    assert mqtt["connected"] and mqtt["cert_expires"] == pytest.approx(
        x509.load_pem_x509_certificate(
            files.client_cert.read_bytes()
        ).not_valid_after_utc.timestamp()
    )
    assert "serverd_mqtt_cert_expiry_timestamp_seconds " in metrics


def test_killing_one_triton_under_load_loses_no_job(serverd: ServerdThread, edge: Edge) -> None:
    victim = serverd.app.supervisors["local-0"]
    requests = [edge.request("person") for _ in range(40)]
    for r in requests:
        edge.send(r, JPEG)

    def victim_busy() -> bool:
        return bool(serverd.status()["instances"]["local-0"]["in_flight"])

    wait_until("jobs on the victim", victim_busy, timeout=30)
    pid = victim.process.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    replies = [reply for reply, _ in edge.collect(40, timeout=120)]
    assert Counter(r.job_id for r in replies) == Counter(r.job_id for r in requests)
    assert all(isinstance(r, OffloadResult) for r in replies), [
        r for r in replies if not isinstance(r, OffloadResult)
    ]
    status = serverd.status()
    assert status["counters"]["requeued"] >= 1
    replaced = [serverd.job(r.device_id, r.job_id) for r in requests]
    assert any(row and row["iteration"] >= 1 and row["instance"] == "local-1" for row in replaced)
    # the supervisor restarts the killed Triton and the scheduler uses it again
    wait_until(
        "the victim restarted",
        lambda: victim.restart_count == 1 and victim.process.poll() is None,
        timeout=120,
    )
    wait_until(
        "local-0 healthy", lambda: serverd.status()["instances"]["local-0"]["healthy"], timeout=30
    )
    # and it takes jobs at once: none fails on a channel left from the Triton that died
    requeued = serverd.status()["counters"]["requeued"]
    for _ in range(10):  # together: more than local-1 takes at once (4)
        edge.send(edge.request("person"), JPEG, wait=False)
    replies = [reply for reply, _ in edge.collect(10)]
    assert all(isinstance(r, OffloadResult) for r in replies)
    assert any(r.served_by.endswith("/local-0") for r in replies if isinstance(r, OffloadResult))
    status = serverd.status()
    assert status["counters"]["requeued"] == requeued and status["instances"]["local-0"]["healthy"]
    restarted = serverd.call(serverd.app.status)["instances"]["local-0"]
    assert restarted["restarts"] == 1 and not restarted["resting"]
    exported = ServerdMetrics(lambda: serverd.call(serverd.app.status)).own().decode()
    assert 'serverd_triton_restarts_total{instance="local-0"} 1.0' in exported.splitlines()
