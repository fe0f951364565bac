"""The driver contract: every NPU/accelerator driver implements ``Driver``.

A driver is one file with a pydantic config (discriminated on ``type``) and a
class that lists its devices, loads a model file onto a device, runs a batch,
reports health and closes. Vendor SDKs are imported inside ``load``/``__init__``
of the driver, never at module import, so a missing SDK is reported as a
``DriverError`` with its reason instead of breaking the daemon.
"""

from __future__ import annotations

import abc
import builtins
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgefed.errors import DriverError


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (vendor SDKs like multi-line messages)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def import_sdk(driver_type: str, module: str) -> ModuleType:
    """Import a driver's vendor SDK; a missing or broken one is a ``DriverError`` naming it.

    What every driver's constructor does first, so a daemon without the SDK reports the
    driver as unavailable with the reason instead of failing to start.
    """
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken native library raising anything
        raise DriverError(f"{driver_type}: {module} is not importable: {one_line(exc)}") from exc


class DriverConfig(BaseModel):
    """Base of every driver's config; subclasses pin ``type`` to a literal."""

    model_config = ConfigDict(extra="forbid")
    type: str


@dataclass(frozen=True)
class DeviceInfo:
    """One accelerator a driver can see."""

    id: str
    model: str  # hardware model name, e.g. "cpu", "x220" (groups devices for the device plugin)
    healthy: bool = True
    detail: str = ""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    dtype: str  # numpy dtype name


@dataclass
class DriverHealth:
    ok: bool
    detail: str = ""
    devices: list[DeviceInfo] = field(default_factory=list)


class LoadedModel(abc.ABC):
    """A model loaded on one device. ``run`` may be called from several threads."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    device: str

    @abc.abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; returns every output by name. Raises DriverError."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model's device memory."""

    def status(self) -> dict[str, Any]:
        """What the status API shows about the runtime under this model (side-car state,
        fallback chain); empty for a plain in-process model."""
        return {}


Config = TypeVar("Config", bound=DriverConfig)


class Driver(abc.ABC, Generic[Config]):
    """An accelerator backend. ``type`` is the name used in config and manifests;
    ``config_model`` the pydantic model of its config, of which ``config`` is an instance."""

    type: ClassVar[str]
    config_model: ClassVar[builtins.type[DriverConfig]]
    file_suffixes: ClassVar[tuple[str, ...]]  # model files this driver loads, e.g. (".onnx",)

    def __init__(self, config: DriverConfig) -> None:
        if not isinstance(config, self.config_model):
            raise DriverError(
                f"{self.type} driver needs a {self.config_model.__name__}, got {config.type}"
            )
        self.config: Config = config  # type: ignore[assignment]  # checked just above

    @abc.abstractmethod
    def devices(self) -> list[DeviceInfo]:
        """The devices this driver can see right now."""

    @abc.abstractmethod
    def load(self, model_file: Path, device: str | None = None) -> LoadedModel:
        """Load a model file onto ``device`` (default: the first healthy one)."""

    def health(self) -> DriverHealth:
        devs = self.devices()
        return DriverHealth(ok=any(d.healthy for d in devs), devices=devs)

    def status(self) -> dict[str, Any]:
        """What the status API shows about the driver beyond its devices (a side-car's
        state and restarts); empty for a plain in-process driver."""
        return {}

    def close(self) -> None:
        """Release the driver's resources."""
