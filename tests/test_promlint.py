"""The promlint port catches what promlint catches (so that a clean result means something)."""

from __future__ import annotations

from tests.support import promlint

OLD_EDGED = """# HELP edged_model_latency_seconds Run time over the last runs
# TYPE edged_model_latency_seconds gauge
edged_model_latency_seconds{model="scene",quantile="0.5"} 0.006
"""
TRITON = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="person",version="1"} 3
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="person",version="1"} 120
"""
CLEAN = """# HELP serverd_job_duration_seconds Job latency
# TYPE serverd_job_duration_seconds histogram
serverd_job_duration_seconds_bucket{le="0.1",model="m"} 1
serverd_job_duration_seconds_bucket{le="+Inf",model="m"} 1
serverd_job_duration_seconds_count{model="m"} 1
serverd_job_duration_seconds_sum{model="m"} 0.05
# HELP serverd_requests_total Messages
# TYPE serverd_requests_total counter
serverd_requests_total{outcome="completed"} 1
"""


def test_a_quantile_label_on_a_gauge_is_a_problem() -> None:
    assert promlint.problems(OLD_EDGED) == [
        'edged_model_latency_seconds: non-summary metrics should not have "quantile" label'
    ]


def test_tritons_names_break_the_counter_and_unit_rules() -> None:
    found = promlint.problems(TRITON)
    assert (
        'nv_inference_request_success_total: counter metrics should have "_total" suffix' in found
    )
    assert any("abbreviated units" in p for p in found)


def test_histograms_and_total_counters_are_clean() -> None:
    assert promlint.problems(CLEAN) == []
