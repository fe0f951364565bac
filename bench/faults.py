"""``python -m bench faults``: the system under faults and hostile input, on real parts.

Brings up mosquitto with the shipped config (``packaging/mosquitto``: mutual TLS, no
anonymous clients, the shipped ACL; ``bench/_faults_broker.py``), ``serverd run`` with a
real Triton serving ``echo``, and edged's offload client with its SQLite outbox on device
A's certificate. Then:

1. the refusals: an anonymous client cannot connect; device A, with a valid
   certificate, cannot publish on device B's twin, request or reply topics or on its own
   reply topic (privileged subscribers see nothing arrive);
2. each fault of ``bench/_faults_inject.py`` while the edge submits jobs at ``--rate``:
   every job stored in the outbox must be told exactly once (lost: never told;
   duplicated: told twice), jobs refused at a full outbox are counted, not lost;
   ``drain_s`` is from the end of its traffic (``settle_s`` after the fault ended) until
   every job of its phase is closed;
3. the fuzz: ``--fuzz`` seeded hostile cases spread over the input classes (requests to
   serverd, replies to the edge, twin deltas, serverd's and edged's API bodies (edged:
   ``edged run`` on the real video with one model), model images);
   a crash is an exception that escaped a handler, a 5xx, a daemon that died.

Prints one JSON line: ``faults_tried``, ``faults_survived``, ``jobs_lost``,
``jobs_duplicated``, ``fuzz_cases``, ``crashes``, ``anonymous_refused``,
``foreign_publish_refused``, ``takeover_refused``, then ``faults`` (per fault) and
``fuzz`` (per class).
``tests/bench/test_faults.py`` runs the same code with small counts in the suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import _faults_fuzz as fuzz
from bench._faults_broker import (
    ShippedBroker,
    anonymous_refused,
    foreign_publish_refused,
    takeover_refused,
)
from bench._faults_inject import SYSTEM_FAULTS, System, camera_loss, corrupt_sqlite
from bench._faults_system import REPO, Edge, Edged, Feeder, JumpClock, Ledger, Serverd, wait_for
from edgefed import paths

STANDALONE = ("corrupt_sqlite", "camera_loss")
# shares of --fuzz per class: the MQTT classes are cheap, a model image costs ~20 ms
SHARES = {
    "serverd_requests": 0.28,
    "edge_replies": 0.28,
    "twin_deltas": 0.2,
    "serverd_api_bodies": 0.07,
    "edged_api_bodies": 0.12,
    "model_images": 0.05,
}


def run(
    directory: Path,
    faults: Sequence[str],
    fuzz_cases: int,
    rate_hz: float = 20.0,
    settle_s: float = 2.0,
    seed: int = 15,
) -> dict[str, Any]:
    broker = ShippedBroker(directory / "broker")
    broker.start()
    serverd: Serverd | None = None
    edge: Edge | None = None
    try:
        out: dict[str, Any] = {
            "anonymous_refused": anonymous_refused(broker),
            "foreign_publish_refused": foreign_publish_refused(broker),
            "takeover_refused": takeover_refused(broker),
        }
        serverd = Serverd(directory / "serverd", broker)
        serverd.start()
        ledger, clock = Ledger(), JumpClock()
        edge = Edge(broker, directory / "edge", ledger, clock)
        wait_for("serverd online", edge.server_online.is_set, 180)
        system = System(broker, serverd, edge, ledger, clock, directory)
        report: dict[str, dict[str, Any]] = {}
        crashes = 0
        for name in faults:
            row = report.setdefault(name, {"tried": 0, "survived": True})
            row["tried"] += 1
            if name in STANDALONE:
                standalone = corrupt_sqlite if name == "corrupt_sqlite" else camera_loss
                outcome = standalone(directory / f"{name}-{row['tried']}")
                row["survived"] = row["survived"] and outcome.pop("survived")
                row.update(outcome)
                continue
            before = edge.crashes()
            ledger.phase = name
            with Feeder(edge, rate_hz):
                time.sleep(settle_s)
                SYSTEM_FAULTS[name](system)
                time.sleep(settle_s)
            drained = wait_for(
                f"every job of {name} closed", lambda n=name: not ledger.open_in(n), 300
            )
            row["drain_s"] = max(row.get("drain_s", 0.0), round(drained, 2))
            if not serverd.alive:  # died by itself: a crash; restarted for the next fault
                crashes += 1
                row["survived"] = False
                serverd.start()
                wait_for("serverd online", edge.server_online.is_set, 180)
            crashes += edge.crashes() - before
            row["survived"] = row["survived"] and edge.crashes() == before
        for phase, counts in ledger.per_phase().items():
            if phase in report:
                report[phase].update(counts, why_not_exit=ledger.why_not_exit(phase))
                if counts["lost"] or counts["duplicated"]:
                    report[phase]["survived"] = False
        fuzzed = run_fuzz(directory / "fuzz", broker, serverd, edge, fuzz_cases, seed)
        crashes += sum(row["crashes"] for row in fuzzed.values())
        rows = ledger.per_phase().values()
        out = {
            "faults_tried": sum(r["tried"] for r in report.values()),
            "faults_survived": sum(r["tried"] for r in report.values() if r["survived"]),
            "jobs_lost": sum(r["lost"] for r in rows),
            "jobs_duplicated": sum(r["duplicated"] for r in rows),
            "fuzz_cases": sum(row["cases"] for row in fuzzed.values()),
            "crashes": crashes,
            **out,
            "jobs": sum(r["jobs"] for r in rows),
            "jobs_refused": sum(r["refused"] for r in rows),
            "faults": report,
            "fuzz": fuzzed,
        }
    finally:
        if edge is not None:
            edge.close()
        if serverd is not None:
            serverd.stop()
        broker.stop()
    return out


def run_fuzz(
    directory: Path, broker: ShippedBroker, serverd: Serverd, edge: Edge, total: int, seed: int
) -> dict[str, dict[str, int]]:
    counts = {name: max(1, round(total * share)) for name, share in SHARES.items()}
    h = fuzz.Hostile(seed)
    base = REPO / paths.images_dir() / "face_detector"
    crashes = {
        "serverd_requests": lambda n: fuzz.fuzz_serverd_requests(broker, serverd, n, h),
        "edge_replies": lambda n: fuzz.fuzz_edge_replies(broker, edge, n, h),
        "twin_deltas": lambda n: fuzz.fuzz_twin_deltas(broker, directory / "twin", n, h),
        "serverd_api_bodies": lambda n: fuzz.fuzz_serverd_api(serverd, n, h),
        "model_images": lambda n: fuzz.fuzz_manifests(directory / "images", base, n, h),
    }
    directory.mkdir(parents=True, exist_ok=True)
    edged = Edged(directory / "edged")
    edged.start()
    try:
        crashes["edged_api_bodies"] = lambda n: fuzz.fuzz_edged_api(edged, n, h)
        out = {name: {"cases": n, "crashes": crashes[name](n)} for name, n in counts.items()}
    finally:
        exit_code = edged.stop()
    out["edged_api_bodies"]["crashes"] += exit_code != 0  # it stops cleanly on SIGTERM
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench faults", description=__doc__)
    every = [*SYSTEM_FAULTS, *STANDALONE]
    parser.add_argument("--faults", default=",".join(every), help="comma-separated, in order")
    parser.add_argument("--repeat", type=int, default=1, help="run the fault list this often")
    parser.add_argument("--fuzz", type=int, default=21_000, help="hostile cases in all")
    parser.add_argument("--rate", type=float, default=20.0, help="jobs/s during each fault")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(every))
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(every)}")
    logging.basicConfig(level=logging.CRITICAL)  # faults make the daemons' logs loud
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as folder:
        out = run(Path(folder), faults * args.repeat, args.fuzz, args.rate, seed=args.seed)
    print(json.dumps(out))
    return 0
