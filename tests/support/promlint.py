"""promlint's rules (prometheus/client_golang testutil/promlint), ported to check expositions.

``problems(text)`` parses a Prometheus text exposition with prometheus_client's parser and
returns one ``"<metric>: <problem>"`` per rule broken, with the wording promlint uses:
help text, counter ``_total`` suffix, reserved ``_bucket``/``le``/``quantile``/``_count``/
``_sum`` outside histograms and summaries, the metric type in the name, camelCase names,
colons, non-base units and abbreviated units.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

BASE_UNITS = {
    "amperes",
    "bytes",
    "celsius",
    "grams",
    "joules",
    "meters",
    "metres",
    "seconds",
    "volts",
}
NON_BASE_UNITS = {
    "amps": "amperes", "kelvin": "celsius", "kilograms": "grams", "kilometers": "meters",
    "kilometres": "metres", "milliseconds": "seconds", "microseconds": "seconds",
    "nanoseconds": "seconds", "minutes": "seconds", "hours": "seconds", "days": "seconds",
    "weeks": "seconds", "kilobytes": "bytes", "megabytes": "bytes", "gigabytes": "bytes",
    "terabytes": "bytes", "kibibytes": "bytes", "mebibytes": "bytes", "gibibytes": "bytes",
    "bits": "bytes", "fahrenheit": "celsius",
}  # fmt: skip
UNIT_ABBREVIATIONS = {
    "s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d",
}  # fmt: skip
CAMEL = re.compile(r"[a-z][A-Z]")
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)


def problems(text: str) -> list[str]:
    out: list[str] = []
    # the parser adds "_total" to counter samples, so the name as written comes from # TYPE
    declared = {m[0].removesuffix("_total"): m[0] for m in TYPE_LINE.findall(text)}
    for family in text_string_to_metric_families(text):
        name, kind = family.name, family.type
        exposed = f"{name}_total" if kind == "counter" else name
        found: list[str] = []
        if not family.documentation:
            found.append("no help text")
        if kind == "counter" and not declared.get(name, name).endswith("_total"):
            found.append('counter metrics should have "_total" suffix')
        if kind != "counter" and name.endswith("_total"):
            found.append('non-counter metrics should not have "_total" suffix')
        labels = {label for s in family.samples for label in s.labels}
        if kind not in ("histogram", "gaugehistogram"):
            if name.endswith("_bucket"):
                found.append('non-histogram metrics should not have "_bucket" suffix')
            if "le" in labels:
                found.append('non-histogram metrics should not have "le" label')
        if kind != "summary" and "quantile" in labels:
            found.append('non-summary metrics should not have "quantile" label')
        if kind not in ("histogram", "gaugehistogram", "summary"):
            for suffix in ("_count", "_sum"):
                if name.endswith(suffix):
                    found.append(
                        f'non-histogram and non-summary metrics should not have "{suffix}" suffix'
                    )
        parts = name.split("_")
        for word in ("counter", "gauge", "histogram", "summary"):
            if word in parts:
                found.append(f'metric name should not include type "{word}"')
        if CAMEL.search(name) or any(CAMEL.search(label) for label in labels):
            found.append(
                "metric names and label names should be written in 'snake_case' not 'camelCase'"
            )
        if ":" in name:
            found.append("metric names should not contain ':'")
        for part in parts:
            if part in NON_BASE_UNITS:
                found.append(f'use base unit "{NON_BASE_UNITS[part]}" instead of "{part}"')
            if part in UNIT_ABBREVIATIONS:
                found.append("metric names should not contain abbreviated units")
        out += [f"{exposed}: {problem}" for problem in found]
    return out
