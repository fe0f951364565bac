"""A vendor driver that breaks the driver contract: its SDK's errors reach the caller as
they are, not as ``DriverError``.

It is the fake NPU with every ``DriverError`` raised as ``RuntimeError`` instead, as by a
third-party driver (an ``edgefed.drivers`` entry point) that does not translate its SDK's
exceptions; its faults are injected as the fake NPU's are, through its state files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np

from drivers.fake_npu import FakeNpuConfig, FakeNpuDriver
from edgefed.driver import DeviceInfo, Driver, DriverConfig, LoadedModel
from edgefed.errors import DriverError

T = TypeVar("T")


def untranslated(call: Callable[[], T]) -> T:
    try:
        return call()
    except DriverError as exc:
        raise RuntimeError(f"NPU SDK: {exc}") from None


class UntranslatedModel(LoadedModel):
    def __init__(self, inner: LoadedModel) -> None:
        self._inner = inner
        self.device, self.inputs, self.outputs = inner.device, inner.inputs, inner.outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return untranslated(lambda: self._inner.run(feeds))

    def close(self) -> None:
        self._inner.close()


class UntranslatedNpuDriver(Driver[FakeNpuConfig]):
    config_model: ClassVar[type[DriverConfig]] = FakeNpuConfig
    type: ClassVar[str] = "untranslated-npu"
    file_suffixes: ClassVar[tuple[str, ...]] = FakeNpuDriver.file_suffixes

    def __init__(self, config: DriverConfig) -> None:
        super().__init__(config)
        self._npu = FakeNpuDriver(config)

    def devices(self) -> list[DeviceInfo]:
        return untranslated(self._npu.devices)

    def load(self, model_file: Path, device: str | None = None) -> LoadedModel:
        return UntranslatedModel(untranslated(lambda: self._npu.load(model_file, device)))


def untranslated_npu(state_dir: Path, devices: int) -> UntranslatedNpuDriver:
    """Such a driver over ``devices`` fake NPUs whose state files are in ``state_dir``."""
    config = FakeNpuConfig(type="fake-npu", devices=devices, state_dir=state_dir)
    return UntranslatedNpuDriver(config)
