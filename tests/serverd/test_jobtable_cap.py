"""A real serverd (one supervised Triton, the real broker) keeps its job table under
``job_table_max_mb`` by itself: started on a table three times its cap, its maintenance
cuts the oldest finished jobs, counts them in the status and metrics, and keeps serving."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgefed.clock import now_ms
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from edgefed.wire import OffloadResult
from serverd.api.metrics import ServerdMetrics
from serverd.jobtable import LOW_WATER, JobTable
from tests.serverd.conftest import _require_triton
from tests.serverd.harness import Edge, ServerdThread, frame_jpeg, serverd_config

CAP_MB = 8


def _seed(path: Path, max_bytes: int) -> int:
    """A table left by a flood of refused requests, all within retention_s; its size."""
    table = JobTable(path, max_bytes=max_bytes)
    now = now_ms()
    with table._db.atomic():
        table._db.conn.executemany(
            "INSERT INTO jobs (job_id, device_id, model, status, received, ended, error, "
            "reply) VALUES (?, 'ns1/flood', 'nope', 'Failed', ?, ?, 'unknown model', ?)",
            ((f"{n:032x}", now - 60_000 + n // 1000, now, b"e" * 300) for n in range(60_000)),
        )
    used = table.used_bytes()
    table.checkpoint()
    table.close()
    return used


def test_serverd_cuts_a_table_past_its_cap_counts_it_and_keeps_serving(
    broker: Broker, tmp_path: Path
) -> None:
    _require_triton()
    cap = CAP_MB * 2**20
    state = tmp_path / "serverd"
    assert _seed(state / "jobs.sqlite", cap) > 2 * cap
    running = ServerdThread(
        serverd_config(state, broker.port, instances=1, job_table_max_mb=CAP_MB)
    )
    running.start()
    edge = Edge(broker.port)
    try:
        jobs = running.app.jobs
        assert jobs is not None and jobs.max_bytes == cap
        wait_until(
            "the table cut back under its cap",
            lambda: running.call(jobs.used_bytes) <= LOW_WATER * cap,
            timeout=60,
        )
        status = running.call(running.app.status)
        cut = status["job_table_pruned_over_cap"]
        assert cut > 30_000 and status["job_table_failures"] == 0
        exported = ServerdMetrics(lambda: running.call(running.app.status)).own().decode()
        assert f"serverd_job_table_pruned_over_cap_total {float(cut)}" in exported.splitlines()
        edge.send(request := edge.request("echo"), frame_jpeg())
        ((reply, _),) = edge.collect(1)
        assert isinstance(reply, OffloadResult) and reply.job_id == request.job_id
        assert running.job(request.device_id, request.job_id) is not None
    finally:
        edge.close()
        running.stop()


def test_a_job_table_cap_under_8_mb_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="job_table_max_mb"):
        serverd_config(tmp_path, 1883, job_table_max_mb=4)
