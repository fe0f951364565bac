"""``python -m bench jobtable``: what serverd's job table costs its event loop at a
flood's size, and how long its cap takes to bring it back.

A table of ``--rows`` finished jobs of the kind a flood of refused requests leaves (~430 B
each: one device certificate sent ~2,260 a second through the real broker, 196 M rows a
day), 10% of them past ``retention_s``. Timed on the table itself: the header read of
its size (``used_bytes``), ``counts`` (each /metrics scrape and status call: a read of the
triggers' tally; ``old_counts_ms``, the scan of the status index it was before), the whole-
table ``DELETE`` pruning was before (``old_prune_ms``, nothing due), one batch of age
pruning (``prune_batch_ms``). Then maintenance ticks (``trim``) cut it to the
default cap with a task measuring the loop's longest stall between its turns
(``max_loop_stall_ms``; ``transaction_ms``: each deletion's), and ``counts`` is timed
again at the cap. On a host with other load, the maximums are the scheduler's as much as
SQLite's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgefed.clock import now_ms
from edgefed.wire import new_job_id
from serverd.jobtable import BATCH, DEFAULT_MAX_BYTES, OPEN, JobTable

DAY_MS = 86_400_000
OLD_COUNTS = "SELECT status, count(*) FROM jobs GROUP BY status"  # before the tally: a scan
OLD_PRUNE = (  # the statement before: no index on ended, so a scan of the whole table
    f"DELETE FROM jobs WHERE ended < ? AND status NOT IN ({','.join('?' * len(OPEN))})"
)


def _fill(table: JobTable, rows: int, now: int) -> None:
    """``rows`` refused jobs with random ids (as devices make them), the first tenth
    received a day and an hour ago, the others in the last minute."""
    reply, old = b"x" * 200, rows // 10

    def received(n: int) -> int:
        return now - DAY_MS - 3_600_000 + n if n < old else now - 60_000 + n // 1000

    for start in range(0, rows, 100_000):
        with table._db.atomic():
            table._db.conn.executemany(
                "INSERT INTO jobs (job_id, device_id, model, priority, deadline, created, "
                "status, received, ended, reply, error) VALUES (?, 'ns/d', 'm', 0, ?, ?, "
                "'Failed', ?, ?, ?, 'model ''m'' is not served')",
                (
                    (new_job_id(), now, now, received(n), received(n), reply)
                    for n in range(start, min(rows, start + 100_000))
                ),
            )
        if table.checkpoint():
            table.restart_wal()


def _ms(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


async def _ticks(table: JobTable, retention_s: float) -> tuple[int, int, float]:
    """Maintenance ticks (back to back: serverd waits ``health_interval_s`` between them)
    until one deletes nothing: (rows, ticks, the loop's longest stall in ms)."""
    stall, last = 0.0, time.perf_counter()

    async def watch() -> None:
        nonlocal stall, last
        while True:
            now = time.perf_counter()
            stall, last = max(stall, now - last), now
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    deleted = ticks = 0
    while batch := await table.trim(retention_s):  # each tick as ``maintain`` runs it
        deleted, ticks = deleted + batch, ticks + 1
        if await asyncio.to_thread(table.checkpoint):
            table.restart_wal()
        await asyncio.sleep(0)
        last = time.perf_counter()  # a tick's end: the loop is free until the next
    watcher.cancel()
    return deleted, ticks, stall * 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench jobtable", description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000, help="finished jobs in the table")
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        now = now_ms()
        table = JobTable(Path(tmp) / "jobs.sqlite", max_bytes=2**62)
        _fill(table, args.rows, now)
        used = table.used_bytes()
        report: dict[str, object] = {
            "rows": args.rows,
            "used_mb": round(used / 2**20),
            "used_bytes_us": round(_ms(table.used_bytes) * 1000, 1),
            "counts_ms": round(_ms(table.counts), 3),
            "old_counts_ms": round(_ms(lambda: table._db.execute(OLD_COUNTS).fetchall()), 1),
            "old_prune_ms": round(_ms(lambda: table._db.execute(OLD_PRUNE, (0, *OPEN))), 1),
            "prune_nothing_due_ms": round(_ms(lambda: table.prune(0)), 3),
        }
        cutoff = now - DAY_MS
        batches = [_ms(lambda: table.prune(cutoff)) for _ in range(20)]
        report["prune_batch_ms"] = {
            "rows": BATCH,
            "median": round(statistics.median(batches), 1),
            "max": round(max(batches), 1),
        }
        table.max_bytes = DEFAULT_MAX_BYTES
        transactions: list[float] = []
        delete = table._delete_oldest

        def timed(received_before_ms: int, limit: int) -> int:
            start = time.perf_counter()
            try:
                return delete(received_before_ms, limit)
            finally:
                transactions.append((time.perf_counter() - start) * 1000)

        table._delete_oldest = timed  # type: ignore[method-assign]
        start = time.perf_counter()
        deleted, ticks, stall = asyncio.run(_ticks(table, DAY_MS / 1000))
        cuts = statistics.quantiles(transactions, n=100)
        report["to_default_cap"] = {
            "cap_mb": DEFAULT_MAX_BYTES // 2**20,
            "rows_deleted": deleted,
            "pruned_over_cap": table.pruned_over_cap,
            "ticks": ticks,
            "s": round(time.perf_counter() - start, 1),
            "transaction_ms": {
                "p50": round(cuts[49], 1),
                "p99": round(cuts[98], 1),
                "max": round(max(transactions), 1),
            },
            "max_loop_stall_ms": round(stall, 1),
            "used_mb": round(table.used_bytes() / 2**20),
            "rows_left": sum(table.counts().values()),
            "counts_ms": round(_ms(table.counts), 3),
            "old_counts_ms": round(_ms(lambda: table._db.execute(OLD_COUNTS).fetchall()), 1),
        }
        table.close()
    print(json.dumps(report))
    return 0
