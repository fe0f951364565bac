"""The OpenVINO driver on the real ONNX model images and real video frames (CPU device)."""

from __future__ import annotations

import _locale
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from drivers import registry
from drivers.openvino import OpenVinoConfig, OpenVinoDriver, _cache_key
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


# --- cache_dir: one compiled blob per model file, whatever the number of versions ---


def versioned_onnx(path: Path, version: int) -> Path:
    """y = version * x at ``path``: each version a new weight, as a federated round makes."""
    doubling_onnx(path)
    model = onnx.load(path)
    model.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.array(float(version), np.float32), "two")
    )
    onnx.save(model, path)
    return path


def cached_files(cache: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``cache`` with its inode and mtime: a rewrite changes them."""
    return {
        p.relative_to(cache): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in cache.rglob("*")
        if p.is_file()
    }


def load_and_check(driver: OpenVinoDriver, model_file: Path, version: int) -> None:
    """Load ``model_file`` and check it runs ``version`` (not a stale cached one)."""
    model = driver.load(model_file)
    try:
        y = model.run({"x": np.ones((1, 4), np.float32)})["y"]
        np.testing.assert_array_equal(y, float(version))
    finally:
        model.close()


def test_cache_dir_keeps_one_blob_per_model_file_and_a_restart_hits_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    model_file = tmp_path / "images" / "classifier" / "model.onnx"
    model_file.parent.mkdir(parents=True)
    driver = make_driver(cache_dir=str(cache))
    for version in (1, 2, 3):
        load_and_check(driver, versioned_onnx(model_file, version), version)
        files = cached_files(cache)
        assert len(files) == 1, f"version {version}: {sorted(map(str, files))}"
    [blob] = files
    assert blob.suffix == ".blob" and len(blob.parts) == 2  # in the model file's own dir
    # edged restarted with the same model: read from the cache, nothing compiled or pruned
    load_and_check(make_driver(cache_dir=str(cache)), model_file, 3)
    assert cached_files(cache) == files


def test_cache_dir_follows_the_path_through_a_slot_flip(tmp_path: Path) -> None:
    """edged loads ``<images>/<name>/model.onnx`` where ``<name>`` links to slot a or b:
    a new version in the other slot replaces the blob of the one before it."""
    cache, link = tmp_path / "cache", tmp_path / "images" / "classifier"
    link.parent.mkdir()
    driver = make_driver(cache_dir=str(cache))
    for version, slot in ((1, "a"), (2, "b"), (3, "a")):
        (tmp_path / "slots" / slot).mkdir(parents=True, exist_ok=True)
        versioned_onnx(tmp_path / "slots" / slot / "model.onnx", version)
        link.unlink(missing_ok=True)
        link.symlink_to(tmp_path / "slots" / slot)
        load_and_check(driver, link / "model.onnx", version)
        assert len(cached_files(cache)) == 1


def test_two_model_files_keep_a_blob_each(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, second = tmp_path / "one" / "model.onnx", tmp_path / "two words é" / "model.onnx"
    first.parent.mkdir()
    second.parent.mkdir()
    driver = make_driver(cache_dir=str(cache))
    load_and_check(driver, versioned_onnx(second, 7), 7)
    kept = cached_files(cache)
    for version in (1, 2, 3):
        load_and_check(driver, versioned_onnx(first, version), version)
        files = cached_files(cache)
        assert len(files) == 2
        assert kept.items() <= files.items()  # the other model's blob is untouched
    assert len({p.parent for p in files}) == 2


def test_cache_key_is_one_per_path_and_device_and_a_safe_directory_name(tmp_path: Path) -> None:
    model_file = tmp_path / "images" / "class ifier é" / "model.onnx"
    key = _cache_key(model_file, "CPU")
    assert key == _cache_key(Path(os.path.relpath(model_file)), "cpu")  # stable across restarts
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", key) and key.startswith("class_ifier_-model-CPU-")
    others = {
        _cache_key(model_file, "NPU"),  # a fallback chain loads one file on two devices
        _cache_key(model_file.with_name("fp32.onnx"), "CPU"),
        _cache_key(tmp_path / "images" / "other" / "model.onnx", "CPU"),
    }
    assert key not in others and len(others) == 3


def test_loads_of_many_models_at_once_share_the_cache_dir(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    files = []
    for i in range(4):
        (tmp_path / f"m{i}").mkdir()
        files.append(versioned_onnx(tmp_path / f"m{i}" / "model.onnx", i + 1))
    driver = make_driver(cache_dir=str(cache))
    encoding = _locale.getencoding()
    with ThreadPoolExecutor(8) as pool:  # each model file twice: the same file at once too
        list(pool.map(lambda i: load_and_check(driver, files[i % 4], i % 4 + 1), range(8)))
    assert len(cached_files(cache)) == 4
    # OpenVINO's cache I/O sets the process locale to "C" and back: at once, they left the
    # process in "C" (ASCII), and later tests failed to read UTF-8 text
    assert _locale.getencoding() == encoding


def test_an_unusable_cache_dir_is_logged_and_the_model_still_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    in_the_way = tmp_path / "cache"
    in_the_way.write_text("a file where the cache should be")
    driver = make_driver(cache_dir=str(in_the_way))
    load_and_check(driver, versioned_onnx(tmp_path / "model.onnx", 5), 5)
    assert "runs without the compiled-model cache" in caplog.text


def test_a_failed_prune_is_logged_and_the_model_still_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, model_file = tmp_path / "cache", tmp_path / "model.onnx"
    driver = make_driver(cache_dir=str(cache))
    load_and_check(driver, versioned_onnx(model_file, 1), 1)

    def refuse(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)  # the filesystem refuses; OpenVINO is real
    load_and_check(driver, versioned_onnx(model_file, 2), 2)
    assert "cannot drop" in caplog.text and "Permission denied" in caplog.text
    assert len(cached_files(cache)) == 2
