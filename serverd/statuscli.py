"""``serverd status``: a running serverd's state in a terminal (``GET /api/v1/status``).

One screen for the server's operator: ready or not and why, the broker link and its
certificate, each Triton instance (health, jobs in flight and done, supervisor restarts),
the queue and what was shed, jobs by status, offload messages by outcome, the edge
devices heard from, and one line per federated model. ``--json`` prints the API's answer.
"""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from edgefed.errors import EXIT_OK
from edgefed.terminal import table
from serverd.apiclient import add_api_options, call


def _day(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, datetime.UTC).strftime("%Y-%m-%d")


def _when(epoch_ms: int) -> str:
    """``14:02:11 UTC`` within the last day, else with the date."""
    at = datetime.datetime.fromtimestamp(epoch_ms / 1000, datetime.UTC)
    recent = datetime.datetime.now(datetime.UTC) - at < datetime.timedelta(days=1)
    return at.strftime("%H:%M:%S UTC" if recent else "%Y-%m-%d %H:%M:%S UTC")


def _counts(counts: dict[str, Any]) -> str:
    """``Exit 120, Failed 2`` (the non-zero numbers), or ``none``."""
    shown = [f"{k} {v}" for k, v in counts.items() if isinstance(v, int) and v]
    return ", ".join(shown) or "none"


def format_status(st: dict[str, Any]) -> str:
    mqtt = st["mqtt"]
    link = "mqtt up" if mqtt["connected"] else "mqtt DOWN"
    if mqtt.get("cert_expires") is not None:
        link += f" (certificate until {_day(mqtt['cert_expires'])})"
    out = [f"serverd {st['server_id']}: {'ready' if st['ready'] else 'NOT READY'}, {link}", ""]
    instances = st["instances"]
    out += (
        ["no Triton instance configured"]
        if not instances
        else table(
            ["TRITON", "HEALTHY", "IN FLIGHT", "DONE", "RESTARTS", "MODELS"],
            [
                [
                    name,
                    "no (resting after a crash loop)" if i.get("resting") else i["healthy"],
                    i["in_flight"],
                    i["completed"],
                    i.get("restarts", "-"),  # none for an external endpoint
                    ", ".join(i["models"]),
                ]
                for name, i in instances.items()
            ],
        )
    )
    out.append("")
    queue = st["scheduler"]
    shed = {f"priority {p}": n for p, n in st.get("shed", {}).items()}
    out.append(
        f"queue: {queue['queued']} queued, {queue['in_flight']} in flight; shed: {_counts(shed)}"
    )
    failures = st.get("job_table_failures", 0)
    refused = f" (the job table refused {failures} statements: see the log)" if failures else ""
    out.append(f"jobs: {_counts(st['jobs'])}{refused}")
    out.append(f"offload messages: {_counts(st['counters'])}")
    devices = st.get("devices", {}).get("devices", {})
    out.append(f"edge devices heard from (edge events): {len(devices) or 'none'}")
    out += [
        f"  {name}: last {_when(d['last_seen_ms'])}, {_counts(d['events'])}"
        for name, d in sorted(devices.items())
    ]
    fed = st.get("federation", {})
    if fed.get("enabled"):
        out += [
            f"federation {name}: v{m['version']} {m['phase']}, round {m['round']}, "
            f"{m['rounds_done']} done, {m['rounds_failed']} failed"
            for name, m in fed["models"].items()
        ]
    else:
        out.append("federation: not enabled")
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    answer = call(args.url, "/api/v1/status")
    print(json.dumps(answer, indent=2) if args.json else format_status(answer))
    return EXIT_OK


def add_subparser(sub: Any) -> None:
    p = sub.add_parser("status", help="show a running serverd's state (via its API)")
    add_api_options(p, token=False)
    p.set_defaults(func=cmd_status)
