"""serverd's Prometheus metrics, and its supervised Tritons' metrics proxied behind them.

Own metrics: job latencies per model and stage as a histogram (aggregatable across
servers, unlike quantiles), request outcomes, instance health and load, job-table
counts and edge events. Triton binds its metrics port to loopback on a free port, so
``/metrics`` fetches each supervised instance's text, adds a ``triton_instance`` label
and appends it; an instance that does not answer is left out and counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.08,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds; 0.08 is the edge->server round-trip target."""
STAGES = ("queue", "triton", "total")
SCRAPE_TIMEOUT_S = 2.0


class ServerdMetrics:
    """The registry of serverd's own metrics; ``observe`` is the service's job hook."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.job_seconds = Histogram(
            "serverd_job_duration_seconds",
            "Offload job latency in serverd by model and stage (queue, triton, total)",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.scrape_failures = 0
        self.registry.register(_StatusCollector(status, lambda: self.scrape_failures))

    def observe(self, model: str, timings_ms: Mapping[str, float]) -> None:
        for stage in STAGES:
            if stage in timings_ms:
                self.job_seconds.labels(model, stage).observe(timings_ms[stage] / 1000)

    def own(self) -> bytes:
        return generate_latest(self.registry)

    async def tritons(self, session: aiohttp.ClientSession, urls: Mapping[str, str]) -> bytes:
        """Every supervised Triton's metrics, labelled with its instance name."""
        texts = await asyncio.gather(*(self._fetch(session, url) for url in urls.values()))
        merged: dict[str, Metric] = {}
        for name, text in zip(urls, texts, strict=True):
            if text is None:
                self.scrape_failures += 1
                continue
            for family in text_string_to_metric_families(text):
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for s in family.samples:
                    labels = {**s.labels, "triton_instance": name}
                    target.add_sample(s.name, labels, s.value, s.timestamp, s.exemplar)
        if not merged:
            return b""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(list(merged.values())))
        return generate_latest(registry)

    @staticmethod
    async def _fetch(session: aiohttp.ClientSession, url: str) -> str | None:
        try:
            timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
            async with session.get(url, timeout=timeout) as response:
                if response.status != 200:
                    return None
                return await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _StatusCollector(Collector):
    """Metrics read from the offload service's status at scrape time."""

    def __init__(self, status: Callable[[], Mapping[str, Any]], failures: Callable[[], int]):
        self._status = status
        self._failures = failures

    def collect(self) -> Iterable[Metric]:
        status = self._status()
        outcomes = CounterMetricFamily(
            "serverd_requests", "Offload messages by outcome since start", labels=["outcome"]
        )
        for outcome, value in status.get("counters", {}).items():
            if isinstance(value, int):
                outcomes.add_metric([outcome], value)
        yield outcomes
        queued = GaugeMetricFamily("serverd_jobs_queued", "Jobs waiting for an instance")
        queued.add_metric([], status.get("queued", 0))
        yield queued
        shed = CounterMetricFamily(
            "serverd_jobs_shed",
            "Jobs shed under overload (answered unrun, Expired on the edge) by priority",
            labels=["priority"],
        )
        for priority, count in status.get("shed", {}).items():
            shed.add_metric([str(priority)], count)
        yield shed
        capacity = GaugeMetricFamily(
            "serverd_capacity_jobs_per_second",
            "Jobs per second the healthy instances finish, from measured latency",
            labels=["model"],
        )
        for model, rate in status.get("capacity_per_s", {}).items():
            capacity.add_metric([model], rate)
        yield capacity
        healthy = GaugeMetricFamily(
            "serverd_instance_healthy", "1 if the Triton instance is ready", labels=["instance"]
        )
        load = GaugeMetricFamily(
            "serverd_instance_jobs_in_flight", "Jobs sent to the instance", labels=["instance"]
        )
        restarts = CounterMetricFamily(
            "serverd_triton_restarts",
            "Times the supervisor started its crashed Triton again (its nv_* counters restart)",
            labels=["instance"],
        )
        for name, inst in status.get("instances", {}).items():
            healthy.add_metric([name], 1 if inst["healthy"] else 0)
            load.add_metric([name], inst["in_flight"])
            if "restarts" in inst:  # supervised, not an external endpoint
                restarts.add_metric([name], inst["restarts"])
        yield from (healthy, load, restarts)
        table = GaugeMetricFamily(
            "serverd_job_table_jobs", "Jobs in the job table by status", labels=["status"]
        )
        for job_status, count in status.get("jobs", {}).items():
            table.add_metric([job_status], count)
        yield table
        refused = CounterMetricFamily(
            "serverd_job_table_failures",
            "Job-table writes and checkpoints the database refused (jobs still run)",
        )
        refused.add_metric([], status.get("job_table_failures", 0))
        yield refused
        capped = CounterMetricFamily(
            "serverd_job_table_pruned_over_cap",
            "Finished jobs deleted before retention_s to keep the job table under its cap",
        )
        capped.add_metric([], status.get("job_table_pruned_over_cap", 0))
        yield capped
        events = CounterMetricFamily(
            "serverd_edge_events", "Edge events received from KubeEdge Rules", labels=["kind"]
        )
        for kind, count in status.get("edge_events", {}).items():
            events.add_metric([kind], count)
        yield events
        expires = status.get("mqtt", {}).get("cert_expires")
        if expires is not None:
            expiry = GaugeMetricFamily(
                "serverd_mqtt_cert_expiry_timestamp_seconds",
                "When serverd's MQTT client certificate runs out (Unix time)",
            )
            expiry.add_metric([], expires)
            yield expiry
        scrapes = CounterMetricFamily(
            "serverd_triton_scrape_failures", "Triton metrics fetches that failed"
        )
        scrapes.add_metric([], self._failures())
        yield scrapes
        yield from _federation(status.get("federation", {}).get("models", {}))


def _federation(models: Mapping[str, Any]) -> Iterable[Metric]:
    """Per federated model: its global version, whether a round collects, rounds closed
    and updates judged."""
    version = GaugeMetricFamily(
        "serverd_federation_version", "Current global version", labels=["model"]
    )
    collecting = GaugeMetricFamily(
        "serverd_federation_round_open", "1 while a round collects updates", labels=["model"]
    )
    rounds = CounterMetricFamily(
        "serverd_federation_rounds", "Closed rounds by outcome", labels=["model", "outcome"]
    )
    updates = CounterMetricFamily(
        "serverd_federation_updates", "Edge updates by verdict", labels=["model", "verdict"]
    )
    for name, fed in models.items():
        version.add_metric([name], fed["version"])
        collecting.add_metric([name], 1 if fed["phase"] == "collecting" else 0)
        rounds.add_metric([name, "done"], fed["rounds_done"])
        rounds.add_metric([name, "failed"], fed["rounds_failed"])
        updates.add_metric([name, "accepted"], fed["counters"]["updates_accepted"])
        updates.add_metric([name, "rejected"], fed["counters"]["updates_rejected"])
    yield from (version, collecting, rounds, updates)
