"""``python -m bench soak``: does the demo stack hold its memory, files and threads over time?

Runs the demo itself (``packaging/dev/demo.py --no-browser``: a private TLS mosquitto,
serverd with its Triton, edged on vtest.avi looping at its native 10 frames a second with
the four demo models, offloading hard examples and a server-only model) for ``--minutes``
and samples every part's processes every ``--interval`` seconds: resident memory, open
file descriptors, threads, and the size of the state dir (logs, outbox, job table,
model versions; not the results file, which rotates at its own cap). The first ``--warmup-minutes``
(models loading, caches, the tracker and the outbox filling to their working size) are
left out of the growth figures, which are least-squares slopes over the rest.

A leak shows as a slope that stays when the run is made longer: memory that settles (the
outbox's and the job table's pages, Python's arenas) rises in steps and then stays, so
``rss_growth_mb_per_hour_last_half`` (the slope over the second half of the samples after
the warm-up) tells it from a leak, which keeps its slope there. Compare either with
``rss_mb_spread`` (max - min after the warm-up) before reading one into it.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "packaging/dev/demo.py"
PYTHON = REPO / ".venv/bin/python"

# each part of the stack by what its command line holds
PARTS = {
    "edged": ("edged", "run"),
    "serverd": ("serverd", "run"),
    "triton": ("tritonserver",),
    "mosquitto": ("mosquitto",),
}


def part_of(proc: psutil.Process) -> str | None:
    try:
        words = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    for part, needles in PARTS.items():
        if all(n in words for n in needles):
            return part
    return None


def sample(demo: psutil.Process) -> dict[str, dict[str, float]]:
    """Memory, descriptors and threads summed over each part's processes now (Triton's
    python backend stubs count as Triton)."""
    out = {part: {"rss_mb": 0.0, "fds": 0.0, "threads": 0.0} for part in PARTS}
    procs = demo.children(recursive=True)
    parents = {p.pid: part_of(p) for p in procs}
    for proc in procs:
        part = parents[proc.pid]
        with contextlib.suppress(psutil.Error):
            part = part or parents.get(proc.ppid())  # a Triton backend stub
        if part is None:
            continue
        with contextlib.suppress(psutil.Error), proc.oneshot():
            out[part]["rss_mb"] += proc.memory_info().rss / 2**20
            out[part]["fds"] += proc.num_fds()
            out[part]["threads"] += proc.num_threads()
    return out


def state_mb(state: Path) -> float:
    """The state dir's size in MB without the results file and its rotations, which grow
    by design up to their own cap (``output.results_max_mb``, docs/configuration.md)."""
    total = 0
    for entry in state.rglob("*"):
        with contextlib.suppress(OSError):
            if entry.is_file() and not entry.is_symlink() and "results.jsonl" not in entry.name:
                total += entry.stat().st_size
    return total / 2**20


def slope_per_hour(times: list[float], values: list[float]) -> float | None:
    if len(times) < 3:
        return None
    return float(np.polyfit(np.array(times) / 3600, np.array(values), 1)[0])


def summarise(
    samples: list[tuple[float, dict[str, dict[str, float]], float]], warmup_s: float
) -> dict[str, Any]:
    steady = [s for s in samples if s[0] >= warmup_s] or samples[-1:]
    times = [s[0] for s in steady]
    parts: dict[str, Any] = {}
    for part in PARTS:
        rss = [s[1][part]["rss_mb"] for s in steady]
        if not any(rss):
            continue
        growth = slope_per_hour(times, rss)
        half = len(times) // 2
        late = slope_per_hour(times[half:], rss[half:])
        parts[part] = {
            "rss_mb_after_warmup": round(rss[0], 1),
            "rss_mb_last": round(rss[-1], 1),
            "rss_mb_spread": round(max(rss) - min(rss), 1),
            "rss_growth_mb_per_hour": None if growth is None else round(growth, 2),
            "rss_growth_mb_per_hour_last_half": None if late is None else round(late, 2),
            "fds_after_warmup": int(steady[0][1][part]["fds"]),
            "fds_last": int(steady[-1][1][part]["fds"]),
            "threads_after_warmup": int(steady[0][1][part]["threads"]),
            "threads_last": int(steady[-1][1][part]["threads"]),
        }
    disk = [s[2] for s in steady]
    growth = slope_per_hour(times, disk)
    return {
        "parts": parts,
        "state_dir_mb_after_warmup": round(disk[0], 2),
        "state_dir_mb_last": round(disk[-1], 2),
        "state_dir_growth_mb_per_hour": None if growth is None else round(growth, 1),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--warmup-minutes", type=float, default=3)
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples")
    parser.add_argument("--quiet", action="store_true", help="no line per sample on stderr")
    args = parser.parse_args(argv)
    if args.warmup_minutes >= args.minutes:
        parser.error("--warmup-minutes must be shorter than --minutes")
    with tempfile.TemporaryDirectory(prefix="edgefed-soak-") as tmp:
        state = Path(tmp) / "demo"
        log = Path(tmp) / "demo.out"
        duration = args.minutes * 60
        command = [str(PYTHON), str(DEMO), "--no-browser", "--port", "0", "--duration"]
        with log.open("w") as out:
            demo = subprocess.Popen(
                [*command, str(duration), "--state-dir", str(state)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                samples = watch(
                    demo, log, state, duration - args.interval, args.interval, args.quiet
                )
            finally:
                if demo.poll() is None:
                    demo.terminate()
                demo.wait(timeout=120)
        summary_file = state / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        if demo.returncode != 0 or not samples:
            print(log.read_text()[-3000:], file=sys.stderr)
        result = {
            "minutes": args.minutes,
            "warmup_minutes": args.warmup_minutes,
            "samples": len(samples),
            "demo_exit": demo.returncode,
            "frames_completed": summary.get("frames_completed"),
            "offload_results": summary.get("offload_results"),
            "outbox_jobs": summary.get("offload", {}).get("jobs"),
            # runs of each model, and frames it skipped with its queue full (a busy host)
            "models": {
                name: {k: m.get(k) for k in ("inferences", "dropped", "errors")}
                for name, m in summary.get("models", {}).items()
            },
            **(summarise(samples, args.warmup_minutes * 60) if samples else {}),
        }
    print(json.dumps(result))
    return 0 if demo.returncode == 0 and samples else 1


def watch(
    demo: subprocess.Popen[str], log: Path, state: Path, until: float, interval: float, quiet: bool
) -> list[tuple[float, dict[str, dict[str, float]], float]]:
    """Sample from the moment edged answers (the demo prints its dashboard's address, and
    its clock starts) until ``until`` seconds later, before the demo starts stopping."""
    proc = psutil.Process(demo.pid)
    while demo.poll() is None and "dashboard:" not in log.read_text():
        time.sleep(1)
    started = time.monotonic()
    samples = []
    while demo.poll() is None and (now := time.monotonic() - started) < until:
        parts = sample(proc)
        samples.append((now, parts, state_mb(state)))
        if not quiet:
            rss = " ".join(f"{k}={v['rss_mb']:.0f}MB" for k, v in parts.items())
            print(f"{now / 60:6.1f} min  {rss}  state={samples[-1][2]:.1f}MB", file=sys.stderr)
        time.sleep(interval)
    return samples
