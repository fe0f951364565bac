"""``python -m bench outbox``: outbox enqueue and drain rates with durability on.

Enqueue: ``Outbox.enqueue`` of one job per transaction (what ``OffloadClient.submit``
does). Drain, without network: claim 32 due jobs, then mark them sent, record their
results and start post-processing, and finish them (Exit): every write the offload
client makes for a job, group-committed per step as the client does for a burst of
PUBACKs and results (``drain_per_s_one_commit_per_step`` commits each step of each job
alone: the worst case, one job at a time). ``synchronous=NORMAL`` (WAL) survives kill -9
of the process and is the default; ``*_full_sync`` is ``FULL``, which also survives
power loss. Payloads are 50 KB (a 640x480 JPEG) unless ``--payload-bytes`` says
otherwise; ``*_10kb`` repeats the default run with 10 KB crops.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Literal

from edged.offload.outbox import Outbox
from edged.offload.records import NewJob, OutboxConfig
from edgefed.clock import now_ms
from edgefed.wire import LocalSummary, OffloadRequest, new_job_id

BATCH = 32
SMALL_PAYLOAD = 10_000  # a JPEG crop around one motion region


def _jobs(count: int, payload_bytes: int) -> list[NewJob]:
    body = b"\xff\xd8" + b"\x5a" * (payload_bytes - 2)
    created = now_ms()
    out = []
    for n in range(count):
        request = OffloadRequest(
            job_id=new_job_id(),
            device_id="bench-cam",
            model="detector",
            priority=n % 4,
            deadline=created + 3_600_000,
            created=created + n,
            payload_kind="jpeg",
            metadata={"camera": "bench", "frame": n},
            local=LocalSummary(box_scores=[0.31, 0.42]),
        )
        out.append(NewJob(request, body, "bench", "hard_example", {"boxes": 2}))
    return out


def run(
    directory: Path,
    count: int,
    payload_bytes: int,
    sync: Literal["NORMAL", "FULL"],
    batched: bool,
) -> dict[str, float]:
    config = OutboxConfig(
        path=directory / f"outbox-{sync.lower()}-{batched}-{payload_bytes}.sqlite",
        max_jobs=count + 1,
        max_bytes=(count + 1) * payload_bytes,
        keep_finished=count,
        synchronous=sync,
    )
    outbox = Outbox(config)
    jobs = _jobs(count, payload_bytes)
    result = {"results": [{"label": "person", "score": 0.9, "box": [1, 2, 3, 4]}]}
    start = time.perf_counter()
    for job in jobs:
        outbox.enqueue(job)
    enqueue_s = time.perf_counter() - start
    drained = 0
    start = time.perf_counter()
    while True:
        claimed = outbox.claim(BATCH)
        if not claimed:
            break
        ids = [record.id for record, _ in claimed]
        if batched:  # as OffloadClient's worker does with a burst of PUBACKs and results
            with outbox.batch():
                for job_id in ids:
                    outbox.mark_sent(job_id)
            with outbox.batch():
                for job_id in ids:
                    outbox.record_result(job_id, result)
                    outbox.begin_postprocess(job_id)
            with outbox.batch():
                for job_id in ids:
                    outbox.finish(job_id)
        else:
            for job_id in ids:
                outbox.mark_sent(job_id)
                outbox.record_result(job_id, result)
                outbox.begin_postprocess(job_id)
                outbox.finish(job_id)
        drained += len(ids)
    drain_s = time.perf_counter() - start
    counts = outbox.counts()
    outbox.close()
    if drained != count or counts["Exit"] != count:
        raise RuntimeError(f"drained {drained} of {count} jobs: {counts}")
    return {"enqueue_per_s": count / enqueue_s, "drain_per_s": count / drain_s}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench outbox", description=__doc__)
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per run")
    parser.add_argument("--payload-bytes", type=int, default=50_000, help="JPEG size per job")
    parser.add_argument("--dir", type=Path, default=None, help="where the databases go")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        normal = run(Path(tmp), args.jobs, args.payload_bytes, "NORMAL", batched=True)
        single = run(Path(tmp), args.jobs, args.payload_bytes, "NORMAL", batched=False)
        full = run(Path(tmp), args.jobs, args.payload_bytes, "FULL", batched=True)
        crop = run(Path(tmp), args.jobs, SMALL_PAYLOAD, "NORMAL", batched=True)
    report = {
        "enqueue_per_s": round(normal["enqueue_per_s"]),
        "drain_per_s": round(normal["drain_per_s"]),
        "drain_per_s_one_commit_per_step": round(single["drain_per_s"]),
        "enqueue_per_s_full_sync": round(full["enqueue_per_s"]),
        "drain_per_s_full_sync": round(full["drain_per_s"]),
        "enqueue_per_s_10kb": round(crop["enqueue_per_s"]),
        "drain_per_s_10kb": round(crop["drain_per_s"]),
        "jobs": args.jobs,
        "payload_bytes": args.payload_bytes,
        "drain": "claim 32 + mark_sent + record_result + postprocess + finish, group-committed "
        "per step as the offload client does; no network",
        "targets": {"enqueue_per_s": 2000, "drain_per_s": 1000},
    }
    print(json.dumps(report))
    return 0
