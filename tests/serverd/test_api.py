"""serverd's HTTP API on a real serverd with two real Tritons: status, metrics, edge events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serverd.api.openapi import build_openapi
from serverd.cli import main
from tests.edged.api.httpclient import call
from tests.serverd.harness import API_TOKEN, Edge, ServerdThread, frame_jpeg
from tests.support import promlint

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
AUTH = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}


def url(serverd: ServerdThread, path: str) -> str:
    assert serverd.app.api is not None
    return serverd.app.api.url + path


def test_health_readiness_and_status_show_instances_and_jobs(
    serverd: ServerdThread, edge: Edge
) -> None:
    assert call(url(serverd, "/healthz")).json() == {"status": "ok"}
    assert call(url(serverd, "/readyz")).json() == {"status": "ready"}
    before = call(url(serverd, "/api/v1/status")).json()
    request = edge.request("person")
    edge.send(request, frame_jpeg())
    edge.collect(1)
    status = call(url(serverd, "/api/v1/status")).json()
    assert status["server_id"] == "test-server" and status["ready"] is True
    assert set(status["instances"]) == {"local-0", "local-1"}
    for instance in status["instances"].values():
        assert instance["healthy"] is True and instance["resting"] is False
        assert set(instance["models"]) == {"person", "echo"}
    done = sum(i["completed"] for i in status["instances"].values())
    assert done == sum(i["completed"] for i in before["instances"].values()) + 1
    assert status["jobs"].get("Exit", 0) >= 1
    assert status["scheduler"] == {"queued": 0, "in_flight": 0}
    assert status["counters"]["completed"] >= 1


def test_serverd_status_prints_instances_queue_jobs_and_devices(
    serverd: ServerdThread, edge: Edge, capsys: pytest.CaptureFixture[str]
) -> None:
    edge.send(edge.request("person"), frame_jpeg())
    edge.collect(1)
    base = url(serverd, "")
    assert main(["status", "--url", base]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "serverd test-server: ready, mqtt up"
    header, *rows = lines[2:5]
    assert header.split() == ["TRITON", "HEALTHY", "IN", "FLIGHT", "DONE", "RESTARTS", "MODELS"]
    assert [r.split()[:2] for r in rows] == [["local-0", "yes"], ["local-1", "yes"]]
    instances = call(url(serverd, "/api/v1/status")).json()["instances"]  # shared: may have died
    assert [r.split()[4] for r in rows] == [str(i["restarts"]) for i in instances.values()]
    assert all(r.endswith("echo, person") for r in rows)
    assert "queue: 0 queued, 0 in flight; shed: none" in lines
    jobs = next(ln for ln in lines if ln.startswith("jobs: "))
    assert "Exit " in jobs
    assert any(ln.startswith("offload messages: ") and "completed " in ln for ln in lines)
    assert main(["status", "--url", base, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["server_id"] == "test-server"


def test_metrics_are_serverds_own_histograms_and_tritons_proxied(
    serverd: ServerdThread, edge: Edge
) -> None:
    request = edge.request("person")
    edge.send(request, frame_jpeg())
    edge.collect(1)
    answer = call(url(serverd, "/metrics"))
    assert answer.status == 200
    text = answer.body.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    latency = families["serverd_job_duration_seconds"]
    assert latency.type == "histogram"
    counts = {
        s.labels["stage"]: s.value
        for s in latency.samples
        if s.name.endswith("_count") and s.labels["model"] == "person"
    }
    assert set(counts) == {"queue", "triton", "total"} and counts["total"] >= 1
    healthy = {s.labels["instance"]: s.value for s in families["serverd_instance_healthy"].samples}
    assert healthy == {"local-0": 1.0, "local-1": 1.0}
    restarts = {s.labels["instance"]: s.value for s in families["serverd_triton_restarts"].samples}
    instances = call(url(serverd, "/api/v1/status")).json()["instances"]  # shared: may have died
    assert restarts == {name: float(i["restarts"]) for name, i in instances.items()}
    # Triton's own metrics, fetched from each supervised instance's loopback port
    success = families["nv_inference_request_success"]
    instances = {s.labels["triton_instance"] for s in success.samples}
    assert instances == {"local-0", "local-1"}
    served = sum(s.value for s in success.samples if s.labels.get("model") == "person")
    assert served >= 1
    own = text[: text.index("# HELP nv_")] if "# HELP nv_" in text else text
    assert promlint.problems(own) == []


def test_edge_events_need_the_token_and_show_connected_devices(serverd: ServerdThread) -> None:
    event = {"type": "stats", "device_id": "edgefed/edge-node-7", "timestamp": 1, "stats": {}}
    body = json.dumps(event).encode()
    path = url(serverd, "/api/v1/edge-events/stats")
    assert call(path, "POST", body).status == 401
    wrong = {**AUTH, "Authorization": "Bearer not-the-token-at-all"}
    assert call(path, "POST", body, wrong).status == 403
    answer = call(path, "POST", body, AUTH)
    assert answer.status == 202 and answer.json() == {"device_id": "edgefed/edge-node-7"}
    devices = call(url(serverd, "/api/v1/status")).json()["devices"]
    seen = devices["devices"]["edgefed/edge-node-7"]
    assert seen["events"] == {"stats": 1} and seen["last_seen_ms"] > 0
    for bad_body in (b"{not json", b"[" * 100_000, b'{"device_id": "d", "n": ' + b"9" * 5000):
        bad = call(path, "POST", bad_body, AUTH)
        assert bad.status == 400 and bad.json()["error"] == "bad_event", bad_body[:30]
    bogus = json.dumps({**event, "type": "bogus"}).encode()
    assert call(path, "POST", bogus, AUTH).status == 400
    unknown = call(url(serverd, "/api/v1/edge-events/other"), "POST", body, AUTH)
    assert unknown.status == 404 and unknown.json()["error"] == "not_found"
    big = json.dumps({"device_id": "d", "pad": "x" * 300_000}).encode()
    assert call(path, "POST", big, AUTH).status == 413
    metrics = call(url(serverd, "/metrics")).body.decode()
    assert 'serverd_edge_events_total{kind="stats"}' in metrics


def test_an_edge_event_whose_device_id_is_not_a_device_id_is_refused(
    serverd: ServerdThread,
) -> None:
    """On main any 1-128 characters were a device: 'serverd status' printed a terminal
    escape sequence posted as one to the operator's terminal."""
    path = url(serverd, "/api/v1/edge-events/stats")
    bad_ids = ["\x1b]0;owned\x07\x1b[2J", "edge-01\n", "a/b/c", "-edge", "x" * 64, ""]
    for bad_id in [*bad_ids, 7]:
        body = json.dumps({"type": "stats", "device_id": bad_id, "timestamp": 1}).encode()
        bad = call(path, "POST", body, AUTH)
        assert bad.status == 400 and bad.json()["error"] == "bad_event", bad_id
        assert bad.json()["reason"].startswith("device_id must match"), bad_id
    devices = call(url(serverd, "/api/v1/status")).json()["devices"]["devices"]
    assert not set(bad_ids) & set(devices)


def test_on_loopback_a_request_to_another_host_name_is_refused(serverd: ServerdThread) -> None:
    """DNS rebinding: a page of another name, resolved to 127.0.0.1, is refused (421)."""
    port = serverd.app.api.port
    rebound = call(url(serverd, "/api/v1/status"), headers={"Host": f"rebind.example:{port}"})
    assert rebound.status == 421 and rebound.json()["error"] == "misdirected"
    assert call(url(serverd, "/healthz"), headers={"Host": f"localhost:{port}"}).status == 200


def test_openapi_document_is_served(serverd: ServerdThread) -> None:
    served = call(url(serverd, "/api/v1/openapi.json")).json()
    assert served == build_openapi()
    assert served["paths"]["/api/v1/edge-events/{kind}"]["post"]["security"] == [{"bearer": []}]


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(serverd: ServerdThread, tmp_path: Path) -> None:
    if not SCHEMATHESIS.exists():
        pytest.fail("schemathesis is not installed: run packaging/dev/setup.sh", pytrace=False)
    cmd = [
        str(SCHEMATHESIS), "run", url(serverd, "/api/v1/openapi.json"),
        "--checks", "all",
        "--header", f"Authorization: Bearer {API_TOKEN}",
        "--max-examples", "20",
        "--seed", "5",
        "--workers", "1",
        "--request-timeout", "10",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
