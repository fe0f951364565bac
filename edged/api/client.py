"""``edged status``: the status API's view in a terminal (a thin client over HTTP)."""

from __future__ import annotations

import argparse
import datetime
import json
import time
import urllib.error
import urllib.request
from typing import Any

from edgefed.errors import EXIT_OK, EdgeFedError
from edgefed.terminal import cell, duration, table

DEFAULT_URL = "http://127.0.0.1:8080"


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``<url>/api/v1/status``; EdgeFedError if the daemon cannot be reached."""
    target = url.rstrip("/") + "/api/v1/status"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise EdgeFedError(f"{target}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EdgeFedError(f"cannot reach edged at {url}: {reason}") from exc
    except json.JSONDecodeError as exc:
        raise EdgeFedError(f"{target}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EdgeFedError(f"{target}: unexpected answer")
    return data


def format_status(st: dict[str, Any]) -> str:
    """The status as the text ``edged status`` prints."""
    out = [
        f"edged {st['device_id']}: up {duration(st['uptime_s'])}, "
        f"{st['frames_completed']} frames completed, {cell(st['pipeline_fps'])} frames/s",
        "versions: " + ", ".join(f"{k} {v}" for k, v in st["versions"].items()),
        "",
    ]
    out += table(
        ["CAMERA", "STATE", "CAPTURE/s", "PROCESSED/s", "GATED", "STATIC", "PASS", "MOTION"],
        [
            [
                c["name"], c["state"], c["capture_fps"], c["processed_fps"], c["gated"],
                c["skipped_static"],
                None if c["gate_pass_ratio"] is None else f"{c['gate_pass_ratio']:.1%}",
                f"{c['motion_ratio']:.2%}",
            ]
            for c in st["cameras"]
        ],
    )  # fmt: skip
    out += [f"  {c['name']}: {c['last_error']}" for c in st["cameras"] if c.get("last_error")]
    out.append("")
    out += table(
        ["MODEL", "LOADED", "ENABLED", "DRIVER", "DEVICE", "P50ms", "P99ms", "RUNS", "ERR", "DROP"],
        [
            [
                m["name"], m["loaded"], m["enabled"], m["driver"], m["device"], m["p50_ms"],
                m["p99_ms"], m["inferences"], m["errors"], m["dropped"],
            ]
            for m in st["models"]
        ],
    )  # fmt: skip
    out += [f"  {m['name']}: {m['error']}" for m in st["models"] if m.get("error")]
    out.append("")
    box = st["outbox"]
    if box["available"]:
        counts = ", ".join(f"{k} {v}" for k, v in box["counts"].items() if v)
        out.append(f"outbox: {box['depth']} open" + (f" ({counts})" if counts else ""))
    else:
        out.append("outbox: not configured")
    links = ", ".join(_link(ln) for ln in st["links"])
    out.append(f"links: {links or 'none configured'}")
    for name, way in st.get("twin", {}).items():
        out += _twin(name, way)
    pv = st["preview"]
    out.append(f"preview: {pv['viewers']} viewers, {pv['renders']} renders")
    return "\n".join(out)


def _twin(name: str, way: dict[str, Any]) -> list[str]:
    """``twin (dmi): registered, 1 refused``, then each refused property and why."""
    parts = []
    if "registered" in way:
        parts.append("registered" if way["registered"] else "NOT registered")
    rejections = way.get("rejections", {})
    parts.append(f"{len(rejections)} refused")
    if way.get("last_error"):
        parts.append(f"last error: {way['last_error']}")
    lines = [f"twin ({name}): " + ", ".join(parts)]
    lines += [f"  {prop} = {r['value']!r}: {r['reason']}" for prop, r in rejections.items()]
    return lines


def _link(link: dict[str, Any]) -> str:
    """``mqtt up``, and the client certificate's end when it has one."""
    text = f"{link['name']} {'up' if link['connected'] else 'DOWN'}"
    expires = link.get("cert_expires")
    if expires is None:
        return text
    day = datetime.datetime.fromtimestamp(expires, datetime.UTC).strftime("%Y-%m-%d")
    ended = expires <= time.time()
    return text + (
        f" (client certificate EXPIRED {day})" if ended else f" (certificate until {day})"
    )


def cmd_status(args: argparse.Namespace) -> int:
    status = fetch_status(args.url, args.timeout)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return EXIT_OK


def add_subparsers(sub: Any) -> None:
    """Register ``status`` on the ``edged`` command's sub-parsers."""
    p = sub.add_parser("status", help="show a running edged's status (via its HTTP API)")
    p.add_argument("--url", default=DEFAULT_URL, help=f"edged API base URL (default {DEFAULT_URL})")
    p.add_argument("--json", action="store_true", help="print the raw JSON status")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    p.set_defaults(func=cmd_status)
