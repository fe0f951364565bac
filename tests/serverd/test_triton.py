"""Triton start-up failures, the NPU backend core and the repository generator."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefed.errors import ConfigError, ModelError, OffloadError
from edgefed.testing.wait import wait_until
from serverd.app import ServerdApp
from serverd.config import ServerdConfig
from serverd.triton.install import TritonInstall
from serverd.triton.npu import NpuModel
from serverd.triton.repository import TritonModelConfig, config_pbtxt, write_repository
from serverd.triton.settings import NpuSettings
from serverd.triton.supervisor import TritonSupervisor, quote_errors
from tests.serverd.harness import frame_jpeg, serverd_config
from tests.support.paths import IMAGES_DIR, REPO, VTEST

KEY = IMAGES_DIR / "keys" / "dev-signing.pub"
ECHO = {"name": "echo", "backend": "echo"}


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def run_app(
    config: ServerdConfig, stop_when: Callable[[ServerdApp], bool] | None = None
) -> ServerdApp:
    """Run serverd until ``stop_when`` (default: it is ready), then stop it; a failed
    start raises. Returns the app, stopped."""
    until = stop_when or (lambda app: app.ready.is_set())

    async def main() -> ServerdApp:
        stop = asyncio.Event()
        app = ServerdApp(config)
        running = asyncio.create_task(app.run(stop))
        while not running.done() and not until(app):
            await asyncio.sleep(0.02)
        stop.set()
        await running
        return app

    return asyncio.run(main())


def test_a_stop_while_triton_loads_abandons_its_start_and_stops_it(tmp_path: Path) -> None:
    """serverd looked at a stop only once its Tritons were ready, which may take up to
    ``triton.ready_timeout_s`` (120 s) with large models: longer than the unit's
    ``TimeoutStopSec`` and a pod's grace period, so systemd or the kubelet killed it. A
    stop now abandons the start: the Triton launched is stopped and serverd returns at
    once, never having said READY."""
    config = serverd_config(tmp_path, mqtt_port=1, instances=1, triton={"models": [ECHO]})
    log = tmp_path / "triton" / "local-0.log"
    started = time.monotonic()
    app = run_app(config, stop_when=lambda app: True)  # the stop comes first: always early
    assert time.monotonic() - started < 10
    assert not app.ready.is_set() and not app.supervisors
    assert "starting" in log.read_text()  # Triton was launched, then stopped
    assert not (tmp_path / "triton" / "local-0.pid").exists()


def test_a_triton_that_cannot_bind_its_port_fails_quoting_triton(
    tmp_path: Path, taken_port: int
) -> None:
    # metrics on base + 2, its only port (gRPC goes through a unix socket): take it
    echo = {"name": "echo", "backend": "echo"}
    triton = {"base_port": taken_port - 2, "models": [echo]}
    config = serverd_config(tmp_path, mqtt_port=1, instances=1, triton=triton)
    with pytest.raises(OffloadError) as caught:
        run_app(config)
    message = str(caught.value)
    assert "Triton local-0 failed to start" in message
    assert f"127.0.0.1:{taken_port}' already in use" in message  # Triton's own words


def test_a_model_image_that_fails_verification_fails_start_quoting_the_cause(
    tmp_path: Path,
) -> None:
    ghost = {"name": "ghost", "image": str(tmp_path / "no-such-image")}
    config = serverd_config(tmp_path, mqtt_port=1, instances=1, triton={"models": [ghost]})
    with pytest.raises(OffloadError) as caught:
        run_app(config)
    message = str(caught.value)
    assert "failed to load 'ghost'" in message and "model image directory not found" in message


def test_a_missing_triton_environment_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(OffloadError, match=r"setup_env\.sh"):
        TritonInstall.locate(tmp_path / "nowhere")


def test_triton_environment_has_numpy_below_2_and_the_stub_in_place() -> None:
    install = TritonInstall.locate(REPO / ".venv-triton")
    install.check()
    env = install.environment({"PATH": "/usr/bin", "PYTHONPATH": "/x"})
    assert env["PATH"].startswith(str(install.venv / "bin"))
    assert env["LD_LIBRARY_PATH"].startswith(str(install.python_libdir))
    assert "PYTHONPATH" not in env
    assert env["MALLOC_MMAP_THRESHOLD_"] == "8388608"  # frame buffers stay on the heap
    mine = install.environment({"MALLOC_MMAP_THRESHOLD_": "1048576"})
    assert mine["MALLOC_MMAP_THRESHOLD_"] == "1048576"  # the operator's own setting wins
    numpy = next((install.venv / "lib").glob("python3.*/site-packages/numpy-*.dist-info"))
    assert numpy.name.startswith("numpy-1.")


def test_quote_errors_keeps_triton_errors_and_drops_gpu_noise() -> None:
    log = "\n".join(
        [
            'E1122 06:11:05.498518 11145 server.cc:241] "CudaDriverHelper has not been '
            'initialized."',
            "I1122 06:11:05.600000 11145 server.cc:674] some table",
            'E1122 06:11:06.175246 12130 main.cc:245] "failed to start GRPC service: '
            "Unavailable - Socket '127.0.0.1:18101' already in use \"",
        ]
    )
    quoted = quote_errors(log)
    assert quoted.startswith('main.cc:245] "failed to start GRPC service')
    assert "CudaDriverHelper" not in quoted
    assert quote_errors("") == "(nothing logged)"


def test_npu_core_runs_the_real_pose_detector_and_rejects_non_images() -> None:
    settings = NpuSettings(
        image_dir=IMAGES_DIR / "pose_detector",
        driver={"type": "litert", "num_threads": 1},
        trusted_keys=[KEY],
    )
    model = NpuModel.open("person", settings)
    try:
        reply = json.loads(model.run(frame_jpeg()))
        assert any(r["label"] == "person" and r["score"] > 0.5 for r in reply["results"])
        assert set(reply["timings_ms"]) == {"decode", "infer"}
        with pytest.raises(ModelError, match="not a decodable image"):
            model.run(b"\xff\xd8 broken")
        # on main a 16000x16000 JPEG was decoded (~770 MB, seconds); now refused from its header
        ok, small = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
        assert ok
        data = small.tobytes()
        sof = data.index(b"\xff\xc0")
        huge = data[: sof + 5] + (16000).to_bytes(2, "big") * 2 + data[sof + 9 :]
        started = time.perf_counter()
        with pytest.raises(ModelError, match="16000x16000 pixels"):
            model.run(huge)
        assert time.perf_counter() - started < 0.1
    finally:
        model.close()


def test_npu_core_with_regions_scan_finds_the_people_of_a_cctv_frame() -> None:
    """An offloaded hard example is a whole 768x576 frame of vtest.avi: the detector run on
    it once (``regions: full``) found no one in it, the scan finds the walkers."""
    cap = cv2.VideoCapture(str(VTEST))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 200)
    ok, frame = cap.read()
    cap.release()
    assert ok
    jpeg = cv2.imencode(".jpg", frame)[1].tobytes()
    found = {}
    for regions in ("full", "scan"):
        settings = NpuSettings(
            image_dir=IMAGES_DIR / "pose_detector",
            driver={"type": "litert", "num_threads": 1},
            trusted_keys=[KEY],
            regions=regions,
        )
        model = NpuModel.open("person", settings)
        try:
            found[regions] = json.loads(model.run(jpeg))["results"]
        finally:
            model.close()
    assert len(found["scan"]) >= len(found["full"]) + 4
    assert {r["label"] for r in found["scan"]} == {"person"}


def test_npu_parameters_round_trip_and_bad_ones_are_config_errors() -> None:
    settings = NpuSettings(image_dir=Path("/images/x"), driver={"type": "litert"}, device=None)
    params = {k: {"string_value": v} for k, v in settings.to_parameters().items()}
    assert params["image_dir"] == {"string_value": "/images/x"}
    assert NpuSettings.from_parameters(params) == settings
    with pytest.raises(ConfigError, match="npu backend parameters"):
        NpuSettings.from_parameters({"driver": {"string_value": "{not json"}})
    with pytest.raises(ConfigError, match="npu backend parameters"):
        NpuSettings.from_parameters({"image_dir": {"string_value": "/x"}, "extra": {}})


def test_repository_has_one_config_per_model_with_dynamic_batching(tmp_path: Path) -> None:
    models = [
        TritonModelConfig(name="person", image=Path("pose_detector"), instances=2, regions="scan"),
        TritonModelConfig(name="echo", backend="echo", max_batch_size=16),
    ]
    root = write_repository(tmp_path / "repo", models, IMAGES_DIR, [KEY])
    assert sorted(p.name for p in root.iterdir()) == ["echo", "person"]
    assert (root / "person" / "1").is_dir()
    person = (root / "person" / "config.pbtxt").read_text()
    assert 'backend: "npu"' in person and "max_batch_size: 8" in person
    assert "kind: KIND_CPU count: 2" in person and "dynamic_batching" in person
    image = str((IMAGES_DIR / "pose_detector").resolve())
    assert f'key: "image_dir" value: {{ string_value: "{image}" }}' in person
    assert 'key: "regions" value: { string_value: "\\"scan\\"" }' in person
    echo = (root / "echo" / "config.pbtxt").read_text()
    assert 'backend: "echo"' in echo and "parameters" not in echo
    # rewriting drops models no longer listed
    write_repository(root, models[1:], IMAGES_DIR, [KEY])
    assert [p.name for p in root.iterdir()] == ["echo"]


def test_pbtxt_strings_are_escaped() -> None:
    model = TritonModelConfig(name="m", backend="echo")
    text = config_pbtxt(model, {"k": 'say "hi"\\'})
    assert r'string_value: "say \"hi\"\\"' in text


def test_model_config_needs_an_image_for_npu_and_none_for_echo() -> None:
    with pytest.raises(ValueError, match="needs an image"):
        TritonModelConfig(name="m")
    with pytest.raises(ValueError, match="takes no image"):
        TritonModelConfig(name="m", backend="echo", image=Path("x"))


class DyingProcess:
    """Stands in for a TritonProcess that starts fine and dies at once, every time (or
    only on its first ``dies`` starts)."""

    name = "flaky"

    def __init__(self, dies: int = 10**9) -> None:
        self.dies = dies
        self.starts = 0
        self.stopped = False

    def start(self) -> None:
        self.starts += 1

    def poll(self) -> int | None:
        return 137 if self.starts <= self.dies else None

    def stop(self) -> None:
        self.stopped = True

    def rotate_log(self) -> bool:  # a log that never passes its size
        return False


def test_supervisor_restarts_within_its_budget_then_rests() -> None:
    process = DyingProcess()
    states: list[tuple[str, bool]] = []
    supervisor = TritonSupervisor(
        process,  # type: ignore[arg-type]
        lambda name, up: states.append((name, up)),
        restarts=2,
        window_s=60,
        poll_s=0.01,
    )
    supervisor.start()
    deadline = time.monotonic() + 10
    while not supervisor.gave_up and time.monotonic() < deadline:
        time.sleep(0.01)
    supervisor.stop()
    assert supervisor.gave_up and supervisor.restart_count == 2
    assert process.starts == 3 and process.stopped
    assert states == [("flaky", False), ("flaky", True)] * 2 + [("flaky", False)]


def test_after_resting_one_window_the_supervisor_tries_again() -> None:
    """A crash loop that ends (a model fixed, the host calmer): once the budget's window
    has passed, the instance comes back without a serverd restart."""
    process = DyingProcess(dies=3)
    states: list[bool] = []
    supervisor = TritonSupervisor(
        process,  # type: ignore[arg-type]
        lambda _, up: states.append(up),
        restarts=2,
        window_s=0.5,
        poll_s=0.01,
    )
    supervisor.start()
    try:
        wait_until("it gave up", lambda: supervisor.gave_up, 10)
        assert process.starts == 3
        wait_until("it is back", lambda: states[-1:] == [True] and process.poll() is None, 10)
    finally:
        supervisor.stop()
    assert not supervisor.gave_up and process.starts == 4
    assert states == [False, True, False, True, False, True]
