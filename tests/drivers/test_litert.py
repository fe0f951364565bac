"""The LiteRT driver on the real MediaPipe pose detector file."""

from __future__ import annotations

import _ctypes
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from drivers import registry
from drivers.litert import LiteRTDriver, LiteRTModel
from edgefed.errors import ConfigError, DriverError
from tests.drivers.model_files import built_model_file

DELEGATE_C = Path(__file__).parent / "delegate" / "passthrough_delegate.c"


def make_driver(**options: object) -> LiteRTDriver:
    driver = registry.create(registry.parse_config({"type": "litert", **options}))
    assert isinstance(driver, LiteRTDriver)
    return driver


@pytest.fixture(scope="module")
def passthrough_delegate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real external delegate library compiled from tests/drivers/delegate (gcc)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the test delegate", pytrace=False)
    out = tmp_path_factory.mktemp("delegate") / "libpassthrough_delegate.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", str(out), str(DELEGATE_C)], check=True)
    return out


@pytest.fixture(scope="module")
def pose_file() -> Path:
    return built_model_file("pose_detector", "model.tflite")


def inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32) for _ in range(n)]


def test_resolves_tensors_by_name(pose_file: Path) -> None:
    model = make_driver().load(pose_file)
    assert model.device == "cpu"
    assert [(t.name, t.shape, t.dtype) for t in model.inputs] == [
        ("input_1", (1, 224, 224, 3), "float32")
    ]
    assert {t.name: t.shape for t in model.outputs} == {
        "Identity": (1, 2254, 12),
        "Identity_1": (1, 2254, 1),
    }
    out = model.run({"input_1": inputs(1)[0]})
    assert out["Identity"].shape == (1, 2254, 12)
    assert out["Identity_1"].shape == (1, 2254, 1)


def test_concurrent_runs_match_serial_runs_and_the_pool_stays_bounded(pose_file: Path) -> None:
    model = make_driver(interpreters_per_model=2).load(pose_file)
    assert isinstance(model, LiteRTModel)
    feeds = inputs(12)
    serial = [model.run({"input_1": x})["Identity_1"] for x in feeds]
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda x: model.run({"input_1": x})["Identity_1"], feeds))
    for a, b in zip(serial, concurrent, strict=True):
        np.testing.assert_array_equal(a, b)
    assert 1 <= model._made <= 2


def test_corrupt_model_file_gives_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.tflite"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(DriverError) as err:
        make_driver().load(bad)
    message = str(err.value)
    assert "\n" not in message
    assert str(bad) in message
    assert "not a valid Flatbuffer" in message


def test_wrong_input_shape_is_refused_and_the_model_keeps_working(pose_file: Path) -> None:
    model = make_driver().load(pose_file)
    with pytest.raises(DriverError, match=r"has shape \(1, 128, 128, 3\), model takes"):
        model.run({"input_1": np.zeros((1, 128, 128, 3), np.float32)})
    with pytest.raises(DriverError, match="unknown input 'image'"):
        model.run({"image": np.zeros((1, 224, 224, 3), np.float32)})
    assert model.run({"input_1": inputs(1)[0]})["Identity"].shape == (1, 2254, 12)


def test_missing_delegate_is_an_unhealthy_device_and_a_clear_load_error(
    tmp_path: Path, pose_file: Path
) -> None:
    driver = make_driver(delegate=str(tmp_path / "libvendor_npu_delegate.so"))
    npu, cpu = driver.devices()
    assert (npu.id, npu.healthy) == ("vendor_npu_delegate", False)
    assert cpu.healthy
    with pytest.raises(DriverError, match=r"libvendor_npu_delegate\.so: no such file"):
        driver.load(pose_file)
    assert driver.load(pose_file, "cpu").device == "cpu"


def test_a_library_that_is_not_a_delegate_is_refused(pose_file: Path) -> None:
    not_a_delegate = Path(_ctypes.__file__)  # a real shared library without the entry points
    driver = make_driver(delegate=str(not_a_delegate))
    with pytest.raises(DriverError, match="not a LiteRT external delegate"):
        driver.load(pose_file)


def test_an_external_delegate_slots_in_by_config(
    tmp_path: Path, pose_file: Path, passthrough_delegate: Path
) -> None:
    log = tmp_path / "delegate.log"
    driver = make_driver(delegate=str(passthrough_delegate), delegate_options={"log": str(log)})
    npu, _cpu = driver.devices()
    assert (npu.id, npu.healthy) == ("passthrough_delegate", True)
    model = driver.load(pose_file)
    assert model.device == "passthrough_delegate"
    assert log.read_text().splitlines()[:2] == ["create", "prepare"]
    feed = {"input_1": inputs(1)[0]}
    on_cpu = make_driver().load(pose_file).run(feed)
    np.testing.assert_allclose(model.run(feed)["Identity_1"], on_cpu["Identity_1"], atol=1e-5)


def test_a_delegate_that_refuses_to_start_gives_its_reason(
    pose_file: Path, passthrough_delegate: Path
) -> None:
    driver = make_driver(
        delegate=str(passthrough_delegate), delegate_options={"refuse": "NPU 0 is busy"}
    )
    with pytest.raises(DriverError, match="NPU 0 is busy") as err:
        driver.load(pose_file)
    assert "\n" not in str(err.value)


def test_unknown_device_and_strict_config(pose_file: Path) -> None:
    with pytest.raises(DriverError, match="unknown device 'npu0'"):
        make_driver().load(pose_file, "npu0")
    with pytest.raises(ConfigError, match="num_threads"):
        registry.parse_config({"type": "litert", "num_threads": 0})
    with pytest.raises(ConfigError, match="threads"):
        registry.parse_config({"type": "litert", "threads": 2})


def test_a_closed_model_refuses_to_run(pose_file: Path) -> None:
    model = make_driver().load(pose_file)
    model.close()
    with pytest.raises(DriverError, match=r"model\.tflite: model is closed"):
        model.run({"input_1": inputs(1)[0]})
