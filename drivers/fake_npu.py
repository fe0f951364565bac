"""A faithful fake of a vendor NPU, for tests, demos and the device plugin without hardware.

It behaves like a vendor driver whose kernel module exposes one sysfs-like state file per
device: ``<state_dir>/npu<N>`` holds ``ok`` or ``fault`` (optionally followed by a reason,
e.g. ``fault thermal trip``). Operators and tests flip a device's health by writing that
file. Models are ``.onnx`` files that run on ONNX Runtime's CPU provider underneath, with
an optional simulated device latency; a faulted device refuses to load or run models.
``run-fault [reason]`` is a device whose health says ok while its runs fail (a firmware
bug in its execution path): it is listed healthy and loads models, and every run fails.
Nothing here pretends to be real hardware: every id, message and resource says "fake".
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import numpy as np
from pydantic import Field

from edgefed.driver import DeviceInfo, Driver, DriverConfig, LoadedModel
from edgefed.errors import DriverError

from .onnx_runtime import OnnxRuntimeConfig, OnnxRuntimeDriver

STATE_OK = "ok"
STATE_FAULT = "fault"
STATE_HANG = "hang"  # a wedged device: runs block until the state changes (watchdog tests)
STATE_RUN_FAULT = "run-fault"  # listed healthy and loads models, but every run fails
_DEVICE_FILE = re.compile(r"^npu(\d+)$")


class FakeNpuConfig(DriverConfig):
    type: Literal["fake-npu"] = Field(description="Driver type")
    devices: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Devices the fake card has; their state files are created",
    )
    model_name: str = Field(
        default="fake-x220",
        pattern=r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$",
        description="Hardware model name reported for every device (groups device-plugin "
        "resources, e.g. edgefed.io/npu-fake-x220)",
    )
    state_dir: Path = Field(
        default=Path("var/fake-npu"),
        description="Directory simulating the vendor's sysfs: one file per device (npu0, "
        "npu1, ...) holding 'ok', 'fault [reason]', 'hang' or 'run-fault [reason]'",
    )
    latency_ms: float = Field(
        default=0.0, ge=0, le=10_000, description="Simulated device latency added to every run"
    )


class DeviceState(NamedTuple):
    """What one device's state file says."""

    word: str  # ok, fault, hang, run-fault; "" for a file unreadable or holding anything else
    detail: str  # why the device is not healthy, or why its runs fail

    @property
    def healthy(self) -> bool:
        """As the device is listed: a run fault shows only when a model runs."""
        return self.word in (STATE_OK, STATE_RUN_FAULT)


def read_state(path: Path) -> DeviceState:
    """One device's state, from its file."""
    try:  # bytes that are not UTF-8 read as U+FFFD: an unknown state, like any other text
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        return DeviceState("", f"state file unreadable: {exc.strerror or exc}")
    word, _, reason = text.partition(" ")
    word, reason = word.lower(), reason.strip()
    if word == STATE_OK:
        return DeviceState(word, "")
    if word in (STATE_FAULT, STATE_RUN_FAULT):
        name = word.replace("-", " ")
        return DeviceState(word, f"{name}: {reason}" if reason else name)
    if word == STATE_HANG:
        return DeviceState(word, "hang: the device does not answer")
    expected = "'ok', 'fault', 'hang' or 'run-fault'"
    return DeviceState("", f"unknown state {text[:40]!r} (expected {expected})")


def write_state(path: Path, state: str) -> None:
    """Set a device's state file atomically: a reader never sees it half written (what
    ``echo fault > npu0`` cannot promise)."""
    partial = path.with_name(f".{path.name}.new")
    partial.write_text(state + "\n", encoding="utf-8")
    os.replace(partial, path)


class FakeNpuModel(LoadedModel):
    """A model 'on' one fake NPU: checks the device state before each run, then runs on ORT."""

    def __init__(self, inner: LoadedModel, state_file: Path, device: str, latency_s: float):
        self._inner = inner
        self._state_file = state_file
        self._latency_s = latency_s
        self.device = device
        self.inputs = inner.inputs
        self.outputs = inner.outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # like a wedged card, a hung one never returns by itself
        while (state := read_state(self._state_file)).word == STATE_HANG:
            time.sleep(0.05)
        if state.word != STATE_OK:
            raise DriverError(f"fake-npu: device {self.device} cannot run: {state.detail}")
        if self._latency_s:
            time.sleep(self._latency_s)
        return self._inner.run(feeds)

    def close(self) -> None:
        self._inner.close()


class FakeNpuDriver(Driver[FakeNpuConfig]):
    config_model: ClassVar[type[DriverConfig]] = FakeNpuConfig
    type: ClassVar[str] = "fake-npu"
    file_suffixes: ClassVar[tuple[str, ...]] = (".onnx",)

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self._runtime: OnnxRuntimeDriver | None = None
        state_dir = self.config.state_dir
        try:  # the "kernel module" creates its device entries; existing states are kept
            state_dir.mkdir(parents=True, exist_ok=True)
            for index in range(self.config.devices):
                state = state_dir / f"npu{index}"
                if not state.exists():
                    state.write_text(STATE_OK + "\n", encoding="utf-8")
        except OSError as exc:
            raise DriverError(f"fake-npu: cannot prepare state dir {state_dir}: {exc}") from exc

    def state_file(self, device: str) -> Path:
        """The file that holds ``device``'s state (write 'ok' or 'fault' to flip it)."""
        return self.config.state_dir / device

    def devices(self) -> list[DeviceInfo]:
        try:
            names = [p.name for p in self.config.state_dir.iterdir() if _DEVICE_FILE.match(p.name)]
        except OSError as exc:
            raise DriverError(f"fake-npu: cannot list {self.config.state_dir}: {exc}") from exc
        names.sort(key=lambda n: int(n[3:]))
        out = []
        for name in names:
            state = read_state(self.config.state_dir / name)
            detail = "" if state.healthy else state.detail
            out.append(DeviceInfo(name, self.config.model_name, state.healthy, detail))
        return out

    def _pick(self, device: str | None) -> DeviceInfo:
        devs = self.devices()
        if device is None:
            healthy = [d for d in devs if d.healthy]
            if not healthy:
                raise DriverError("fake-npu: no healthy device")
            return healthy[0]
        for dev in devs:
            if dev.id == device:
                if not dev.healthy:
                    raise DriverError(f"fake-npu: device {device} is not healthy: {dev.detail}")
                return dev
        known = ", ".join(d.id for d in devs) or "none"
        raise DriverError(f"fake-npu: unknown device {device!r} (present: {known})")

    def load(self, model_file: Path, device: str | None = None) -> LoadedModel:
        dev = self._pick(device)
        if model_file.suffix not in self.file_suffixes:
            raise DriverError(f"fake-npu: cannot load {model_file.name}: only .onnx files")
        if self._runtime is None:  # imports onnxruntime: the fake's "vendor SDK"
            self._runtime = OnnxRuntimeDriver(
                OnnxRuntimeConfig.model_validate({"type": "onnxruntime"})
            )
        inner = self._runtime.load(model_file, "cpu")
        return FakeNpuModel(inner, self.state_file(dev.id), dev.id, self.config.latency_ms / 1000)
