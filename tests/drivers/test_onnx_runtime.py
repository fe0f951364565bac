"""The ONNX Runtime driver on real model files and small graphs built here."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from drivers import registry
from drivers.onnx_runtime import OnnxRuntimeConfig, OnnxRuntimeDriver
from edgefed.errors import ConfigError, DriverError
from edgefed.images.mixed_precision import host_int8_saturates, int8_saturates
from tests.drivers.model_files import built_model_file, doubling_onnx, int8_products_onnx


def make_driver(**options: object) -> OnnxRuntimeDriver:
    config = registry.parse_config({"type": "onnxruntime", **options})
    driver = registry.create(config)
    assert isinstance(driver, OnnxRuntimeDriver)
    return driver


def test_cpu_is_the_default_device() -> None:
    devices = make_driver().devices()
    assert [(d.id, d.model, d.healthy) for d in devices] == [("cpu", "cpu", True)]


def test_an_npu_provider_missing_from_this_build_is_listed_unhealthy_and_refused(
    tmp_path: Path,
) -> None:
    driver = make_driver(providers=["VitisAIExecutionProvider", "CPUExecutionProvider"])
    npu, cpu = driver.devices()
    assert (npu.id, npu.healthy) == ("vitisai", False)
    assert "not in this onnxruntime build" in npu.detail
    assert cpu.healthy
    model = doubling_onnx(tmp_path / "double.onnx")
    with pytest.raises(DriverError, match="vitisai"):
        driver.load(model, "vitisai")
    assert driver.load(model).device == "cpu"  # default: first healthy provider


def test_loads_a_real_model_and_describes_its_tensors() -> None:
    model = make_driver().load(built_model_file("text_detector", "model.onnx"))
    assert [(t.name, t.shape, t.dtype) for t in model.inputs] == [("x", (-1, 3, -1, -1), "float32")]
    assert len(model.outputs) == 1
    out = model.run({"x": np.zeros((1, 3, 64, 96), np.float32)})
    (prob,) = out.values()
    assert prob.shape == (1, 1, 64, 96)
    assert float(prob.max()) < 0.3  # a blank image has no text


def test_int8_products_are_exact_on_every_cpu(tmp_path: Path) -> None:
    """On x86 without VNNI, ONNX Runtime's fast U8S8 kernels would saturate these sums at
    16 bits (32 x 32767 here); the driver's default ``exact_int8: auto`` turns the exact
    kernels on there, and other CPUs compute it exactly anyway."""
    model = make_driver().load(int8_products_onnx(tmp_path / "int8.onnx", k=64, weight=127))
    y = model.run({"a": np.full((1, 64), 255, np.uint8)})["y"]
    assert y.tolist() == [[255 * 127 * 64] * 4]


def test_exact_kernels_only_where_the_fast_ones_saturate(tmp_path: Path) -> None:
    """auto (the default): exact kernels on x86 without VNNI only; with VNNI the fast
    kernels are exact and faster (python -m bench int8-kernels); true/false force it."""
    avx2 = {"sse4_2", "avx2", "fma"}
    assert int8_saturates("x86_64", avx2)
    assert int8_saturates("x86_64", avx2 | {"avx512f", "avx512bw"})  # AVX-512 without VNNI
    assert not int8_saturates("x86_64", avx2 | {"avx512f", "avx512_vnni"})
    assert not int8_saturates("x86_64", avx2 | {"avx_vnni"})  # Alder Lake and later
    assert not int8_saturates("aarch64", {"asimd", "asimddp"})
    assert make_driver().exact_int8 == host_int8_saturates()
    assert make_driver(exact_int8=True).exact_int8 is True
    assert make_driver(exact_int8=False).exact_int8 is False
    (cpu,) = make_driver(exact_int8=True).devices()
    assert cpu.detail == "CPUExecutionProvider, INT8 exact kernels"
    with pytest.raises(ConfigError, match="exact_int8"):
        make_driver(exact_int8="sometimes")
    forced = make_driver(exact_int8=True).load(
        int8_products_onnx(tmp_path / "int8.onnx", k=64, weight=127)
    )
    y = forced.run({"a": np.full((1, 64), 255, np.uint8)})["y"]
    assert y.tolist() == [[255 * 127 * 64] * 4]


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
    message = str(err.value)
    assert "\n" not in message
    assert str(bad) in message
    assert "Protobuf parsing failed" in message


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="no such file"):
        make_driver().load(tmp_path / "absent.onnx")


def test_bad_feed_is_a_driver_error_and_the_model_keeps_working(tmp_path: Path) -> None:
    model = make_driver().load(doubling_onnx(tmp_path / "double.onnx"))
    with pytest.raises(DriverError, match=r"double\.onnx: run failed"):
        model.run({"x": np.zeros((2, 3), np.float32)})
    np.testing.assert_array_equal(model.run({"x": np.ones((1, 4), np.float32)})["y"], 2.0)


def test_unknown_device(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="unknown device 'npu0'"):
        make_driver().load(doubling_onnx(tmp_path / "double.onnx"), "npu0")


def test_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="threads"):
        registry.parse_config({"type": "onnxruntime", "threads": 2})
    config = registry.parse_config({"type": "onnxruntime", "graph_optimization": "basic"})
    assert isinstance(config, OnnxRuntimeConfig)
    assert config.providers == ["CPUExecutionProvider"]
    assert config.intra_op_threads == 1


def test_a_closed_model_refuses_to_run(tmp_path: Path) -> None:
    model = make_driver().load(doubling_onnx(tmp_path / "double.onnx"))
    model.close()
    with pytest.raises(DriverError, match=r"double\.onnx: model is closed"):
        model.run({"x": np.ones((1, 4), np.float32)})
