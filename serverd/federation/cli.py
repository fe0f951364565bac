"""``serverd federation start|status|history``: a thin client of a running serverd's API.

``start MODEL`` opens a round (``POST /api/v1/federation/{model}/rounds``, with the API
token from ``--token-file`` or ``SERVERD_API_TOKEN``); ``status`` prints
``GET /api/v1/federation``; ``history MODEL`` the model's closed rounds (the latest
name their devices, older ones count them). ``--json`` prints the API's answer as it is.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgefed.errors import EXIT_OK, EdgeFedError
from serverd.apiclient import add_api_options, call, token


def format_status(status: dict[str, Any]) -> str:
    if not status.get("enabled"):
        return "federation: not enabled"
    lines = []
    for name, fed in status["models"].items():
        lines.append(
            f"{name}: v{fed['version']} {fed['phase']}, round {fed['round']}, "
            f"{fed['rounds_done']} done, {fed['rounds_failed']} failed"
        )
        if fed["phase"] == "collecting":
            lines.append(f"  waiting for {', '.join(fed['participants'])}")
        for device, report in sorted(fed["adoptions"].items()):
            verdict = "adopted" if report["adopted"] else f"refused: {report['reason']}"
            lines.append(f"  {device} v{report['version']} {verdict}")
    for device, offer in sorted(status["edges"].items()):
        allowed = "" if offer["training_allowed"] else " (training forbidden)"
        samples = ", ".join(f"{m} {n}" for m, n in offer["samples"].items())
        age = f", offered {offer['age_s']:.0f} s ago" if "age_s" in offer else ""
        lines.append(f"edge {device}: {samples}{allowed}{age}")
    return "\n".join(lines)


def format_round(r: dict[str, Any]) -> str:
    """One history row: its devices, or their counts once serverd keeps only those."""
    outcome = f"v{r['version']}" if r["version"] else f"failed: {r['failure']}"
    head = f"round {r['round']}: v{r['base_version']} -> {outcome} in {r['round_s']:.1f}s"
    if not r.get("devices_listed", True):
        return (
            f"{head}, accepted {r['accepted_count']}, rejected {r['rejected_count']}, "
            f"missing {r['missing_count']} (devices no longer listed)"
        )
    return f"{head}, accepted {', '.join(r['accepted']) or '-'}" + "".join(
        f"; {d} rejected: {why}" for d, why in r["rejected"].items()
    )


def cmd_federation(args: argparse.Namespace) -> int:
    if args.action == "status":
        answer = call(args.url, "/api/v1/federation")
        text = format_status(answer)
    elif args.model is None:
        raise EdgeFedError(f"serverd federation {args.action} needs a MODEL")
    elif args.action == "start":
        answer = call(args.url, f"/api/v1/federation/{args.model}/rounds", "POST", token(args))
        text = (
            f"{args.model}: round {answer['round']} open on v{answer['base_version']} "
            f"for {', '.join(answer['participants'])}"
        )
    else:
        answer = call(args.url, f"/api/v1/federation/{args.model}/history")
        text = "\n".join(format_round(r) for r in answer["rounds"])
    print(json.dumps(answer, indent=2) if args.json else text)
    return EXIT_OK


def add_subparser(sub: Any) -> None:
    p = sub.add_parser("federation", help="start a round, show state or history (via the API)")
    p.add_argument("action", choices=("start", "status", "history"))
    p.add_argument("model", nargs="?", help="federated model (start, history)")
    add_api_options(p)
    p.set_defaults(func=cmd_federation)
