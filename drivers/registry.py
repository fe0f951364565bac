"""Driver registry: built-ins in an explicit dict plus the ``edgefed.drivers`` entry points.

Built-ins are named by ``module:Class`` and imported on first use, so a driver whose
module fails to import (missing SDK, broken wheel) is reported with the reason and
the others still load. Nothing is discovered by walking subclasses.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pydantic import ValidationError

from edgefed.driver import Driver, DriverConfig
from edgefed.errors import ConfigError, DriverError

ENTRY_POINT_GROUP = "edgefed.drivers"

BUILTIN_DRIVERS: dict[str, str] = {
    "onnxruntime": "drivers.onnx_runtime:OnnxRuntimeDriver",
    "litert": "drivers.litert:LiteRTDriver",
    "openvino": "drivers.openvino:OpenVinoDriver",
    "fake-npu": "drivers.fake_npu:FakeNpuDriver",
    "sidecar": "drivers.sidecar.driver:SidecarDriver",
    "triton-remote": "drivers.triton_remote:TritonRemoteDriver",
}


@dataclass(frozen=True)
class DriverStatus:
    """What the status API shows for each known driver."""

    type: str
    source: str  # "builtin" or the entry point's distribution
    loaded: bool
    reason: str = ""


def _import(target: str) -> type[Driver[Any]]:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"{target} is not a edgefed.driver.Driver subclass")
    return cls


def available() -> dict[str, str]:
    """Every driver type known, mapped to where it comes from (no imports done)."""
    found = {name: "builtin" for name in BUILTIN_DRIVERS}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.dist.name if ep.dist else ep.value)
    return found


def driver_class(type_name: str) -> type[Driver[Any]]:
    """Import and return a driver class; DriverError names the cause if that fails."""
    if type_name in BUILTIN_DRIVERS:
        target = BUILTIN_DRIVERS[type_name]
    else:
        eps = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        if type_name not in eps:
            known = ", ".join(sorted(available()))
            raise DriverError(f"unknown driver {type_name!r} (known: {known})")
        target = eps[type_name].value
    try:
        return _import(target)
    except Exception as exc:  # any import failure of a plug-in is reported, not raised raw
        raise DriverError(f"driver {type_name!r} failed to load: {exc}") from exc


def parse_config(raw: dict[str, Any]) -> DriverConfig:
    """Validate one driver config block against its driver's own pydantic model."""
    type_name = raw.get("type")
    if not isinstance(type_name, str):
        raise ConfigError("driver config needs a 'type'")
    try:
        cls = driver_class(type_name)
    except DriverError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        return cls.config_model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"driver {type_name!r}: {exc}") from exc


def create(config: DriverConfig) -> Driver[Any]:
    """Instantiate a driver from its validated config."""
    cls = driver_class(config.type)
    try:
        return cls(config)
    except DriverError:
        raise
    except Exception as exc:
        raise DriverError(f"driver {config.type!r} failed to start: {exc}") from exc


def statuses(wanted: list[str]) -> list[DriverStatus]:
    """Try each wanted driver type and say which loaded and why the others did not."""
    sources = available()
    out = []
    for name in wanted:
        try:
            driver_class(name)
        except DriverError as exc:
            out.append(DriverStatus(name, sources.get(name, "unknown"), False, str(exc)))
        else:
            out.append(DriverStatus(name, sources.get(name, "unknown"), True))
    return out
