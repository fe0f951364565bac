"""packaging/grafana/edgefed-fleet.json read as the tests need it: its panels and their
PromQL with the dashboard's variables given concrete values."""

from __future__ import annotations

import json
from typing import Any

from tests.support.paths import REPO

DASHBOARD = REPO / "packaging" / "grafana" / "edgefed-fleet.json"
# what Grafana puts in for the variables: every edge, and a window of several scrapes
VALUES = {"$instance": ".*", "$__rate_interval": "15s"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    """Every panel but the rows."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with the variables filled in) of every target."""
    out = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VALUES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out
