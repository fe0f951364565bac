"""Every endpoint of a running edged (real models, real video)."""

from __future__ import annotations

import pytest

from edged.settings import RuntimeSettings
from edgefed.testing.wait import wait_until

from .conftest import TOKEN, Daemon
from .httpclient import call, put_json


def frames_done(daemon: Daemon, n: int) -> None:
    wait_until(f"{n} completed frames", lambda: daemon.app.pipeline.completed.total >= n, 60)


def test_liveness_and_readiness(daemon: Daemon) -> None:
    assert call(daemon.url + "/healthz").json() == {"status": "ok"}
    wait_until("capture running", lambda: call(daemon.url + "/readyz").status == 200)
    ready = call(daemon.url + "/readyz").json()
    assert ready["ready"] is True
    checks = {c["name"]: c for c in ready["checks"]}
    assert checks["capture:vtest"] == {"name": "capture:vtest", "ok": True, "detail": "running"}
    assert checks["models"]["ok"] and checks["models"]["detail"].startswith("4 loaded")


def test_status_reports_cameras_models_and_versions(daemon: Daemon) -> None:
    frames_done(daemon, 5)
    wait_until(
        "every model ran",
        lambda: all(
            m["inferences"] > 0 for m in call(daemon.url + "/api/v1/status").json()["models"]
        ),
        60,
    )
    st = call(daemon.url + "/api/v1/status").json()
    assert st["device_id"] == "demo/edge-01"
    assert st["versions"]["edged"] and st["versions"]["python"]
    assert st["frames_completed"] >= 5 and st["uptime_s"] > 0
    (cam,) = st["cameras"]
    assert cam["name"] == "vtest" and cam["state"] == "running"
    assert cam["gated"] > 0 and cam["frames"] >= cam["gated"] + cam["skipped_static"]
    assert 0 <= cam["motion_ratio"] <= 1
    models = {m["name"]: m for m in st["models"]}
    assert set(models) == {"person", "pose", "face", "scene"}
    assert models["person"]["driver"] == "litert" and models["scene"]["driver"] == "onnxruntime"
    for m in models.values():
        assert m["loaded"] and m["enabled"] and m["device"]
        assert 0 < m["p50_ms"] <= m["p99_ms"]
        assert m["errors"] == 0
    assert st["outbox"] == {"available": False, "depth": 0, "counts": {}, "clock_offset_ms": 0}
    assert st["links"] == []


def test_models_lists_image_and_cascade(daemon: Daemon) -> None:
    models = {m["name"]: m for m in call(daemon.url + "/api/v1/models").json()}
    assert models["pose"]["cascade_on"] == "person"
    assert models["pose"]["task"] == "landmarks"
    assert models["scene"]["image"] == "efficientnet_lite0" and models["scene"]["every_n"] == 5
    assert models["person"]["regions"] == "planned"
    assert all(m["version"] and m["input"] for m in models.values())


def test_events_are_paged_by_sequence(daemon: Daemon) -> None:
    frames_done(daemon, 6)
    first = call(daemon.url + "/api/v1/events?limit=3").json()
    seqs = [e["seq"] for e in first["events"]]
    assert len(seqs) == 3 and seqs == sorted(seqs)
    assert first["next_after"] == seqs[-1] and first["last_seq"] >= seqs[-1]
    second = call(daemon.url + f"/api/v1/events?after={first['next_after']}&limit=3").json()
    assert all(e["seq"] > seqs[-1] for e in second["events"])
    event = first["events"][0]
    assert event["camera"] == "vtest" and event["motion"]["ratio"] > 0
    assert call(daemon.url + "/api/v1/events?limit=0").status == 400
    assert call(daemon.url + "/api/v1/events?after=x").json()["error"] == "bad_request"


def test_events_carry_real_detections_and_skeletons(daemon: Daemon) -> None:
    def found() -> bool:
        events = call(daemon.url + "/api/v1/events?limit=500").json()["events"]
        return any(e["models"].get("pose") for e in events)

    wait_until("a pose skeleton in the events", found, 60)
    events = call(daemon.url + "/api/v1/events?limit=500").json()["events"]
    pose = next(r for e in events for r in e["models"].get("pose", []))
    assert pose["type"] == "landmarks" and len(pose["points"]) == 33
    person = next(r for e in events for r in e["models"].get("person", []))
    assert person["type"] == "detection" and person["label"] == "person"


def test_outbox_without_provider_is_empty_but_valid(daemon: Daemon) -> None:
    page = call(daemon.url + "/api/v1/outbox?status=Enqueue&limit=5").json()
    assert page == {"available": False, "counts": {}, "jobs": [], "limit": 5, "offset": 0}
    assert call(daemon.url + "/api/v1/outbox?status=Nope").status == 400


def test_config_get_shows_runtime_settings(daemon: Daemon) -> None:
    settings = RuntimeSettings.model_validate(call(daemon.url + "/api/v1/config").json())
    assert settings.motion_threshold == 25
    assert set(settings.enabled_models) == {"person", "pose", "face", "scene"}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401),
        ({"Authorization": "Bearer "}, 401),
        ({"Authorization": "Bearer wrong-token-0123456789"}, 403),
        ({"Authorization": f"Bearer {TOKEN}x"}, 403),
        ({"Authorization": "Bearer \xff\xfe-not-utf-8"}, 403),  # was a 500 and a traceback
    ],
)
def test_put_config_without_the_token_is_refused(
    daemon: Daemon, headers: dict[str, str], status: int
) -> None:
    body = b'{"motion_threshold": 60}'
    answer = call(daemon.url + "/api/v1/config", "PUT", body, headers)
    assert answer.status == status
    assert set(answer.json()) == {"error", "reason"}
    if status == 401:
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert daemon.runtime.current().motion_threshold == 25
    assert daemon.app.pipeline.cameras[0].gate.config.threshold == 25


def test_put_config_with_the_token_changes_the_motion_threshold(
    daemon: Daemon, restore_settings: RuntimeSettings
) -> None:
    answer = put_json(daemon.url + "/api/v1/config", {"motion_threshold": 60.0}, TOKEN)
    assert answer.status == 200 and answer.json()["motion_threshold"] == 60
    assert call(daemon.url + "/api/v1/config").json()["motion_threshold"] == 60
    assert daemon.app.pipeline.cameras[0].gate.config.threshold == 60


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"not json", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (b'{"motion_threshold": 0}', 400, "invalid"),
        (b'{"no_such_setting": 1}', 400, "invalid"),
        (b'{"enabled_models": ["nope"]}', 400, "invalid"),
        (b'{"motion_threshold": "60"}', 400, "invalid"),
        (b'{"motion_threshold": true}', 400, "invalid"),
        (b'{"enabled_models": "person"}', 400, "invalid"),
        # answered 500 on main: huge integers and deep nesting
        (b'{"motion_threshold": ' + b"9" * 400 + b"}", 400, "invalid"),
        (b'{"target_fps": ' + b"9" * 400 + b"}", 400, "invalid"),
        (b'{"motion_threshold": ' + b"9" * 5000 + b"}", 400, "bad_request"),
        (b'{"enabled_models": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "bad_request"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "bad_request"),
        (b'{"target_fps": 1e-300}', 400, "invalid"),
        (b'{"target_fps": 3.2e306}', 400, "invalid"),
    ],
)
def test_put_config_rejects_invalid_changes(
    daemon: Daemon, body: bytes, status: int, error: str
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    answer = call(daemon.url + "/api/v1/config", "PUT", body, headers)
    assert (answer.status, answer.json()["error"]) == (status, error)
    assert daemon.runtime.current().motion_threshold == 25


def test_put_config_rolls_back_and_answers_409_when_a_setter_fails(
    daemon: Daemon, restore_settings: RuntimeSettings
) -> None:
    daemon.refuse.add("log_level")  # applied after motion_threshold, so that one rolls back
    try:
        answer = put_json(
            daemon.url + "/api/v1/config", {"motion_threshold": 40, "log_level": "DEBUG"}, TOKEN
        )
    finally:
        daemon.refuse.clear()
    assert answer.status == 409 and answer.json()["error"] == "not_applied"
    assert "rolled back" in answer.json()["reason"]
    assert daemon.app.pipeline.cameras[0].gate.config.threshold == 25
    assert call(daemon.url + "/api/v1/config").json()["motion_threshold"] == 25


def test_unknown_paths_and_methods_answer_json(daemon: Daemon) -> None:
    missing = call(daemon.url + "/api/v1/nothing")
    assert missing.status == 404 and missing.json()["error"] == "not_found"
    wrong = call(daemon.url + "/api/v1/status", "DELETE")
    assert wrong.status == 405 and "GET" in wrong.headers["Allow"]
    assert set(wrong.json()) == {"error", "reason"}


def test_dashboard_assets_are_served(daemon: Daemon) -> None:
    page = call(daemon.url + "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert b'src="/dashboard.js"' in page.body
    assert call(daemon.url + "/dashboard.js").headers["Content-Type"].startswith("text/javascript")
    assert call(daemon.url + "/dashboard.css").status == 200
