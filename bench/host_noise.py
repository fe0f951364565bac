"""``python -m bench host-noise``: how often this host takes a CPU away, and for how long.

The latency figures of the other benchmarks (``offload-rtt`` most of all: a round trip of a
few milliseconds through five processes) include every pause the host imposes: another
tenant's work on the same physical core, the hypervisor, interrupts. This probe runs one
process per CPU, pinned to it, that does nothing but read the clock in a loop for
``--seconds``; a step between two readings longer than ``--min-gap-us`` is time the CPU
was taken away. Run it next to a latency benchmark to tell the host's noise from the
system's own tail: a round trip of T ms that meets a gap of G ms takes T + G.

Prints one JSON object: per CPU the share of time lost and the gaps counted per size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import time
from typing import Any

BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 3.0)  # upper bounds; the last bucket is everything above


def bucket_names(min_gap_us: float) -> list[str]:
    bounds = [min_gap_us / 1000, *BUCKETS_MS]
    names = [f"{lo:g}-{hi:g}ms" for lo, hi in itertools.pairwise(bounds)]
    return [*names, f">{BUCKETS_MS[-1]:g}ms"]


def probe(cpu: int, seconds: float, min_gap_us: float) -> dict[str, Any]:
    """On ``cpu`` only: read the clock for ``seconds`` and count the gaps."""
    os.sched_setaffinity(0, {cpu})
    min_gap = min_gap_us / 1e6
    counts = [0] * (len(BUCKETS_MS) + 1)
    lost = 0.0
    start = last = time.perf_counter()
    end = start + seconds
    while last < end:
        now = time.perf_counter()
        gap = now - last
        last = now
        if gap > min_gap:
            lost += gap
            index = next((i for i, b in enumerate(BUCKETS_MS) if gap * 1000 <= b), -1)
            counts[index] += 1
    return {
        "cpu": cpu,
        "lost_pct": round(100 * lost / (last - start), 2),
        "gaps": dict(zip(bucket_names(min_gap_us), counts, strict=True)),
        "gaps_over_1ms_per_s": round(sum(counts[BUCKETS_MS.index(1.0) + 1 :]) / seconds, 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench host-noise", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each probe runs")
    parser.add_argument(
        "--min-gap-us", type=float, default=50.0, help="shortest step counted as a gap"
    )
    args = parser.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    with multiprocessing.get_context("spawn").Pool(len(cpus)) as pool:
        results = pool.starmap(probe, [(cpu, args.seconds, args.min_gap_us) for cpu in cpus])
    print(json.dumps({"seconds": args.seconds, "min_gap_us": args.min_gap_us, "cpus": results}))
    return 0
