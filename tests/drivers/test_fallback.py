"""Fallback chains on real drivers: the fake NPU (its state files make it fail and
recover), a real side-car killed past its restart budget or stuck in a run, onnxruntime on
the CPU, and the fake NPU as a vendor driver that lets its SDK's errors through."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers import registry
from drivers.fake_npu import write_state
from drivers.fallback import SETTLE_RUNS, ChainEntry, FallbackModel
from drivers.sidecar.driver import SidecarDriver
from edgefed.driver import Driver
from edgefed.errors import DriverError
from tests.drivers.model_files import doubling_onnx
from tests.drivers.untranslated import untranslated_npu

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
                {"type": "fake-npu", "devices": 2, "state_dir": str(tmp_path / "npu")}
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

    def make(
        chain: list[str], fall_back_after: int = 2, probe_interval_s: float = PROBE_S
    ) -> FallbackModel:
        model = FallbackModel(
            "double",
            doubling_onnx(tmp_path / "double.onnx"),
            [ChainEntry.parse(e) for e in chain],
            drivers,
            fall_back_after=fall_back_after,
            probe_interval_s=probe_interval_s,
        )
        made.append(model)
        return model

    yield make
    for model in made:
        model.close()


def set_state(tmp_path: Path, state: str, device: str = "npu0") -> None:
    write_state(tmp_path / "npu" / device, state)


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


def test_with_nowhere_to_fall_back_it_tries_again_only_a_probe_interval_later(
    chain_model: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    interval = 0.5
    model = chain_model(["fake-npu:npu0", "fake-npu:npu1"], probe_interval_s=interval)
    set_state(tmp_path, "fault ecc")
    set_state(tmp_path, "fault ecc", "npu1")
    started = time.monotonic()
    for _ in range(20):
        with pytest.raises(DriverError, match="npu0 cannot run"):
            model.run(ONES)
    elapsed = time.monotonic() - started
    tries = [r for r in caplog.records if "no later device loads" in r.getMessage()]
    assert 1 <= len(tries) <= 1 + elapsed / interval  # not one per failed frame
    assert "fake-npu:npu1 unavailable: fault: ecc" in tries[0].getMessage()
    set_state(tmp_path, "ok", "npu1")

    def fails_and_moves() -> bool:
        with pytest.raises(DriverError):
            model.run(ONES)
        return bool(model.device == "fake-npu:npu1")

    wait_for(fails_and_moves)  # the next try after the interval finds npu1
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)


def test_a_device_that_fails_after_each_return_is_probed_less_and_less_often(
    chain_model: Any, tmp_path: Path
) -> None:
    model = chain_model(["fake-npu:npu0", "onnxruntime:cpu"], fall_back_after=2)
    set_state(tmp_path, "run-fault firmware crash")  # listed healthy, loads, every run fails

    def fall_back() -> float:
        """Fail frames on npu0 until the model falls back; when the last one started."""
        while True:
            started = time.monotonic()
            with pytest.raises(DriverError, match="run fault: firmware crash"):
                model.run(ONES)
            if model.device == "onnxruntime:cpu":
                return started

    def chain_head() -> dict[str, Any]:
        head: dict[str, Any] = model.status()["chain"][0]
        return head

    def returned() -> bool:
        return bool(model.device == "fake-npu:npu0")

    fall_back()  # a first fault: probed as usual
    assert chain_head() == {"device": "fake-npu:npu0"}
    wait_for(returned)
    for backoff in (2, 4, 8, 8):  # each return ends in a fallback: twice as long, up to 8x
        fell = fall_back()
        assert chain_head()["probe_interval_s"] == pytest.approx(backoff * PROBE_S)
        assert model.reason.endswith(f"probed again in {backoff * PROBE_S:g} s")
        wait_for(returned, timeout=10)
        assert time.monotonic() - fell >= backoff * PROBE_S  # not probed before
    set_state(tmp_path, "ok")
    for _ in range(SETTLE_RUNS):
        np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
    assert chain_head() == {"device": "fake-npu:npu0"}  # recovered: probed as usual again
    assert (model.counters.fallbacks, model.counters.returns) == (5, 5)


def test_any_error_of_a_vendor_driver_is_its_device_failing(
    tmp_path: Path, drivers: dict[str, Driver[Any]], chain_model: Any
) -> None:
    drivers["vendor"] = untranslated_npu(tmp_path / "vendor", devices=1)  # raises RuntimeError
    model = chain_model(["vendor:npu0", "onnxruntime:cpu"], fall_back_after=2)
    write_state(tmp_path / "vendor" / "npu0", "fault ecc")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="npu0 cannot run: fault: ecc"):
            model.run(ONES)
    assert model.device == "onnxruntime:cpu"
    assert model.reason.startswith("vendor:npu0 failed 2 runs in a row (last: NPU SDK: ")
    shutil.rmtree(tmp_path / "vendor")  # listing its devices raises RuntimeError too
    again = chain_model(["vendor:npu0", "onnxruntime:cpu"])
    assert again.device == "onnxruntime:cpu"
    assert again.reason.startswith("vendor:npu0 unavailable: NPU SDK: fake-npu: cannot list ")


def add_sidecar(
    tmp_path: Path, drivers: dict[str, Driver[Any]], devices: int = 1, **options: Any
) -> SidecarDriver:
    """A side-car hosting a fake NPU (state files in tmp_path/sc) as driver 'sidecar'."""
    hosted = {"type": "fake-npu", "devices": devices, "state_dir": str(tmp_path / "sc")}
    sidecar = registry.create(
        registry.parse_config({"type": "sidecar", "driver": hosted, **options})
    )
    assert isinstance(sidecar, SidecarDriver)
    drivers["sidecar"] = sidecar
    return sidecar


def test_a_side_car_past_its_restart_budget_falls_back_and_returns_when_it_recovers(
    tmp_path: Path, drivers: dict[str, Driver[Any]], chain_model: Any
) -> None:
    sidecar = add_sidecar(tmp_path, drivers, max_restarts=1, restart_window_s=WINDOW_S)
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


def test_a_side_car_that_died_is_started_by_the_probes_and_returned_to_once_healthy(
    tmp_path: Path, drivers: dict[str, Driver[Any]], chain_model: Any
) -> None:
    sidecar = add_sidecar(tmp_path, drivers, call_timeout_ms=300, max_restarts=100)
    model = chain_model(["sidecar:npu0", "onnxruntime:cpu"], fall_back_after=2)
    write_state(tmp_path / "sc" / "npu0", "hang")
    with pytest.raises(DriverError, match="did not answer within 300 ms; killed"):
        model.run(ONES)
    with pytest.raises(DriverError, match=r"lost at a restart: .*npu0 is not healthy: hang"):
        model.run(ONES)  # the restart cannot load the model on the wedged device
    assert model.device == "onnxruntime:cpu"
    os.kill(sidecar.status()["pid"], signal.SIGKILL)  # dead, with no frame to run there
    wait_for(lambda: sidecar.status()["restarts"] == 2)  # a probe started it
    assert model.device == "onnxruntime:cpu"
    assert sidecar.status()["state"] == "running"
    (npu0,) = sidecar.devices()  # and it says how the device is now, not how it was
    assert (npu0.healthy, npu0.detail) == (False, "hang: the device does not answer")
    write_state(tmp_path / "sc" / "npu0", "ok")
    wait_for(lambda: model.device == "sidecar:npu0")
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)


def test_a_chain_across_two_cards_of_one_side_car_moves_to_the_healthy_card(
    tmp_path: Path, drivers: dict[str, Driver[Any]], chain_model: Any
) -> None:
    # edged configures the side-car once: both cards are behind the same one
    sidecar = add_sidecar(
        tmp_path, drivers, devices=2, call_timeout_ms=300, restart_window_s=WINDOW_S
    )
    model = chain_model(["sidecar:npu0", "sidecar:npu1"], fall_back_after=2)
    other = sidecar.load(doubling_onnx(tmp_path / "other.onnx"), "npu1")  # another model
    write_state(tmp_path / "sc" / "npu0", "hang")
    with pytest.raises(DriverError, match="did not answer within 300 ms; killed"):
        model.run(ONES)
    with pytest.raises(DriverError, match=r"double\.onnx on npu0 was lost at a restart: .*hang"):
        model.run(ONES)  # the restart loaded the other model; this one's card is wedged
    assert model.device == "sidecar:npu1"
    assert "sidecar:npu0 failed 2 runs in a row" in model.reason
    for _ in range(5):
        np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
        np.testing.assert_array_equal(other.run(ONES)["y"], 2.0)
    status = sidecar.status()
    assert (status["state"], status["restarts"], status["hangs"]) == ("running", 1, 1)
    assert status["lost_models"] == []  # the chain closed the lost model as it moved
    write_state(tmp_path / "sc" / "npu0", "ok")
    wait_for(lambda: model.device == "sidecar:npu0")
    np.testing.assert_array_equal(model.run(ONES)["y"], 2.0)
    assert sidecar.status()["restarts"] == 1


def inside(thread: threading.Thread, function: Callable[..., Any]) -> bool:
    """Whether ``thread`` is running ``function`` (or waiting in it) right now."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code is function.__code__:
            return True
        frame = frame.f_back
    return False


def test_a_status_call_waiting_for_a_busy_side_car_does_not_hold_up_runs(
    tmp_path: Path, drivers: dict[str, Driver[Any]], chain_model: Any
) -> None:
    sidecar = add_sidecar(tmp_path, drivers, devices=2, call_timeout_ms=60_000)
    write_state(tmp_path / "sc" / "npu0", "fault firmware not loaded")
    model = chain_model(["sidecar:npu0", "onnxruntime:cpu"])
    assert model.device == "onnxruntime:cpu"
    other = sidecar.load(doubling_onnx(tmp_path / "double.onnx"), "npu1")  # another model
    write_state(tmp_path / "sc" / "npu1", "hang")
    busy = threading.Thread(target=other.run, args=(ONES,))
    busy.start()
    wait_for(lambda: sidecar.counters.calls == 1)  # the side-car serves that run, stuck in it
    statuses: list[dict[str, Any]] = []
    asking = threading.Thread(target=lambda: statuses.append(model.status()))
    ran = threading.Event()

    def run_a_frame() -> None:
        model.run(ONES)
        ran.set()

    running = threading.Thread(target=run_a_frame)
    try:
        asking.start()
        wait_for(lambda: inside(asking, SidecarDriver.status))  # waiting for the side-car
        running.start()
        assert ran.wait(5), "a run on the CPU waited for the side-car's status"
        assert asking.is_alive()
    finally:
        write_state(tmp_path / "sc" / "npu1", "ok")
        for thread in (busy, asking, running):
            thread.join(10)
    (status,) = statuses
    assert (status["serving"], status["chain"][0]["driver"]["calls"]) == ("onnxruntime:cpu", 1)
