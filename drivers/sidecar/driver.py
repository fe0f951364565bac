"""The side-car driver: any driver in a process of its own, behind a watchdog.

``type: sidecar`` wraps another driver's config (``driver:``). The wrapped driver runs in
``python -m drivers.sidecar.host``; tensors cross in shared memory (see ``protocol``). Each
call has a deadline: a side-car that does not answer in time is killed (SIGKILL) like one
that crashed, the call fails with a ``DriverError`` and the failure is counted. The next
call (``devices()`` too, as the device plugin and a fallback chain's prober make) starts a
new side-car and loads its models again, unless ``max_restarts`` restarts already happened
in the last ``restart_window_s`` seconds: then calls are refused (health not ok) until the
window has room again, so a fallback chain moves the model elsewhere. While the side-car
cannot answer, ``devices()`` lists the devices it knew as unhealthy, with the reason.

A restart needs only the process, the hosted driver's start and its device listing; each
model is loaded again on its own. One that does not load (its device is down) is lost:
its runs fail with the reason, and it is loaded again by a run at most once per
``restart_window_s / max_restarts`` (the pace the restart budget allows), so the models on
the other devices keep running.

Calls to one side-car are served one at a time (its host is single-threaded). edged
configures each driver type once, so all its side-car models, on every device of the
hosted driver, share one side-car and take turns: a hung device holds the others up to
``call_timeout_ms``. In-process drivers have no such watchdog: a call stuck inside a
native runtime cannot be interrupted from Python, only its process can be killed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, SerializeAsAny, field_validator

from drivers import registry
from drivers.sidecar import protocol
from edgefed.config import Seconds
from edgefed.counters import Counters
from edgefed.driver import DeviceInfo, Driver, DriverConfig, DriverHealth, LoadedModel, one_line
from edgefed.errors import DriverError

log = logging.getLogger(__name__)

STATE_STOPPED = "stopped"  # not started yet, or closed
STATE_RUNNING = "running"
STATE_RESTARTING = "restarting"  # died or hung; restarts on the next call
STATE_FAILED = "failed"  # restart budget exhausted; refuses calls until the window has room


class SidecarConfig(DriverConfig):
    type: Literal["sidecar"] = Field(description="Driver type")
    driver: SerializeAsAny[DriverConfig] = Field(
        description="Config of the driver to host in the side-car (any type but sidecar)"
    )
    call_timeout_ms: float = Field(
        2000, gt=0, le=600_000, description="Deadline of one run; past it the side-car is killed"
    )
    start_timeout_s: Seconds = Field(
        120, description="Deadline to start the side-car and load its models again"
    )
    max_restarts: int = Field(5, ge=0, description="Restarts allowed within restart_window_s")
    restart_window_s: Seconds = Field(60, description="Window of the restart budget")

    @field_validator("driver", mode="before")
    @classmethod
    def _hosted(cls, value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("type") == "sidecar":
                raise ValueError("a side-car cannot host another side-car")
            return registry.parse_config(value)
        return value


@dataclass
class SidecarCounters(Counters):
    calls: int = 0
    failed_calls: int = 0  # every call that raised, whatever the cause
    crashes: int = 0  # the process died during a call
    hangs: int = 0  # a call passed its deadline and the process was killed
    restarts: int = 0
    refused: int = 0  # calls refused while the restart budget was exhausted
    last_failure: str = ""


@dataclass
class _Model:
    """A model the side-car holds, to load again in a new side-car."""

    path: Path
    device: str  # the device its first load resolved
    lost: str = ""  # why its last load failed; "" while it is loaded
    retry_at: float = 0.0  # monotonic time before which a lost model is not loaded again

    def load_request(self, model_id: int) -> dict[str, Any]:
        return _load_request(model_id, self.path, self.device)


def _load_request(model_id: int, path: Path, device: str | None) -> dict[str, Any]:
    """The side-car's request to load ``path`` as ``model_id`` (None: any device)."""
    return {"op": "load", "id": model_id, "path": str(path), "device": device}


class _Process:
    """One side-car process and its end of the channel."""

    def __init__(self, timeout_s: float) -> None:
        parent, child = socket.socketpair()
        self.sock = parent
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "drivers.sidecar.host", "--fd", str(child.fileno())],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            parent.close()
            raise DriverError(f"side-car: cannot start: {exc}") from exc
        finally:
            child.close()
        self.sock.settimeout(timeout_s)

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self.sock.settimeout(timeout_s)
        protocol.send(self.sock, request)
        answer = protocol.receive(self.sock)
        if not answer.get("ok"):
            raise DriverError(str(answer.get("error", "side-car failed without a reason")))
        return answer

    def exit_reason(self) -> str:
        code = self.popen.poll()
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        self.sock.close()

    def stop(self) -> None:
        """Close the channel (the host exits on EOF); kill it if it does not."""
        self.sock.close()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()


class SidecarModel(LoadedModel):
    def __init__(self, driver: SidecarDriver, model_id: int, info: dict[str, Any]) -> None:
        self._driver = driver
        self._id = model_id
        self.device = str(info["device"])
        self.inputs = protocol.specs_from_json(info["inputs"])
        self.outputs = protocol.specs_from_json(info["outputs"])

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._driver.run(self._id, feeds)

    def status(self) -> dict[str, Any]:
        return {"sidecar": self._driver.status()}

    def close(self) -> None:
        self._driver.unload(self._id)


class SidecarDriver(Driver[SidecarConfig]):
    type: ClassVar[str] = "sidecar"
    config_model = SidecarConfig
    file_suffixes: ClassVar[tuple[str, ...]] = ()  # set per instance from the hosted driver

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self.hosted = self.config.driver.type
        # the files of the hosted driver, known only once configured
        self.file_suffixes = registry.driver_class(self.hosted).file_suffixes  # type: ignore[misc]
        self.counters = SidecarCounters()
        self.state = STATE_STOPPED
        # what the side-car added to the last run: copies, channel, wake-ups (ms)
        self.last_overhead_ms = 0.0
        self._lock = threading.Lock()
        self._closed = False
        self._process: _Process | None = None
        self._pid: int | None = None
        self._models: dict[int, _Model] = {}
        self._next_id = 1
        self._restart_times: deque[float] = deque()
        self._devices: list[DeviceInfo] = []
        self._arena = protocol.Arena(f"edgefed-sd{os.getpid()}")
        self._reader = protocol.Reader()
        with self._lock:
            self._ensure_running()

    # -- process life ---------------------------------------------------------------------

    def _budget_left(self, now: float) -> bool:
        while self._restart_times and now - self._restart_times[0] > self.config.restart_window_s:
            self._restart_times.popleft()
        return len(self._restart_times) < self.config.max_restarts

    def _ensure_running(self) -> _Process:
        if self._process is not None:
            return self._process
        if self._closed:
            raise DriverError(f"side-car {self.hosted}: driver is closed")
        if self.state in (STATE_RESTARTING, STATE_FAILED):
            if not self._budget_left(time.monotonic()):
                self.state = STATE_FAILED
                self.counters.refused += 1
                raise DriverError(
                    f"side-car {self.hosted}: restart budget exhausted ({self.config.max_restarts}"
                    f" restarts in {self.config.restart_window_s:g} s); last failure: "
                    f"{self.counters.last_failure}"
                )
            self._restart_times.append(time.monotonic())
            self.counters.restarts += 1
        timeout = self.config.start_timeout_s
        process = _Process(timeout)
        try:
            hosted = self.config.driver.model_dump(mode="json")
            self._pid = int(process.call({"op": "init", "driver": hosted}, timeout)["pid"])
            self._devices = protocol.devices_from_json(
                process.call({"op": "devices"}, timeout)["devices"]
            )
            self._load_again(process, timeout)
        except (DriverError, OSError) as exc:
            process.kill()
            self.state = STATE_RESTARTING
            self.counters.last_failure = f"start failed: {exc}"
            raise DriverError(f"side-car {self.hosted}: start failed: {exc}") from exc
        self._process = process
        self.state = STATE_RUNNING
        log.info("side-car %s running as pid %d", self.hosted, self._pid)
        return process

    def _lose(self, model_id: int, model: _Model, why: str) -> None:
        """Mark a model lost (lock held): loaded again no sooner than the restart budget's
        pace, ``restart_window_s / max_restarts``."""
        pace_s = self.config.restart_window_s / max(self.config.max_restarts, 1)
        model.lost, model.retry_at = why, time.monotonic() + pace_s
        log.warning(
            "side-car %s: model %d (%s on %s) lost: %s; loaded again in %g s at the earliest",
            self.hosted,
            model_id,
            model.path.name,
            model.device,
            why,
            pace_s,
        )

    def _load_again(self, process: _Process, timeout_s: float) -> None:
        """Load the models into a new side-car, each on its own (lock held): one the hosted
        driver refuses is lost, the others load. A lost one is tried only once it is due. A
        load that hangs or ends the process raises, as the start failed."""
        now = time.monotonic()
        for model_id, model in self._models.items():
            if model.lost and now < model.retry_at:
                continue
            try:
                process.call(model.load_request(model_id), timeout_s)
            except (protocol.ChannelClosed, OSError) as exc:  # it hung or died: start failed
                self._lose(model_id, model, f"load failed: {one_line(exc)}")
                raise
            except DriverError as exc:
                self._lose(model_id, model, one_line(exc))
            else:
                model.lost = ""

    def _call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One request to a running side-car; a hang or crash kills it and raises."""
        process = self._ensure_running()
        try:
            return process.call(request, timeout_s)
        except TimeoutError as exc:
            process.kill()
            self.counters.hangs += 1
            failure = f"{request['op']} did not answer within {timeout_s * 1000:g} ms; killed"
            cause: BaseException = exc
        except (protocol.ChannelClosed, OSError) as exc:
            process.kill()
            self.counters.crashes += 1
            failure = f"side-car died during {request['op']} ({process.exit_reason()})"
            cause = exc
        self._process = None
        self._pid = None
        self.state = STATE_RESTARTING
        self.counters.last_failure = failure
        log.warning("side-car %s: %s", self.hosted, failure)
        raise DriverError(f"side-car {self.hosted}: {failure}") from cause

    # -- the driver contract --------------------------------------------------------------

    def _ask_devices(self) -> tuple[list[DeviceInfo], str]:
        """The hosted driver's devices and "" (lock held), from a side-car started again if
        it is gone and may be; if it cannot answer, the devices it listed last, unhealthy,
        and why."""
        try:
            answer = self._call({"op": "devices"}, self.config.call_timeout_ms / 1000)
        except DriverError as exc:
            why = str(exc)
            return [DeviceInfo(d.id, d.model, False, why) for d in self._devices], why
        self._devices = protocol.devices_from_json(answer["devices"])
        return list(self._devices), ""

    def devices(self) -> list[DeviceInfo]:
        with self._lock:
            return self._ask_devices()[0]

    def load(self, model_file: Path, device: str | None = None) -> LoadedModel:
        path = model_file.resolve()
        with self._lock:
            model_id = self._next_id
            self._next_id += 1
            info = self._call(_load_request(model_id, path, device), self.config.start_timeout_s)
            self._models[model_id] = _Model(path, str(info["device"]))
        return SidecarModel(self, model_id, info)

    def run(self, model_id: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.counters.calls += 1
            start = time.perf_counter()
            try:
                self._found(model_id)
                request = {"op": "run", "id": model_id, **self._arena.write(feeds)}
                answer = self._call(request, self.config.call_timeout_ms / 1000)
                outputs = self._reader.read(answer, copy=True)
                elapsed_ms = (time.perf_counter() - start) * 1000
                self.last_overhead_ms = elapsed_ms - float(answer.get("run_ms", 0.0))
                return outputs
            except DriverError:
                self.counters.failed_calls += 1
                raise

    def _found(self, model_id: int) -> None:
        """Raise if the model was lost at a restart (lock held), after loading it again if
        that is due."""
        self._ensure_running()  # a restart loads the models again, lost ones that are due
        model = self._models.get(model_id)
        if model is None or not model.lost:
            return
        if time.monotonic() >= model.retry_at:
            try:
                self._call(model.load_request(model_id), self.config.start_timeout_s)
            except DriverError as exc:
                self._lose(model_id, model, one_line(exc))
            else:
                model.lost = ""
                log.info("side-car %s: model %d loaded again", self.hosted, model_id)
                return
        raise DriverError(
            f"side-car {self.hosted}: model {model.path.name} on {model.device} was lost at a"
            f" restart: {model.lost}"
        )

    def unload(self, model_id: int) -> None:
        with self._lock:
            model = self._models.pop(model_id, None)
            if model is not None and not model.lost and self._process is not None:
                try:
                    self._call({"op": "unload", "id": model_id}, self.config.call_timeout_ms / 1000)
                except DriverError as exc:
                    log.warning("side-car %s: unload failed: %s", self.hosted, exc)

    def status(self) -> dict[str, Any]:
        """What the status API shows: state, pid, restarts, failure counters and the models
        lost at a restart, with why."""
        with self._lock:
            lost = [
                {"model": m.path.name, "device": m.device, "reason": m.lost}
                for m in self._models.values()
                if m.lost
            ]
            return {
                "driver": self.hosted,
                "state": self.state,
                "pid": self._pid,
                "restarts_in_window": len(self._restart_times),
                "last_overhead_ms": round(self.last_overhead_ms, 3),
                "lost_models": lost,
                **self.counters.as_dict(),
            }

    def health(self) -> DriverHealth:
        """Not ok while the side-car cannot answer (a restart fails, the restart budget is
        exhausted); restarts a dead side-car if it may."""
        with self._lock:
            devices, failure = self._ask_devices()
            detail = failure or f"side-car {self.hosted}: {self.state}, pid {self._pid}"
        return DriverHealth(any(d.healthy for d in devices), detail, devices)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._process is not None:
                self._process.stop()
                self._process = None
            self._pid = None
            self.state = STATE_STOPPED
            self._reader.close()
            self._arena.close()
