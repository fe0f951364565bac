"""Prometheus metrics: a collector that reads the daemon's status at scrape time.

Nothing is counted twice: every value comes from the same ``StatusBody`` that
``/api/v1/status`` returns, turned into metric families by prometheus-client, which
also writes the text exposition. Metric names are listed in docs/api.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .schemas import StatusBody


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


class StatusCollector(Collector):
    """Turns one status snapshot per scrape into metric families."""

    def __init__(self, status: Callable[[], StatusBody]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        st = self._status()
        info = InfoMetricFamily("edged_build", "edged and package versions")
        info.add_metric([], {"device_id": st.device_id, **_label_safe(st.versions)})
        yield info
        yield GaugeMetricFamily("edged_uptime_seconds", "Seconds since start", value=st.uptime_s)
        yield CounterMetricFamily(
            "edged_frames_completed", "Frames that completed every model", value=st.frames_completed
        )
        yield GaugeMetricFamily(
            "edged_pipeline_fps", "Completed frames per second", value=st.pipeline_fps
        )
        yield from self._cameras(st)
        yield from self._models(st)
        yield from self._outbox(st)
        yield from self._federation(st)
        links = _gauge("edged_link_up", "1 while the link is connected", ["link"])
        expiry = _gauge(
            "edged_link_cert_expiry_timestamp_seconds",
            "When the link's client certificate runs out (Unix time)",
            ["link"],
        )
        for link in st.links:
            links.add_metric([link.name], 1.0 if link.connected else 0.0)
            if link.cert_expires is not None:
                expiry.add_metric([link.name], link.cert_expires)
        yield links
        yield expiry
        yield GaugeMetricFamily(
            "edged_preview_viewers", "Open MJPEG streams", value=st.preview.viewers
        )
        yield CounterMetricFamily(
            "edged_preview_renders", "Preview frames rendered", value=st.preview.renders
        )
        yield CounterMetricFamily(
            "edged_events", "Frame events recorded in the event log", value=st.events_last_seq
        )
        kinds = _counter("edged_object_events", "Object events since start, by type", ["type"])
        for kind, n in st.object_event_counts.items():
            kinds.add_metric([kind], n)
        yield kinds
        refused = _gauge(
            "edged_twin_refused_properties", "Desired twin values refused now, by way in", ["way"]
        )
        for way, twin in st.twin.items():
            refused.add_metric([way], len(twin.get("rejections", {})))
        yield refused

    def _federation(self, st: StatusBody) -> Iterator[Metric]:
        fed = st.federation
        if not fed.enabled:
            return
        yield GaugeMetricFamily(
            "edged_federation_training_allowed",
            "1 while the device twin allows federated training",
            value=1.0 if fed.training_allowed else 0.0,
        )
        model = ["model"]
        version = _gauge("edged_federation_version", "Global version served", model)
        samples = _gauge("edged_federation_samples", "Samples to train on", model)
        verdict = [*model, "verdict"]
        updates = _counter("edged_federation_updates", "Updates sent, by verdict", verdict)
        versions = _counter(
            "edged_federation_versions", "Global versions judged, by verdict", verdict
        )
        for name, m in fed.models.items():
            version.add_metric([name], float(m.version or 0))
            samples.add_metric([name], m.samples)
            updates.add_metric([name, "accepted"], m.updates_accepted)
            updates.add_metric([name, "rejected"], m.updates_rejected)
            versions.add_metric([name, "adopted"], m.versions_adopted)
            versions.add_metric([name, "refused"], m.versions_refused)
        yield from (version, samples, updates, versions)

    def _cameras(self, st: StatusBody) -> Iterator[Metric]:
        cam = ["camera"]
        up = _gauge("edged_camera_up", "1 while the capture is running", cam)
        cap = _gauge("edged_camera_capture_fps", "Frames per second captured", cam)
        proc = _gauge("edged_camera_processed_fps", "Frames per second that completed", cam)
        motion = _gauge("edged_camera_motion_ratio", "Changed share of the last gated frame", cam)
        frames = _counter("edged_camera_frames", "Frames captured", cam)
        drops = _counter("edged_camera_ring_drops", "Frames dropped by the ring", cam)
        reconnects = _counter("edged_camera_reconnects", "Times frames flowed again", cam)
        gated = _counter("edged_camera_gated_frames", "Frames with motion sent to models", cam)
        skipped = _counter(
            "edged_camera_skipped_frames", "Frames not sent to models, by reason", [*cam, "reason"]
        )
        objects = _gauge("edged_camera_objects", "Tracked people in view (confirmed tracks)", cam)
        for c in st.cameras:
            up.add_metric([c.name], 1.0 if c.state == "running" else 0.0)
            cap.add_metric([c.name], c.capture_fps)
            proc.add_metric([c.name], c.processed_fps)
            motion.add_metric([c.name], c.motion_ratio)
            frames.add_metric([c.name], c.frames)
            drops.add_metric([c.name], c.ring_drops)
            reconnects.add_metric([c.name], c.reconnects)
            gated.add_metric([c.name], c.gated)
            skipped.add_metric([c.name, "static"], c.skipped_static)
            skipped.add_metric([c.name, "rate"], c.skipped_rate)
            skipped.add_metric([c.name, "failed"], c.skipped_failed)
            objects.add_metric([c.name], sum(1 for t in c.objects if t.confirmed))
        yield from (up, cap, proc, motion, frames, drops, reconnects, gated, skipped, objects)

    def _models(self, st: StatusBody) -> Iterator[Metric]:
        lab = ["model"]
        loaded = _gauge("edged_model_loaded", "1 if the model loaded", [*lab, "driver", "device"])
        enabled = _gauge("edged_model_enabled", "1 if the model runs", lab)
        runs = _counter("edged_model_inferences", "Successful model runs", lab)
        errors = _counter("edged_model_errors", "Failed model runs", lab)
        dropped = _counter("edged_model_dropped", "Frames dropped from a full queue", lab)
        depth = _gauge("edged_model_queue_depth", "Frames waiting for the model", lab)
        latency = HistogramMetricFamily(
            "edged_model_latency_seconds", "Run time of successful model runs", labels=lab
        )
        for m in st.models:
            loaded.add_metric([m.name, m.driver or "", m.device or ""], 1.0 if m.loaded else 0.0)
            enabled.add_metric([m.name], 1.0 if m.enabled else 0.0)
            runs.add_metric([m.name], m.inferences)
            errors.add_metric([m.name], m.errors)
            dropped.add_metric([m.name], m.dropped)
            depth.add_metric([m.name], m.queue_depth)
            if m.loaded:
                buckets = [(f"{le / 1000:g}", float(n)) for le, n in m.latency_buckets]
                latency.add_metric(
                    [m.name],
                    [*buckets, ("+Inf", float(m.latency_count))],
                    sum_value=m.latency_sum_ms / 1000.0,
                )
        yield from (loaded, enabled, runs, errors, dropped, depth, latency)

    def _outbox(self, st: StatusBody) -> Iterator[Metric]:
        jobs = _gauge("edged_outbox_jobs", "Outbox jobs by status", ["status"])
        for status, n in st.outbox.counts.items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("edged_outbox_depth", "Open outbox jobs", value=st.outbox.depth)
        yield GaugeMetricFamily(
            "edged_offload_clock_offset_seconds",
            "serverd's clock minus this device's, as serverd's replies tell",
            value=st.outbox.clock_offset_ms / 1000,
        )
        results = _counter(
            "edged_offload_results", "Offloaded jobs closed since start, by status", ["status"]
        )
        for status, n in st.offload_results.counts.items():
            results.add_metric([status], n)
        yield results


def _label_safe(versions: dict[str, str]) -> dict[str, str]:
    return {k.replace("-", "_"): v for k, v in versions.items()}


def make_registry(status: Callable[[], StatusBody]) -> CollectorRegistry:
    """A registry of its own (not the global one): edged's collector plus process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
