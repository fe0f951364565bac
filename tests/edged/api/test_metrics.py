"""/metrics parsed by prometheus-client's own text parser; names as documented."""

from __future__ import annotations

import re

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from edgefed.testing.wait import wait_until
from tests.support import promlint
from tests.support.paths import REPO

from .conftest import Daemon
from .httpclient import call

EXPECTED = {
    "edged_build_info": "gauge",  # an info metric; the 0.0.4 text format has no info type
    "edged_uptime_seconds": "gauge",
    "edged_frames_completed": "counter",
    "edged_pipeline_fps": "gauge",
    "edged_camera_up": "gauge",
    "edged_camera_capture_fps": "gauge",
    "edged_camera_processed_fps": "gauge",
    "edged_camera_motion_ratio": "gauge",
    "edged_camera_frames": "counter",
    "edged_camera_ring_drops": "counter",
    "edged_camera_reconnects": "counter",
    "edged_camera_gated_frames": "counter",
    "edged_camera_skipped_frames": "counter",
    "edged_camera_objects": "gauge",
    "edged_model_loaded": "gauge",
    "edged_model_enabled": "gauge",
    "edged_model_inferences": "counter",
    "edged_model_errors": "counter",
    "edged_model_dropped": "counter",
    "edged_model_queue_depth": "gauge",
    "edged_model_latency_seconds": "histogram",
    "edged_outbox_jobs": "gauge",
    "edged_outbox_depth": "gauge",
    "edged_offload_clock_offset_seconds": "gauge",
    "edged_link_up": "gauge",
    "edged_preview_viewers": "gauge",
    "edged_preview_renders": "counter",
    "edged_events": "counter",
    "edged_object_events": "counter",
    "edged_twin_refused_properties": "gauge",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
}


def scrape(daemon: Daemon) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    answer = call(daemon.url + "/metrics")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        f.name: (f.type, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(answer.body.decode())
    }


def test_metrics_parse_and_carry_the_expected_families(daemon: Daemon) -> None:
    wait_until(
        "every model ran",
        lambda: all(w.latency.count > 0 for w in daemon.app.pipeline.workers.values()),
        60,
    )
    families = scrape(daemon)
    for name, kind in EXPECTED.items():
        assert name in families, name
        assert families[name][0] == kind, name
    samples = {(n, tuple(sorted(lab.items()))): v for _, s in families.values() for n, lab, v in s}
    assert samples[("edged_camera_up", (("camera", "vtest"),))] == 1.0
    assert samples[("edged_frames_completed_total", ())] > 0
    assert samples[("edged_model_inferences_total", (("model", "person"),))] > 0
    runs = samples[("edged_model_latency_seconds_count", (("model", "scene"),))]
    assert runs > 0
    assert samples[("edged_model_latency_seconds_sum", (("model", "scene"),))] > 0
    slowest = samples[("edged_model_latency_seconds_bucket", (("le", "2.5"), ("model", "scene")))]
    assert slowest <= runs  # cumulative buckets never exceed the count
    skipped = {lab["reason"] for n, lab, _ in families["edged_camera_skipped_frames"][1]}
    assert skipped == {"static", "rate", "failed"}
    assert (
        samples[("edged_camera_skipped_frames_total", (("camera", "vtest"), ("reason", "failed")))]
        == 0
    )


def test_people_in_view_and_object_events_are_counted(daemon: Daemon) -> None:
    """The tracker's confirmed people per camera and the object events by type, as a
    fleet's Prometheus graphs them (vtest.avi always has someone walking)."""

    def sample(name: str, labels: dict[str, str]) -> float:
        values = [v for n, lab, v in scrape(daemon)[name][1] if lab == labels]
        return values[0] if values else 0.0

    wait_until(
        "someone tracked", lambda: sample("edged_camera_objects", {"camera": "vtest"}) > 0, 60
    )
    wait_until("a new object", lambda: sample("edged_object_events", {"type": "new"}) > 0, 60)
    ended = sample("edged_object_events", {"type": "end"})
    counts = call(daemon.url + "/api/v1/status").json()["object_event_counts"]
    assert set(counts) == {"new", "update", "end"} and counts["new"] > 0
    assert ended <= counts["end"] <= counts["new"]  # a track ends after it began


def test_counters_grow_between_scrapes(daemon: Daemon) -> None:
    def frames() -> float:
        return scrape(daemon)["edged_frames_completed"][1][0][2]

    first = frames()
    wait_until("the frame counter to grow", lambda: frames() > first, 30)


def test_openmetrics_is_served_when_asked_for(daemon: Daemon) -> None:
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    answer = call(daemon.url + "/metrics", headers=accept)
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f.type for f in openmetrics_families(answer.body.decode())}
    assert families["edged_build"] == "info"
    assert families["edged_frames_completed"] == "counter"


def test_an_accept_header_prometheus_client_cannot_read_gets_the_text_format(
    daemon: Daemon,
) -> None:
    """It was a 500 and a traceback in the log, asked by anyone, no token needed."""
    accept = {"Accept": "application/openmetrics-text; version=bogus"}
    answer = call(daemon.url + "/metrics", headers=accept)
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
    assert "edged_frames_completed_total" in answer.body.decode()


def test_every_metric_is_documented() -> None:
    doc = (REPO / "docs" / "api.md").read_text()
    exposed = {
        f"{name}_total" if kind == "counter" else name
        for name, kind in EXPECTED.items()
        if name.startswith("edged_")
    }
    documented = set(re.findall(r"`(edged_[a-z_]+)`", doc))
    assert exposed <= documented, sorted(exposed - documented)


def test_exposition_is_promlint_clean(daemon: Daemon) -> None:
    wait_until(
        "every model ran",
        lambda: all(w.latency.count > 0 for w in daemon.app.pipeline.workers.values()),
        60,
    )
    assert promlint.problems(call(daemon.url + "/metrics").body.decode()) == []
