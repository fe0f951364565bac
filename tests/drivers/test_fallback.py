"""Fallback chains on real drivers: the fake NPU (its state files make it fail and
recover), a real side-car killed past its restart budget, and onnxruntime on the CPU."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers import registry
from drivers.fake_npu import write_state
from drivers.fallback import ChainEntry, FallbackModel
from drivers.sidecar.driver import SidecarDriver
from edgefed.driver import Driver
from edgefed.errors import DriverError
from tests.drivers.model_files import doubling_onnx

ONES = {"x": np.ones((1, 4), np.float32)}
PROBE_S = 0.1
# the side-car restart window: a cold restart, runs and a kill fit in it on a loaded machine
WINDOW_S = 5.0


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def drivers(tmp_path: Path) -> Iterator[dict[str, Driver[Any]]]:
    made = {
        "fake-npu": registry.create(
            registry.parse_config(
                {"type": "fake-npu", "devices": 1, "state_dir": str(tmp_path / "npu")}
            )
        ),
        "onnxruntime": registry.create(registry.parse_config({"type": "onnxruntime"})),
    }
    yield made
    for driver in made.values():
        driver.close()


@pytest.fixture
def chain_model(tmp_path: Path, drivers: dict[str, Driver[Any]]) -> Iterator[Any]:
    made: list[FallbackModel] = []

    def make(chain: list[str], fall_back_after: int = 2) -> FallbackModel:
        model = FallbackModel(
            "double",
            doubling_onnx(tmp_path / "double.onnx"),
            [ChainEntry.parse(e) for e in chain],
            drivers,
            fall_back_after=fall_back_after,
            probe_interval_s=PROBE_S,
        )
        made.append(model)
        return model

    yield make
    for model in made:
        model.close()


def set_state(tmp_path: Path, state: str) -> None:
    write_state(tmp_path / "npu" / "npu0", state)


def test_the_preferred_device_serves_when_present(chain_model: Any) -> None:
    model = chain_model(["fake-npu:npu0", "onnxruntime:CPU"])  # device ids match in any case
    assert model.device == "fake-npu:npu0"
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
    status = model.status()
    assert (status["serving"], status["reason"]) == ("fake-npu:npu0", "preferred device")
    assert status["chain"] == [{"device": "fake-npu:npu0"}, {"device": "onnxruntime:CPU"}]


def test_a_missing_preferred_device_is_skipped_then_used_once_it_appears(
    chain_model: Any, tmp_path: Path
) -> None:
    set_state(tmp_path, "fault firmware not loaded")
    model = chain_model(["openvino:NPU", "fake-npu:npu0", "onnxruntime:cpu"])
    assert model.device == "onnxruntime:cpu"
    assert model.reason == (
        "openvino:NPU unavailable: driver 'openvino' is not available; "
        "fake-npu:npu0 unavailable: fault: firmware not loaded"
    )
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
    set_state(tmp_path, "ok")
    wait_for(lambda: model.device == "fake-npu:npu0")  # the prober moved it back
    assert model.status()["reason"] == "fake-npu:npu0 recovered"
    assert model.counters.returns == 1
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)


def test_failing_past_the_budget_moves_to_the_next_device_and_back(
    chain_model: Any, tmp_path: Path
) -> None:
    model = chain_model(["fake-npu:npu0", "onnxruntime:cpu"], fall_back_after=2)
    set_state(tmp_path, "fault thermal trip")
    for _ in range(2):  # frames on the failing device fail cleanly and are counted
        with pytest.raises(DriverError, match="thermal trip"):
            model.run(ONES)
    assert model.device == "onnxruntime:cpu"
    assert model.reason.startswith("fake-npu:npu0 failed 2 runs in a row (last: fake-npu: ")
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
    time.sleep(3 * PROBE_S)
    assert model.device == "onnxruntime:cpu"  # still faulted: probes leave it where it runs
    set_state(tmp_path, "ok")
    wait_for(lambda: model.device == "fake-npu:npu0")
    status = model.status()
    assert (status["fallbacks"], status["returns"], status["failed_runs"]) == (1, 1, 2)


def test_one_failure_below_the_budget_does_not_move_the_model(
    chain_model: Any, tmp_path: Path
) -> None:
    model = chain_model(["fake-npu:npu0", "onnxruntime:cpu"], fall_back_after=2)
    set_state(tmp_path, "fault glitch")
    with pytest.raises(DriverError):
        model.run(ONES)
    set_state(tmp_path, "ok")
    model.run(ONES)  # a success resets the count
    set_state(tmp_path, "fault glitch")
    with pytest.raises(DriverError):
        model.run(ONES)
    assert model.device == "fake-npu:npu0"


def test_no_device_loads_names_every_reason(chain_model: Any, tmp_path: Path) -> None:
    set_state(tmp_path, "fault dead")
    with pytest.raises(DriverError) as err:
        chain_model(["fake-npu:npu0", "onnxruntime:npu"])
    assert str(err.value) == (
        "double: no device of the chain loads: fake-npu:npu0 unavailable: fault: dead; "
        "onnxruntime:npu unavailable: onnxruntime has no device 'npu'"
    )


def test_a_side_car_past_its_restart_budget_falls_back_and_returns_when_it_recovers(
    tmp_path: Path, drivers: dict[str, Driver[Any]], chain_model: Any
) -> None:
    sidecar = registry.create(
        registry.parse_config(
            {
                "type": "sidecar",
                "driver": {"type": "fake-npu", "devices": 1, "state_dir": str(tmp_path / "sc")},
                "max_restarts": 1,
                "restart_window_s": WINDOW_S,
            }
        )
    )
    assert isinstance(sidecar, SidecarDriver)
    drivers["sidecar"] = sidecar
    model = chain_model(["sidecar:npu0", "onnxruntime:cpu"], fall_back_after=2)
    os.kill(sidecar.status()["pid"], signal.SIGKILL)
    with pytest.raises(DriverError, match="died during run"):
        model.run(ONES)
    model.run(ONES)  # restart 1 of 1 succeeds
    os.kill(sidecar.status()["pid"], signal.SIGKILL)
    with pytest.raises(DriverError, match="died during run"):
        model.run(ONES)
    with pytest.raises(DriverError, match="restart budget exhausted"):
        model.run(ONES)
    assert model.device == "onnxruntime:cpu"
    status = model.status()
    assert "sidecar:npu0 failed 2 runs in a row" in status["reason"]
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
    # the window passed: a probe restarts it
    wait_for(lambda: model.device == "sidecar:npu0", timeout=WINDOW_S + 5)
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
    status = model.status()
    assert status["sidecar"] == status["chain"][0]["driver"]
    assert (status["sidecar"]["state"], status["sidecar"]["crashes"]) == ("running", 2)
