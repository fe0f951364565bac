"""The metrics the daemons document (docs/api.md, docs/serverd-api.md), for checking what
reads them (alerting rules, the Grafana dashboard) against what is exported."""

from __future__ import annotations

import re

from tests.support.paths import REPO

METRIC = re.compile(r"\b((?:edged|serverd)_[a-z_]+)")


def documented_metrics() -> set[str]:
    """Every metric named in the first column of the two metric tables."""
    documented = set()
    for doc in ("api.md", "serverd-api.md"):
        for line in (REPO / "docs" / doc).read_text().splitlines():
            if line.startswith("| `"):
                documented |= set(re.findall(r"`((?:edged|serverd)_[a-z_]+)`", line.split("|")[1]))
    return documented


def metrics_read(expr: str) -> set[str]:
    """The daemons' metrics a PromQL expression reads (a histogram's by its own name)."""
    return {name.removesuffix("_bucket") for name in METRIC.findall(expr)}
