"""``python -m bench fleet``: one serverd serving a fleet of simulated edge devices.

A private mosquitto (TCP_NODELAY) and ``serverd run`` as its own process with
``--instances`` supervised Tritons serving ``--model`` (``echo`` by default: no model, so
the figures are the system's own capacity; ``detector`` runs the pose detector). Device
processes (``bench/_fleet_devices.py``, ``--workers`` of them) each run many devices on
asyncio: one MQTT connection, client id, device id and topic pair per device, requests
framed by the real wire contract with 640x480 frames or 224x224 crops of vtest.avi as
JPEG, a 5 s deadline, priority 5 for ``--high-share`` of the jobs and 0 for the rest,
sent as a Poisson process at ``--rate`` jobs/s per device.

The ramp: 10, 100 and 1,000 devices at ``--rate`` (each ``--duration`` seconds), then
1,000 devices at the rate times each ``--overload`` factor, until high-priority p99
crosses 80 ms. Per step: offered and completed jobs/s, round trip p50/p99 per priority
(publish to reply, on the device's clock), Jain's fairness index over the share of each
device's jobs served, shed jobs per priority, jobs lost (no answer at all by the end of
the drain), serverd's queue depth (its status API, sampled every 0.25 s) and the CPU (%
of one core) and peak RSS of each process group. The top-level keys are the 1,000-device
step at ``--rate``; ``ceiling_jobs_per_s`` is the offered load where high-priority p99
crosses 80 ms (interpolated between steps; null if no step crossed it). Devices connect
anonymously to the loopback broker (identities are per device id and client id; the
ACL and passwords are not in the loop).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from bench.offload_rtt import REPO, crops, frames, free_block
from edgefed import paths
from edgefed.testing.broker import Broker

TARGET_MS = 80.0
HIGH, LOW = 5, 0
IMAGES_DIR = REPO / paths.images_dir()


def write_config(directory: Path, args: argparse.Namespace, mqtt_port: int, api: int) -> Path:
    config = {
        "server_id": "fleet-server",
        "log_level": "WARNING",
        "state_dir": str(directory / "serverd"),
        "mqtt": {"port": mqtt_port, "client_id": "serverd-fleet"},
        "api": {"port": api, "token": secrets.token_urlsafe(24)},
        "images": {
            "dir": str(IMAGES_DIR),
            "trusted_keys": [str(IMAGES_DIR / "keys" / "dev-signing.pub")],
        },
        "triton": {
            "venv": str(REPO / paths.triton_venv()),
            "instances": args.instances,
            "base_port": free_block(3 * args.instances),
            "models": [
                {
                    "name": "detector",
                    "image": "pose_detector",
                    "driver": {"type": "litert", "num_threads": 1},
                },
                {"name": "echo", "backend": "echo"},
            ],
        },
        "scheduler": {"capacity": args.capacity},
        "overload": {"max_wait_ms": args.max_wait_ms},
        "max_queue": args.max_queue,
    }
    path = directory / "serverd.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def write_jpegs(directory: Path) -> Path:
    """640x480 frames (quality 80) and 224x224 crops of them: what devices offload."""
    out = directory / "jpegs"
    out.mkdir()
    full = frames(20, 80)
    for i, jpeg in enumerate(full + crops(full, 224, 80)):
        (out / f"{i:03d}.jpg").write_bytes(jpeg)
    return out


class Sampler:
    """Samples serverd's queue depth and each process group's CPU and memory."""

    def __init__(self, api: int, groups: dict[str, list[int]]) -> None:
        self._url = f"http://127.0.0.1:{api}/api/v1/status"
        self._groups = groups
        self.queued: list[int] = []
        self.rss: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-sampler", daemon=True)
        self._cpu0: dict[int, float] = {}  # CPU seconds of each process, first and last seen
        self._cpu1: dict[int, float] = {}
        self._t0 = 0.0

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self._url, timeout=5) as response:
            return dict(json.load(response))

    def __enter__(self) -> Sampler:
        self._sample_cpu()
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            with contextlib.suppress(OSError, ValueError):
                self.queued.append(int(self.status()["queued"]))
            self._sample_cpu()
            for name, pids in self._groups.items():
                rss = sum(_rss(pid) for pid in pids) / 2**20
                self.rss[name] = max(self.rss.get(name, 0.0), rss)

    def _sample_cpu(self) -> None:
        for pids in self._groups.values():
            for pid in pids:
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(pid).cpu_times()
                    self._cpu0.setdefault(pid, times.user + times.system)
                    self._cpu1[pid] = times.user + times.system

    def cpu_percent(self) -> dict[str, float]:
        """CPU used by each group while sampled, in % of one core."""
        wall = time.perf_counter() - self._t0
        return {
            name: round(
                sum(self._cpu1.get(p, 0.0) - self._cpu0.get(p, 0.0) for p in pids) * 100 / wall, 1
            )
            for name, pids in self._groups.items()
        }


def _rss(pid: int) -> float:
    with contextlib.suppress(psutil.Error):
        return float(psutil.Process(pid).memory_info().rss)
    return 0.0


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def jain(served: list[float]) -> float:
    """Jain's fairness index of the devices' served shares: 1.0 when all are equal."""
    if not served or not any(served):
        return 0.0
    x = np.asarray(served)
    return round(float(x.sum() ** 2 / (len(x) * (x**2).sum())), 4)


def run_step(
    args: argparse.Namespace,
    jpeg_dir: Path,
    port: int,
    groups: dict[str, list[int]],
    api: int,
    devices: int,
    rate: float,
) -> dict[str, Any]:
    ids = [f"site-{i // 100:02d}/cam-{i:04d}" for i in range(devices)]
    workers = min(args.workers, devices)
    procs = []
    for w in range(workers):
        step = {
            "device_ids": ids[w::workers],
            "port": port,
            "rate": rate,
            "high_share": args.high_share,
            "model": args.model,
            "duration_s": args.duration,
            "jpeg_dir": str(jpeg_dir),
            "seed": args.seed * 1000 + devices * 10 + w,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench._fleet_devices", json.dumps(step)],
                cwd=REPO,
                env=os.environ | {"PYTHONPATH": str(REPO)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "connected":
            raise SystemExit("a device worker could not connect its devices")
    log(f"{devices} devices at {rate:g} jobs/s each")
    sampler = Sampler(api, groups | {"devices": [p.pid for p in procs]})
    shed_before = sampler.status().get("shed", {})
    with sampler:
        reports = [json.loads(proc.communicate("go\n", timeout=600)[0]) for proc in procs]
    shed_after = sampler.status().get("shed", {})
    rtt: dict[int, list[float]] = {HIGH: [], LOW: []}
    offered: list[int] = []
    completed: list[int] = []
    for report in reports:
        for priority, values in report["rtt_ms"].items():
            rtt.setdefault(int(priority), []).extend(values)
        offered += report["offered"]
        completed += report["completed"]
    shed = {
        p: sum(r["shed"].get(str(p), 0) for r in reports) for p in (HIGH, LOW)
    }  # as the devices were told; serverd's own count is ``serverd_shed``
    return {
        "devices": devices,
        "rate_per_device": rate,
        "offered_jobs_per_s": round(sum(offered) / args.duration, 1),
        "jobs_per_s": round(sum(completed) / args.duration, 1),
        "p50_ms_high": pct(rtt[HIGH], 50),
        "p99_ms_high": pct(rtt[HIGH], 99),
        "p50_ms_low": pct(rtt[LOW], 50),
        "p99_ms_low": pct(rtt[LOW], 99),
        "jain_index": jain([c / o for c, o in zip(completed, offered, strict=True) if o]),
        "shed_high": shed[HIGH],
        "shed_low": shed[LOW],
        "serverd_shed": {
            p: int(shed_after.get(p, 0)) - int(shed_before.get(p, 0)) for p in shed_after
        },
        "jobs_lost": sum(r["lost"] for r in reports),
        "errors": sum(r["errors"] for r in reports),
        "queue_depth_max": max(sampler.queued, default=0),
        "queue_depth_mean": round(float(np.mean(sampler.queued)), 1) if sampler.queued else 0,
        "cpu_percent": sampler.cpu_percent(),
        "rss_mb_max": {k: round(v, 1) for k, v in sampler.rss.items()},
    }


def log(message: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ceiling(steps: list[dict[str, Any]]) -> float | None:
    """Offered jobs/s where high-priority p99 crosses the target, interpolated."""
    ordered = sorted(steps, key=lambda s: s["offered_jobs_per_s"])
    below: dict[str, Any] | None = None
    for step in ordered:
        p99 = step["p99_ms_high"]
        if p99 is not None and p99 > TARGET_MS:
            if below is None:
                return float(step["offered_jobs_per_s"])
            x0, y0 = below["offered_jobs_per_s"], below["p99_ms_high"]
            x1, y1 = step["offered_jobs_per_s"], p99
            return round(x0 + (TARGET_MS - y0) * (x1 - x0) / (y1 - y0), 1)
        below = step
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fleet", description=__doc__)
    parser.add_argument("--rate", type=float, default=0.6, help="jobs/s per device")
    parser.add_argument("--high-share", type=float, default=0.2, help="share of priority 5")
    parser.add_argument("--model", default="echo", choices=["echo", "detector"])
    parser.add_argument("--instances", type=int, default=2, help="supervised Tritons")
    parser.add_argument("--capacity", type=int, default=4, help="jobs in flight per Triton")
    parser.add_argument("--max-wait-ms", type=float, default=50.0, help="overload bound")
    parser.add_argument("--max-queue", type=int, default=1000, help="jobs held by serverd")
    parser.add_argument("--workers", type=int, default=2, help="device processes")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per step")
    parser.add_argument("--ramp", default="10,100,1000", help="devices per step at --rate")
    parser.add_argument(
        "--overload", default="1.5,2,4", help="rate factors at the last ramp size (ceiling)"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    ramp = [int(n) for n in args.ramp.split(",")]
    factors = [float(f) for f in args.overload.split(",") if f]
    load_before = round(os.getloadavg()[0], 2)  # other work on the host, before and after
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        jpeg_dir = write_jpegs(directory)
        with Broker(directory / "broker") as broker:
            api = free_block(1)
            config = write_config(directory, args, broker.port, api)
            process = subprocess.Popen(
                [sys.executable, "-m", "serverd", "run", "-c", str(config)],
                cwd=REPO,
                env=os.environ | {"PYTHONPATH": str(REPO)},
            )
            try:
                wait_ready(api, process)
                tritons = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
                groups = {
                    "serverd": [process.pid],
                    "triton": tritons,
                    "mosquitto": [broker.pid] if broker.pid is not None else [],
                }
                log(f"serverd ready; warm-up, then steps of {args.duration:.0f} s")
                run_step(args, jpeg_dir, broker.port, groups, api, ramp[0], args.rate)
                steps = []
                for n in ramp:
                    steps.append(run_step(args, jpeg_dir, broker.port, groups, api, n, args.rate))
                for factor in factors:
                    rate = args.rate * factor
                    steps.append(run_step(args, jpeg_dir, broker.port, groups, api, ramp[-1], rate))
                    if (steps[-1]["p99_ms_high"] or 0) > TARGET_MS:
                        break
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
    main_step = steps[len(ramp) - 1]
    keys = ("devices", "jobs_per_s", "p50_ms_high", "p99_ms_high", "p99_ms_low", "jain_index")
    report = {k: main_step[k] for k in keys} | {
        "shed_low": main_step["shed_low"],
        "shed_high": main_step["shed_high"],
        "jobs_lost": sum(s["jobs_lost"] for s in steps),
        "ceiling_jobs_per_s": ceiling(steps),
        "rate_per_device": args.rate,
        "offered_jobs_per_s": main_step["offered_jobs_per_s"],
        "target_ms": TARGET_MS,
        "met": {
            "p99_ms_high": (main_step["p99_ms_high"] or 0) < TARGET_MS,
            "jobs_lost": sum(s["jobs_lost"] for s in steps) == 0,
            "shed_high": main_step["shed_high"] == 0,
        },
        "setup": {
            "model": args.model,
            "instances": args.instances,
            "capacity": args.capacity,
            "max_wait_ms": args.max_wait_ms,
            "high_share": args.high_share,
            "workers": args.workers,
            "duration_s": args.duration,
            "cpus": os.cpu_count(),
            "load_average_1m": [load_before, round(os.getloadavg()[0], 2)],
        },
        "steps": steps,
    }
    print(json.dumps(report))
    return 0


def wait_ready(api: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serverd exited with {process.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{api}/readyz", timeout=2) as r,
        ):
            if r.status == 200:
                return
        time.sleep(0.5)
    raise SystemExit("serverd was not ready within 180 s")
