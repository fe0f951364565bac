"""The side-car driver host: real drivers in a real child process, killed and hung for real.

The fake NPU (drivers/fake_npu.py) stands in for a vendor device that can wedge: writing
``hang`` to its state file makes every run block until the file changes.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers import registry
from drivers.fake_npu import write_state
from drivers.sidecar.driver import SidecarDriver
from edgefed.errors import ConfigError, DriverError
from edgefed.testing.wait import wait_until
from tests.drivers.model_files import (
    built_model_file,
    doubling_onnx,
    image_feeds,
    video_frames,
)

FRAMES = (0, 300, 600)
ONES = {"x": np.ones((1, 4), np.float32)}
# the restart window: a cold restart, runs and a kill fit in it on a loaded machine
WINDOW_S = 5.0


@pytest.fixture
def drivers() -> Iterator[list[SidecarDriver]]:
    made: list[SidecarDriver] = []
    yield made
    for driver in made:
        driver.close()


@pytest.fixture
def make(drivers: list[SidecarDriver]) -> Any:
    def make(hosted: dict[str, Any], **options: object) -> SidecarDriver:
        config = registry.parse_config({"type": "sidecar", "driver": hosted, **options})
        driver = registry.create(config)
        assert isinstance(driver, SidecarDriver)
        drivers.append(driver)
        return driver

    return make


def fake_npu(tmp_path: Path, **options: object) -> dict[str, Any]:
    return {"type": "fake-npu", "devices": 1, "state_dir": str(tmp_path / "npu"), **options}


def pid_of(driver: SidecarDriver) -> int:
    pid = driver.status()["pid"]
    assert isinstance(pid, int)
    return pid


def set_state(tmp_path: Path, state: str, device: str = "npu0") -> None:
    write_state(tmp_path / "npu" / device, state)


@pytest.mark.parametrize("hosted", ["onnxruntime", "openvino"])
def test_same_outputs_as_the_driver_in_process_on_real_frames(make: Any, hosted: str) -> None:
    model_file = built_model_file("efficientnet_lite0", "model.onnx")
    in_process = registry.create(registry.parse_config({"type": hosted})).load(model_file)
    sidecar = make({"type": hosted}).load(model_file)
    assert (sidecar.inputs, sidecar.outputs) == (in_process.inputs, in_process.outputs)
    assert sidecar.device == in_process.device
    for frame in video_frames(FRAMES):
        feeds = image_feeds("efficientnet_lite0", frame)
        # the same runtime with the same options in another process: the same bits
        np.testing.assert_array_equal(sidecar.run(feeds)["logits"], in_process.run(feeds)["logits"])


def test_dynamic_shapes_and_several_models_share_one_side_car(make: Any, tmp_path: Path) -> None:
    driver = make({"type": "onnxruntime"})
    assert driver.file_suffixes == (".onnx",)
    text = driver.load(built_model_file("text_detector", "model.onnx"))
    double = driver.load(doubling_onnx(tmp_path / "double.onnx"))
    for shape in [(1, 3, 64, 96), (1, 3, 480, 640)]:
        (prob,) = text.run({"x": np.zeros(shape, np.float32)}).values()
        assert prob.shape == (1, 1, *shape[2:])
    np.testing.assert_array_equal(double.run(ONES)["y"], 2.0)


def test_tensors_of_any_byte_order_cross_with_their_values(make: Any, tmp_path: Path) -> None:
    model = make({"type": "onnxruntime"}).load(doubling_onnx(tmp_path / "double.onnx"))
    for dtype in (">f4", "<f4"):  # the header says float32 for both
        x = np.arange(4, dtype=dtype).reshape(1, 4)
        np.testing.assert_array_equal(model.run({"x": x})["y"], [[0, 2, 4, 6]])


def test_kill_9_during_inference_fails_that_frame_then_the_side_car_restarts(
    make: Any, tmp_path: Path
) -> None:
    driver = make(fake_npu(tmp_path, latency_ms=1000))
    model = driver.load(doubling_onnx(tmp_path / "double.onnx"), "npu0")
    first_pid = pid_of(driver)
    errors: list[BaseException] = []

    def frame_in_flight() -> None:
        try:
            model.run(ONES)
        except DriverError as exc:
            errors.append(exc)

    thread = threading.Thread(target=frame_in_flight)
    thread.start()
    time.sleep(0.3)  # the run is inside the side-car's simulated device latency
    os.kill(first_pid, signal.SIGKILL)
    thread.join(5)
    assert [str(e) for e in errors] == [
        "side-car fake-npu: side-car died during run (killed by SIGKILL)"
    ]
    status = driver.status()
    assert (status["state"], status["crashes"], status["failed_calls"]) == ("restarting", 1, 1)
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)  # restarted, model loaded again
    status = driver.status()
    assert status["state"] == "running"
    assert status["pid"] != first_pid
    assert model.status() == {"sidecar": status}  # what the status API shows per model
    assert (status["restarts"], status["calls"], status["failed_calls"]) == (1, 2, 1)


def test_a_hung_side_car_is_killed_at_the_deadline_and_restarted(make: Any, tmp_path: Path) -> None:
    driver = make(fake_npu(tmp_path), call_timeout_ms=300)
    model = driver.load(doubling_onnx(tmp_path / "double.onnx"), "npu0")
    hung_pid = pid_of(driver)
    set_state(tmp_path, "hang")
    started = time.monotonic()
    with pytest.raises(DriverError, match="run did not answer within 300 ms; killed"):
        model.run(ONES)
    assert time.monotonic() - started < 2
    with pytest.raises(ProcessLookupError):  # the hung process is gone, not left behind
        os.kill(hung_pid, 0)
    assert driver.status()["hangs"] == 1
    set_state(tmp_path, "ok")
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
    assert driver.status()["restarts"] == 1


def test_a_model_whose_device_is_down_at_a_restart_is_lost_alone_and_loaded_again_later(
    make: Any, tmp_path: Path
) -> None:
    # a lost model is loaded again at the restart budget's pace: every WINDOW_S / 1 s
    driver = make(fake_npu(tmp_path, devices=2), max_restarts=1, restart_window_s=WINDOW_S)
    on_npu0 = driver.load(doubling_onnx(tmp_path / "double.onnx"), "npu0")
    on_npu1 = driver.load(doubling_onnx(tmp_path / "double.onnx"), "npu1")
    first_pid = pid_of(driver)
    set_state(tmp_path, "hang")  # npu0 wedged, then the side-car crashes
    os.kill(first_pid, signal.SIGKILL)
    with pytest.raises(DriverError, match="died during run"):
        on_npu1.run(ONES)
    np.testing.assert_array_equal(on_npu1.run(ONES)["y"], 2.0)  # restarted, loaded again
    reason = "fake-npu: device npu0 is not healthy: hang: the device does not answer"
    lost = re.escape(
        f"side-car fake-npu: model double.onnx on npu0 was lost at a restart: {reason}"
    )
    for _ in range(3):  # npu0's model fails with why; npu1's runs; no restart per frame
        with pytest.raises(DriverError, match=f"^{lost}$"):
            on_npu0.run(ONES)
        np.testing.assert_array_equal(on_npu1.run(ONES)["y"], 2.0)
    status = driver.status()
    assert (status["state"], status["restarts"], status["crashes"]) == ("running", 1, 1)
    assert status["pid"] not in (first_pid, None)
    assert status["lost_models"] == [{"model": "double.onnx", "device": "npu0", "reason": reason}]
    set_state(tmp_path, "ok")
    with pytest.raises(DriverError, match=lost):  # not loaded again on every frame
        on_npu0.run(ONES)

    def runs_again() -> bool:
        try:
            on_npu0.run(ONES)
        except DriverError:
            return False
        return True

    wait_until("npu0's model loaded again", runs_again, timeout=WINDOW_S + 5)
    np.testing.assert_array_equal(on_npu0.run(ONES)["y"], 2.0)
    np.testing.assert_array_equal(on_npu1.run(ONES)["y"], 2.0)
    status = driver.status()
    assert (status["restarts"], status["lost_models"]) == (1, [])


def test_past_the_restart_budget_calls_are_refused_until_the_window_has_room(
    make: Any, tmp_path: Path
) -> None:
    driver = make(
        fake_npu(tmp_path), call_timeout_ms=200, max_restarts=1, restart_window_s=WINDOW_S
    )
    model = driver.load(doubling_onnx(tmp_path / "double.onnx"), "npu0")
    os.kill(pid_of(driver), signal.SIGKILL)
    with pytest.raises(DriverError, match="died during run"):
        model.run(ONES)
    model.run(ONES)  # restart 1 of 1
    os.kill(pid_of(driver), signal.SIGKILL)
    with pytest.raises(DriverError, match="died during run"):
        model.run(ONES)
    with pytest.raises(
        DriverError, match=rf"restart budget exhausted \(1 restarts in {WINDOW_S:g} s\)"
    ):
        model.run(ONES)
    health = driver.health()
    assert not health.ok
    assert "restart budget exhausted" in health.detail
    status = driver.status()
    assert (status["state"], status["refused"], status["restarts"]) == ("failed", 2, 1)
    time.sleep(WINDOW_S + 0.1)
    assert driver.health().ok  # the window has room again: health restarts it
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
    assert driver.status()["state"] == "running"


def test_errors_of_the_hosted_driver_come_back_and_the_side_car_keeps_running(
    make: Any, tmp_path: Path
) -> None:
    driver = make({"type": "onnxruntime"})
    pid = pid_of(driver)
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(DriverError, match=f"cannot load {bad}: .*Protobuf parsing failed"):
        driver.load(bad)
    model = driver.load(doubling_onnx(tmp_path / "double.onnx"))
    with pytest.raises(DriverError, match=r"double\.onnx: run failed"):
        model.run({"x": np.zeros((2, 3), np.float32)})
    with pytest.raises(DriverError, match="dtype object"):
        model.run({"x": np.array([[None]], dtype=object)})
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
    status = driver.status()
    assert (status["pid"], status["restarts"], status["failed_calls"]) == (pid, 0, 2)


def test_a_hosted_driver_that_cannot_start_is_a_driver_error(make: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DriverError, match="start failed: fake-npu: cannot prepare state dir"):
        make({"type": "fake-npu", "state_dir": str(blocker / "npu")})


def test_closing_stops_the_process_and_frees_shared_memory(make: Any, tmp_path: Path) -> None:
    driver = make({"type": "onnxruntime"})
    model = driver.load(doubling_onnx(tmp_path / "double.onnx"))
    model.run(ONES)
    pid = pid_of(driver)
    ours = {f"edgefed-sd{os.getpid()}", f"edgefed-sc{pid}"}
    assert {n.rsplit("-", 1)[0] for n in os.listdir("/dev/shm")} >= ours
    driver.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, 0)  # already reaped by close
    assert not {n.rsplit("-", 1)[0] for n in os.listdir("/dev/shm")} & ours
    with pytest.raises(DriverError, match="side-car onnxruntime: driver is closed"):
        model.run(ONES)  # not silently started again


def test_config_is_checked_including_the_hosted_driver() -> None:
    with pytest.raises(ConfigError, match="cannot host another side-car"):
        registry.parse_config({"type": "sidecar", "driver": {"type": "sidecar"}})
    with pytest.raises(ConfigError, match="unknown driver 'acme'"):
        registry.parse_config({"type": "sidecar", "driver": {"type": "acme"}})
    with pytest.raises(ConfigError, match="intra_op"):
        registry.parse_config({"type": "sidecar", "driver": {"type": "onnxruntime", "intra_op": 2}})
    with pytest.raises(ConfigError, match="call_timeout_ms"):
        registry.parse_config(
            {"type": "sidecar", "driver": {"type": "onnxruntime"}, "call_timeout_ms": 0}
        )
