"""/healthz and /readyz as a pod's probes and systemd see them, with a model that really
hangs (the fake NPU's ``hang`` state) and a camera that really cannot be reached.

A pod has no systemd watchdog: its liveness probe is the only thing that restarts a hung
edged, so /healthz must fail on the very condition that withholds the watchdog.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edged.app
from drivers.fake_npu import STATE_HANG, STATE_OK, write_state
from edged.api.server import ApiServer
from edged.app import EdgedApp
from edged.config import parse_config
from edgefed.errors import EXIT_OK
from edgefed.ports import free_port
from edgefed.sdnotify import Notifier
from edgefed.testing.wait import wait_until
from tests.support.configs import demo_config, write_config
from tests.support.notify import NotifyListener
from tests.support.paths import REPO

from .conftest import start_daemon
from .httpclient import Answer, call

WATCHDOG_S = 2.0  # systemd's interval: edged counts a model run of over 1 s as stuck
WAIT_S = 60.0

SCENE = {"name": "scene", "image": "efficientnet_lite0", "regions": "full", "driver": "fake-npu"}


def on_fake_npu(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """The demo config with only the ONNX classifier, on the fake NPU (state in tmp)."""
    drivers = [{"type": "fake-npu", "state_dir": str(tmp_path / "npu")}]
    return demo_config(tmp_path, drivers=drivers, models=[SCENE], **sections)


def healthz(url: str) -> Answer:
    return call(url + "/healthz")


def door(url: str) -> dict[str, Any]:
    """The readiness check of the camera named door."""
    checks = call(url + "/readyz").json()["checks"]
    return next(c for c in checks if c["name"] == "capture:door")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    lst = NotifyListener(tmp_path)
    yield lst
    lst.close()


def test_healthz_fails_while_the_watchdog_is_withheld_and_recovers_with_it(
    tmp_path: Path, listener: NotifyListener
) -> None:
    """On main /healthz answered 200 throughout: a pod never restarted a hung model."""
    port = free_port()
    cfg = write_config(tmp_path, on_fake_npu(tmp_path, api={"port": port}))
    env = listener.env(watchdog_s=WATCHDOG_S) | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edged", "run", "-c", str(cfg), "--compact"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    url, device = f"http://127.0.0.1:{port}", tmp_path / "npu" / "npu0"
    try:
        listener.wait_for("READY", WAIT_S)
        assert healthz(url).status == 200
        write_state(device, STATE_HANG)  # the next run blocks until the state changes
        stalled = listener.wait_for("STATUS", WAIT_S, prefix="stalled")
        answer = wait_until("/healthz failing", lambda: (a := healthz(url)).status == 503 and a)
        assert answer.json() == {"error": "stalled", "reason": "pipeline stalled: model-scene"}
        assert stalled.fields["STATUS"] == "stalled: model-scene"
        write_state(device, STATE_OK)
        wait_until("/healthz passing again", lambda: healthz(url).status == 200, WAIT_S)
        moved = listener.snapshot()[-1].at
        wait_until("the watchdog petted again", lambda: listener.times("WATCHDOG")[-1] > moved)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == EXIT_OK, err
    assert "pipeline stalled: model-scene; watchdog withheld" in err


def test_without_systemd_healthz_fails_once_a_model_hangs_past_the_stall_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod or container: no NOTIFY_SOCKET, so edged's own limit (15 s, shortened here)."""
    monkeypatch.setattr(edged.app, "STALL_AFTER_S", 1.0)
    app = EdgedApp(parse_config(on_fake_npu(tmp_path), env={}))
    (api,) = [s for s in app.services if isinstance(s, ApiServer)]
    stop = threading.Event()
    runner = threading.Thread(target=app.run, args=(stop, Notifier(env={})), name="edged")
    runner.start()
    try:
        wait_until("the API", lambda: api.port is not None and healthz(api.url).status == 200)
        write_state(tmp_path / "npu" / "npu0", STATE_HANG)
        answer = wait_until("/healthz failing", lambda: (a := healthz(api.url)).status == 503 and a)
        assert answer.json()["reason"] == "pipeline stalled: model-scene"
        assert call(api.url + "/readyz").json()["ready"] is True  # readiness is not liveness
    finally:
        write_state(tmp_path / "npu" / "npu0", STATE_OK)
        stop.set()
        runner.join(WAIT_S)
    assert not runner.is_alive()


def test_readyz_says_why_a_camera_cannot_be_reached_and_healthz_stays_ok(
    tmp_path: Path,
) -> None:
    """A camera that is down is not a stuck edged (a restart would not bring it back):
    /readyz fails with the cause, /healthz passes."""
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        source = f"rtsp://127.0.0.1:{s.getsockname()[1]}/stream"
    camera = {"name": "door", "source": source, "reconnect_max_s": 1.0}
    daemon = start_daemon(tmp_path, cameras=[camera], models=[SCENE | {"driver": "onnxruntime"}])
    try:
        check = wait_until(
            "the camera's failed open in /readyz",
            lambda: (c := door(daemon.url))["detail"] != "connecting" and c,
            WAIT_S,
        )
        assert check == {
            "name": "capture:door",
            "ok": False,
            "detail": f"connecting: cannot open stream {source}",
        }
        assert call(daemon.url + "/readyz").status == 503
        assert healthz(daemon.url).status == 200
    finally:
        daemon.app.stop()
