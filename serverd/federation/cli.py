"""``serverd federation start|status|history``: a thin client of a running serverd's API.

``start MODEL`` opens a round (``POST /api/v1/federation/{model}/rounds``, with the API
token from ``--token-file`` or ``SERVERD_API_TOKEN``); ``status`` prints
``GET /api/v1/federation``; ``history MODEL`` the model's closed rounds. ``--json``
prints the API's answer as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edgefed.errors import EXIT_OK, EdgeFedError
from serverd.api.config import TOKEN_ENV

DEFAULT_URL = "http://127.0.0.1:8081"


def call(url: str, path: str, method: str = "GET", token: str | None = None) -> Any:
    """The API's JSON answer; ``EdgeFedError`` with the API's reason otherwise."""
    request = urllib.request.Request(url.rstrip("/") + path, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("reason", exc.reason)
        except (ValueError, AttributeError):
            reason = exc.reason
        raise EdgeFedError(f"{method} {path}: HTTP {exc.code}: {reason}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise EdgeFedError(f"cannot reach serverd at {url}: {getattr(exc, 'reason', exc)}") from exc


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        try:
            return args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EdgeFedError(f"--token-file {args.token_file}: {exc.strerror}") from exc
    return os.environ.get(TOKEN_ENV) or None


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


def cmd_federation(args: argparse.Namespace) -> int:
    if args.action == "status":
        answer = call(args.url, "/api/v1/federation")
        text = format_status(answer)
    elif args.model is None:
        raise EdgeFedError(f"serverd federation {args.action} needs a MODEL")
    elif args.action == "start":
        answer = call(args.url, f"/api/v1/federation/{args.model}/rounds", "POST", _token(args))
        text = (
            f"{args.model}: round {answer['round']} open on v{answer['base_version']} "
            f"for {', '.join(answer['participants'])}"
        )
    else:
        answer = call(args.url, f"/api/v1/federation/{args.model}/history")
        text = "\n".join(
            f"round {r['round']}: v{r['base_version']} -> "
            f"{'v' + str(r['version']) if r['version'] else 'failed: ' + r['failure']} "
            f"in {r['round_s']:.1f}s, accepted {', '.join(r['accepted']) or '-'}"
            + "".join(f"; {d} rejected: {why}" for d, why in r["rejected"].items())
            for r in answer["rounds"]
        )
    print(json.dumps(answer, indent=2) if args.json else text)
    return EXIT_OK


def add_subparser(sub: Any) -> None:
    p = sub.add_parser("federation", help="start a round, show state or history (via the API)")
    p.add_argument("action", choices=("start", "status", "history"))
    p.add_argument("model", nargs="?", help="federated model (start, history)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"serverd API (default {DEFAULT_URL})")
    p.add_argument(
        "--token-file", type=Path, help=f"file holding the API token (default: ${TOKEN_ENV})"
    )
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")
    p.set_defaults(func=cmd_federation)
