"""The Triton-remote driver against a real Triton serving the real classifier image."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from drivers import registry
from drivers.triton_remote import TritonRemoteDriver
from edgefed.errors import ConfigError, DriverError
from edgefed.ports import free_port
from serverd.triton.install import TritonInstall
from serverd.triton.supervisor import TritonPorts, TritonProcess
from tests.drivers.model_files import built_model_file, image_feeds, video_frames
from tests.support.paths import REPO

MODEL_PY = Path(__file__).parent / "triton" / "onnx_model.py"
CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 1, 3, 224, 224 ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 1, 1000 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters: {{ key: "onnx_file" value: {{ string_value: "{onnx}" }} }}
parameters: {{ key: "delay_s" value: {{ string_value: "{delay}" }} }}
"""


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """A real Triton serving the classifier as 'efficientnet_lite0' and, 2 s slow, 'slow'."""
    if not (REPO / ".venv-triton" / ".edgefed-installed").exists():
        pytest.fail("Triton's environment is missing: run bash serverd/triton/setup_env.sh")
    onnx = built_model_file("efficientnet_lite0", "model.onnx")
    work = tmp_path_factory.mktemp("triton-remote")
    for name, delay in (("efficientnet_lite0", 0), ("slow", 2)):
        (work / "repo" / name / "1").mkdir(parents=True)
        shutil.copyfile(MODEL_PY, work / "repo" / name / "1" / "model.py")
        text = CONFIG.format(name=name, onnx=onnx, delay=delay)
        (work / "repo" / name / "config.pbtxt").write_text(text)
    install = TritonInstall.locate(REPO / ".venv-triton")
    process = TritonProcess(  # a Triton of another team's: open to the driver
        install, work / "repo", work, "remote", TritonPorts.free(), private=False
    )
    process.start()
    yield process
    process.stop()


def make_driver(url: str, **options: object) -> TritonRemoteDriver:
    config = registry.parse_config({"type": "triton-remote", "url": url, **options})
    driver = registry.create(config)
    assert isinstance(driver, TritonRemoteDriver)
    return driver


def test_the_served_classifier_gives_the_local_outputs_on_real_frames(
    triton: TritonProcess,
) -> None:
    driver = make_driver(triton.grpc_url)
    assert [(d.id, d.model, d.healthy) for d in driver.devices()] == [("remote", "triton", True)]
    model_file = built_model_file("efficientnet_lite0", "model.onnx")
    remote = driver.load(model_file)
    local = registry.create(registry.parse_config({"type": "onnxruntime"})).load(model_file)
    assert (remote.inputs, remote.outputs, remote.device) == (
        local.inputs,
        local.outputs,
        "remote",
    )
    for frame in video_frames((0, 400)):
        feeds = image_feeds("efficientnet_lite0", frame)
        # the same onnxruntime version in Triton's environment: the same numbers
        np.testing.assert_allclose(
            remote.run(feeds)["logits"], local.run(feeds)["logits"], rtol=0, atol=1e-5
        )
    driver.close()


def test_a_call_past_its_timeout_is_a_driver_error(triton: TritonProcess, tmp_path: Path) -> None:
    image = tmp_path / "classifier"
    image.mkdir()
    driver = make_driver(triton.grpc_url, models={"classifier": "slow"}, timeout_s=0.5)
    model = driver.load(image / "model.onnx")  # the file is not read: Triton has the model
    feeds = {"input": np.zeros((1, 3, 224, 224), np.float32)}
    deadline = r"slow: run failed: Deadline Exceeded \(no answer within 0\.5 s\)$"
    with pytest.raises(DriverError, match=deadline):
        model.run(feeds)
    with pytest.raises(DriverError, match="unknown device 'cpu'"):
        driver.load(image / "model.onnx", "cpu")
    driver.close()


def test_a_missed_deadline_reads_the_same_however_grpc_words_it() -> None:
    """gRPC words a missed deadline "Deadline Exceeded" or, when the stream is torn down
    first, "Stream removed": the status code is what the message goes by (a CI run saw the
    second wording)."""
    driver = make_driver(f"127.0.0.1:{free_port()}", timeout_s=0.5)
    for wording in ("Deadline Exceeded", "Stream removed"):
        exc = InferenceServerException(wording, status="StatusCode.DEADLINE_EXCEEDED")
        assert driver._message(exc) == "Deadline Exceeded (no answer within 0.5 s)"
    other = InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")
    assert driver._message(other) == "failed to connect"
    driver.close()


def test_bad_feeds_and_unknown_models_are_one_line_driver_errors(triton: TritonProcess) -> None:
    driver = make_driver(triton.grpc_url)
    with pytest.raises(DriverError, match=r"cannot load 'ghost'|'ghost' is not ready"):
        driver.load(Path("/images/ghost/model.onnx"))
    model = driver.load(built_model_file("efficientnet_lite0", "model.onnx"))
    with pytest.raises(DriverError) as err:
        model.run({"input": np.zeros((1, 3, 8, 8), np.float32)})
    assert "efficientnet_lite0: run failed" in str(err.value)
    assert "\n" not in str(err.value)
    driver.close()


def test_an_unreachable_server_is_an_unhealthy_device() -> None:
    url = f"127.0.0.1:{free_port()}"
    driver = make_driver(url, timeout_s=0.5)
    (device,) = driver.devices()
    assert not device.healthy
    assert device.detail.startswith(f"{url}: ")
    assert not driver.health().ok
    with pytest.raises(DriverError, match=f"triton-remote {url}: cannot load"):
        driver.load(Path("/images/efficientnet_lite0/model.onnx"))
    driver.close()


def test_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="url"):
        registry.parse_config({"type": "triton-remote"})
    with pytest.raises(ConfigError, match="url"):
        registry.parse_config({"type": "triton-remote", "url": "http://x:8001/v2"})
