"""packaging/prometheus/edgefed-alerts.yaml: valid for Prometheus, every alert unit-tested
with promtool on series that raise it and series that must not, every metric it reads one
the daemons export (as documented), every alert explained in docs/alerts.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.metricdocs import documented_metrics, metrics_read
from tests.support.paths import REPO

RULES = REPO / "packaging" / "prometheus" / "edgefed-alerts.yaml"
UNIT_TESTS = Path(__file__).with_name("alerts-test.yaml")
DOCS = REPO / "docs"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run bash packaging/dev/setup.sh")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def anchor(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule, ASCII headings)."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_every_alert_fires_when_it_should_and_only_then() -> None:
    done = promtool("test", "rules", str(UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    fired = {
        case["alertname"]
        for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in group["alert_rule_test"]
        if case.get("exp_alerts")
    }
    severities = {(r["alert"], r["labels"]["severity"]) for r in rules()}
    assert {name for name, _ in severities} == fired
    fired_at = {
        (case["alertname"], alert["exp_labels"]["severity"])
        for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in group["alert_rule_test"]
        for alert in case.get("exp_alerts", [])
    }
    assert severities == fired_at  # each severity of an alert too


def test_the_rules_read_only_metrics_the_daemons_export() -> None:
    used = {name for r in rules() for name in metrics_read(r["expr"])}
    assert used and used <= documented_metrics(), sorted(used - documented_metrics())


def test_every_alert_has_its_section_in_the_docs() -> None:
    headings = {
        anchor(line.lstrip("#"))
        for line in (DOCS / "alerts.md").read_text().splitlines()
        if line.startswith("### ")
    }
    for rule in rules():
        page, _, section = rule["annotations"]["runbook"].partition("#")
        assert page == "docs/alerts.md" and section == rule["alert"].lower()
        assert section in headings, rule["alert"]
