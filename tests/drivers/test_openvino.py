"""The OpenVINO driver on the real ONNX model images and real video frames (CPU device)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from drivers import registry
from drivers.openvino import OpenVinoConfig, OpenVinoDriver
from edgefed.errors import ConfigError, DriverError
from tests.drivers.model_files import (
    built_model_file,
    doubling_onnx,
    image_feeds,
    video_frames,
)

# fp32 on both runtimes; kernels differ in summation order, so logits differ in the last bits
TOLERANCE = 1e-4
FRAMES = (0, 200, 400, 600)


def make_driver(**options: object) -> OpenVinoDriver:
    driver = registry.create(registry.parse_config({"type": "openvino", **options}))
    assert isinstance(driver, OpenVinoDriver)
    return driver


def test_cpu_is_the_default_device_and_absent_devices_are_listed_unhealthy() -> None:
    assert [(d.id, d.model, d.healthy) for d in make_driver().devices()] == [("CPU", "cpu", True)]
    npu, gpu, cpu, auto = make_driver(devices=["NPU", "GPU.1", "CPU", "AUTO"]).devices()
    assert (npu.id, npu.model, npu.healthy) == ("NPU", "npu", False)
    assert npu.detail == "NPU is not present (OpenVINO sees: CPU)"
    assert (gpu.id, gpu.model, gpu.healthy) == ("GPU.1", "gpu", False)
    assert cpu.healthy and cpu.detail  # the CPU's own name
    assert (auto.healthy, auto.detail) == (True, "AUTO over CPU")


def test_a_missing_device_is_refused_with_the_reason_and_the_default_skips_it(
    tmp_path: Path,
) -> None:
    driver = make_driver(devices=["NPU", "CPU"])
    model = doubling_onnx(tmp_path / "double.onnx")
    with pytest.raises(DriverError, match="device 'NPU': NPU is not present"):
        driver.load(model, "NPU")
    assert driver.load(model).device == "CPU"
    with pytest.raises(DriverError, match=r"unknown device 'GPU' \(configured: NPU, CPU\)"):
        driver.load(model, "GPU")


@pytest.mark.parametrize("image", ["efficientnet_lite0", "text_detector"])
def test_same_outputs_as_onnxruntime_on_real_frames(image: str) -> None:
    model_file = built_model_file(image, "model.onnx")
    ov_model = make_driver().load(model_file)
    ort_model = registry.create(registry.parse_config({"type": "onnxruntime"})).load(model_file)
    assert ov_model.inputs == ort_model.inputs
    assert [(o.name, o.dtype) for o in ov_model.outputs] == [
        (o.name, o.dtype) for o in ort_model.outputs
    ]
    for frame in video_frames(FRAMES):
        feeds = image_feeds(image, frame)
        ov_out, ort_out = ov_model.run(feeds), ort_model.run(feeds)
        for name, expected in ort_out.items():
            assert ov_out[name].shape == expected.shape
            np.testing.assert_allclose(ov_out[name], expected, rtol=0, atol=TOLERANCE)
        if image == "efficientnet_lite0":
            assert ov_out["logits"].argmax() == ort_out["logits"].argmax()


def test_throughput_hint_and_auto_device_give_the_same_result() -> None:
    model_file = built_model_file("efficientnet_lite0", "model.onnx")
    feeds = image_feeds("efficientnet_lite0", video_frames((100,))[0])
    latency = make_driver().load(model_file).run(feeds)["logits"]
    driver = make_driver(devices=["AUTO"], performance_hint="throughput", num_threads=0)
    model = driver.load(model_file)
    assert model.device == "AUTO"
    np.testing.assert_allclose(model.run(feeds)["logits"], latency, rtol=0, atol=TOLERANCE)


def test_runs_from_many_threads_each_caller_gets_its_own_result(tmp_path: Path) -> None:
    model = make_driver().load(doubling_onnx(tmp_path / "double.onnx"))
    inputs = [np.full((1, 4), i, np.float32) for i in range(64)]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda x: model.run({"x": x})["y"], inputs))
    for x, y in zip(inputs, outputs, strict=True):
        np.testing.assert_array_equal(y, 2 * x)


def test_corrupt_model_file_gives_one_line_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(DriverError) as err:
        make_driver().load(bad)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"cannot load {bad}: ")


def test_missing_or_foreign_model_file(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="no such file"):
        make_driver().load(tmp_path / "absent.onnx")
    tflite = built_model_file("pose_detector", "model.tflite")
    with pytest.raises(DriverError, match=r"only \.onnx files"):
        make_driver().load(tflite)


def test_bad_feed_is_a_driver_error_and_the_model_keeps_working(tmp_path: Path) -> None:
    model = make_driver().load(doubling_onnx(tmp_path / "double.onnx"))
    with pytest.raises(DriverError, match=r"double\.onnx: run failed"):
        model.run({"x": np.zeros((2, 3), np.float32)})
    np.testing.assert_array_equal(model.run({"x": np.ones((1, 4), np.float32)})["y"], 2.0)


def test_a_closed_model_refuses_to_run(tmp_path: Path) -> None:
    model = make_driver().load(doubling_onnx(tmp_path / "double.onnx"))
    model.close()
    with pytest.raises(DriverError, match=r"double\.onnx: model is closed"):
        model.run({"x": np.ones((1, 4), np.float32)})


def test_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="performance_hint"):
        registry.parse_config({"type": "openvino", "performance_hint": "fast"})
    with pytest.raises(ConfigError, match="threads"):
        registry.parse_config({"type": "openvino", "threads": 2})
    config = registry.parse_config({"type": "openvino"})
    assert isinstance(config, OpenVinoConfig)
    assert (config.devices, config.performance_hint, config.precision) == (
        ["CPU"],
        "latency",
        "f32",
    )
