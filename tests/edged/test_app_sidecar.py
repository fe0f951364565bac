"""edged with a model in a side-car and a fallback chain, on the real video: kill -9 of
the side-car never takes edged down, the status API counts it, the model falls back past
the restart budget and returns when the side-car may start again."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

from edged.app import EdgedApp
from edged.config import parse_config
from edgefed.testing.wait import wait_until
from tests.support.configs import demo_config

# long enough for a restart, three runs, a kill and two failed frames on a loaded machine
WINDOW_S = 8.0


def scene_status(app: EdgedApp) -> dict[str, Any]:
    server = next(s for s in app.services if type(s).__name__ == "ApiServer")
    url = f"{server.url}/api/v1/status"  # type: ignore[attr-defined]
    with urllib.request.urlopen(url, timeout=5) as resp:
        status = json.loads(resp.read())
    scene: dict[str, Any] = next(m for m in status["models"] if m["name"] == "scene")
    return scene


def inferences_grow(app: EdgedApp) -> None:
    before = scene_status(app)["inferences"]
    wait_until("more inferences", lambda: scene_status(app)["inferences"] > before + 2)


def test_kill_9_of_the_side_car_is_survived_counted_and_fallen_back_from(tmp_path: Path) -> None:
    raw = demo_config(
        tmp_path,
        drivers=[
            {
                "type": "sidecar",
                "driver": {"type": "fake-npu", "devices": 1, "state_dir": str(tmp_path / "npu")},
                "max_restarts": 1,
                "restart_window_s": WINDOW_S,
            }
        ],
        models=[
            {
                "name": "scene",
                "image": "efficientnet_lite0",
                "regions": "full",
                "fallback": ["sidecar:npu0", "onnxruntime:cpu"],
                "fallback_after": 2,
                "fallback_probe_s": 0.2,
            }
        ],
    )
    app = EdgedApp(parse_config(raw, env={}))
    app.start()
    try:
        inferences_grow(app)
        runtime = scene_status(app)["runtime"]
        assert (runtime["serving"], runtime["sidecar"]["state"]) == ("sidecar:npu0", "running")
        assert scene_status(app)["device"] == "sidecar:npu0"

        os.kill(runtime["sidecar"]["pid"], signal.SIGKILL)
        wait_until("a restart", lambda: scene_status(app)["runtime"]["sidecar"]["restarts"] == 1)
        inferences_grow(app)  # edged kept running and the model runs in the new side-car
        assert scene_status(app)["runtime"]["serving"] == "sidecar:npu0"

        os.kill(scene_status(app)["runtime"]["sidecar"]["pid"], signal.SIGKILL)
        wait_until(
            "the fallback", lambda: scene_status(app)["runtime"]["serving"] == "onnxruntime:cpu"
        )
        scene = scene_status(app)
        assert scene["device"] == "onnxruntime:cpu"
        assert "sidecar:npu0 failed 2 runs in a row" in scene["runtime"]["reason"]
        sidecar = scene["runtime"]["chain"][0]["driver"]  # the side-car no longer serving
        assert (sidecar["crashes"], sidecar["restarts"]) == (2, 1)
        assert sidecar["state"] in ("restarting", "failed")
        assert scene["errors"] >= 2  # the frames in flight failed and were counted
        inferences_grow(app)

        wait_until(
            "the return to the side-car",
            lambda: scene_status(app)["runtime"]["serving"] == "sidecar:npu0",
            timeout=WINDOW_S + 10,
        )
        assert scene_status(app)["runtime"]["reason"] == "sidecar:npu0 recovered"
        inferences_grow(app)
    finally:
        app.stop()
