"""The fake NPU driver: devices and health from its state dir, real ONNX models on ORT."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from drivers import registry
from drivers.fake_npu import FakeNpuConfig, FakeNpuDriver, write_state
from edgefed.errors import ConfigError, DriverError
from edgefed.images.verify import read_manifest
from tests.drivers.model_files import built_image, doubling_onnx


@pytest.fixture
def driver(tmp_path: Path) -> FakeNpuDriver:
    config = registry.parse_config(
        {"type": "fake-npu", "devices": 2, "state_dir": tmp_path / "npu"}
    )
    created = registry.create(config)
    assert isinstance(created, FakeNpuDriver)
    return created


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return doubling_onnx(tmp_path / "double.onnx")  # y = 2 * x on [1, 4]


def flip(driver: FakeNpuDriver, device: str, state: str) -> None:
    write_state(driver.state_file(device), state)


def test_devices_come_from_the_state_dir(driver: FakeNpuDriver) -> None:
    devices = driver.devices()
    assert [(d.id, d.model, d.healthy) for d in devices] == [
        ("npu0", "fake-x220", True),
        ("npu1", "fake-x220", True),
    ]
    assert sorted(p.name for p in driver.config.state_dir.iterdir()) == ["npu0", "npu1"]


def test_health_follows_the_state_files(driver: FakeNpuDriver) -> None:
    flip(driver, "npu1", "fault thermal trip")
    npu0, npu1 = driver.devices()
    assert npu0.healthy and not npu1.healthy
    assert npu1.detail == "fault: thermal trip"
    assert driver.health().ok
    flip(driver, "npu0", "banana")
    assert "unknown state 'banana'" in driver.devices()[0].detail
    assert not driver.health().ok
    driver.state_file("npu0").write_bytes(b"\xff\xfe ok\n")  # not UTF-8: another unknown state
    assert driver.devices()[0].detail.startswith("unknown state '\ufffd\ufffd ok'")
    flip(driver, "npu0", "ok")
    assert driver.health().ok


def test_state_survives_a_driver_restart_and_unplugged_devices_vanish(
    driver: FakeNpuDriver,
) -> None:
    flip(driver, "npu1", "fault")
    again = FakeNpuDriver(driver.config)
    assert [d.healthy for d in again.devices()] == [True, False]
    driver.state_file("npu0").unlink()
    assert [d.id for d in again.devices()] == ["npu1"]


def test_loads_and_runs_a_real_onnx_model(driver: FakeNpuDriver, model_file: Path) -> None:
    model = driver.load(model_file)
    assert model.device == "npu0"
    assert [(t.name, t.shape, t.dtype) for t in model.inputs] == [("x", (1, 4), "float32")]
    out = model.run({"x": np.array([[0, 1, 2, 3]], dtype=np.float32)})
    np.testing.assert_array_equal(out["y"], [[0, 2, 4, 6]])
    model.close()


def test_a_faulted_device_refuses_to_load(driver: FakeNpuDriver, model_file: Path) -> None:
    flip(driver, "npu0", "fault")
    with pytest.raises(DriverError, match="npu0 is not healthy: fault"):
        driver.load(model_file, "npu0")
    assert driver.load(model_file).device == "npu1"  # default: first healthy device
    flip(driver, "npu1", "fault")
    with pytest.raises(DriverError, match="no healthy device"):
        driver.load(model_file)


def test_a_device_that_faults_refuses_to_run_until_it_recovers(
    driver: FakeNpuDriver, model_file: Path
) -> None:
    model = driver.load(model_file, "npu1")
    feeds = {"x": np.ones((1, 4), dtype=np.float32)}
    flip(driver, "npu1", "fault ecc error")
    with pytest.raises(DriverError, match="npu1 cannot run: fault: ecc error"):
        model.run(feeds)
    driver.state_file("npu1").write_bytes(b"\x80k\n")
    with pytest.raises(DriverError, match="npu1 cannot run: unknown state"):
        model.run(feeds)
    flip(driver, "npu1", "ok")
    np.testing.assert_array_equal(model.run(feeds)["y"], np.full((1, 4), 2, dtype=np.float32))


def test_a_run_fault_is_listed_healthy_and_loads_but_fails_every_run(
    driver: FakeNpuDriver, model_file: Path
) -> None:
    flip(driver, "npu0", "run-fault firmware crash")
    npu0, _ = driver.devices()
    assert (npu0.healthy, npu0.detail) == (True, "")  # its health says ok
    model = driver.load(model_file, "npu0")
    feeds = {"x": np.ones((1, 4), dtype=np.float32)}
    with pytest.raises(DriverError, match="npu0 cannot run: run fault: firmware crash"):
        model.run(feeds)
    flip(driver, "npu0", "ok")
    np.testing.assert_array_equal(model.run(feeds)["y"], 2.0)


def test_bad_model_files_are_driver_errors(driver: FakeNpuDriver, tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="unknown device 'npu7'"):
        driver.load(tmp_path / "x.onnx", "npu7")
    with pytest.raises(DriverError, match=r"only \.onnx"):
        driver.load(tmp_path / "model.tflite")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(DriverError, match="cannot load"):
        driver.load(broken)


@pytest.mark.parametrize(
    "bad", [{"devices": 0}, {"model_name": "Fake X220"}, {"latency_ms": -1}, {"vendor": "x"}]
)
def test_bad_config_is_a_config_error(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="fake-npu"):
        registry.parse_config({"type": "fake-npu", **bad})


def test_defaults_are_valid() -> None:
    config = FakeNpuConfig.model_validate({"type": "fake-npu"})
    assert (config.devices, config.model_name, config.latency_ms) == (2, "fake-x220", 0.0)


def test_runs_the_efficientnet_model_image(driver: FakeNpuDriver) -> None:
    image = built_image("efficientnet_lite0")
    model = driver.load(image / read_manifest(image).model_file)
    (spec,) = model.inputs
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    (logits,) = model.run({spec.name: np.zeros(shape, dtype=np.float32)}).values()
    assert logits.shape == (1, 1000)
    assert np.isfinite(logits).all()


def test_a_hung_device_blocks_runs_until_its_state_changes(
    driver: FakeNpuDriver, model_file: Path
) -> None:
    model = driver.load(model_file, "npu0")
    flip(driver, "npu0", "hang")
    assert driver.devices()[0].detail == "hang: the device does not answer"
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(model.run, {"x": np.ones((1, 4), np.float32)})
        time.sleep(0.3)
        assert not pending.done()
        flip(driver, "npu0", "ok")
        np.testing.assert_array_equal(pending.result(5)["y"], 2.0)
