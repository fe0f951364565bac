"""Hostile requests on serverd's request topics (hypothesis, the session's real serverd
with its Tritons): each is answered or dropped and counted; none is an unexpected error,
and serverd still answers a real job afterwards."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from edgefed.testing.wait import wait_until
from edgefed.wire import OffloadResult
from tests.serverd.harness import Edge, ServerdThread, frame_jpeg
from tests.support.hostile import hostile_payloads

CASES = 400  # CI-sized


def test_hostile_requests_never_break_serverd(serverd: ServerdThread, edge: Edge) -> None:
    before = serverd.status()["counters"]
    sent = [0]

    @settings(
        max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(payload=hostile_payloads)
    def publish(payload: bytes) -> None:
        edge.publish_raw(payload)
        sent[0] += 1

    publish()
    wait_until(
        "every hostile request handled",
        lambda: serverd.status()["counters"]["received"] - before["received"] >= sent[0],
        30,
    )
    after = serverd.status()["counters"]
    assert after["errors"] == before["errors"]
    assert sent[0] >= CASES // 2
    edge.quiet(0.5)  # replies to the odd well-formed request among them
    request = edge.request("echo")
    edge.send(request, frame_jpeg(64, 48))
    replies = [r for r, _ in edge.collect(1, timeout=30)]
    while not any(r.job_id == request.job_id for r in replies):
        replies += [r for r, _ in edge.collect(1, timeout=30)]
    answer = next(r for r in replies if r.job_id == request.job_id)
    assert isinstance(answer, OffloadResult)
