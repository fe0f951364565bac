"""Desired twin values -> runtime settings: the one check and apply both twin paths share.

The MQTT twin (KubeEdge <= 1.14, ``service.py``) and the DMI mapper (1.15+, ``dmi.py``)
receive desired values as wire strings. Each value is converted with the property table
and validated on its own by ``RuntimeConfig`` (so one bad value does not block the
others); the valid ones are then applied together through ``RuntimeConfig.apply``, which
rolls back if a setter fails and persists what it applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edged.settings import RuntimeConfig
from edged.twin.properties import PropertyTable
from edgefed.errors import ConfigError

log = logging.getLogger(__name__)
Readings = Callable[[], Mapping[str, Any]]


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(description="The desired value as the twin sent it")
    reason: str = Field(description="Why edged refused it (the previous value stays)")


def check(runtime: RuntimeConfig, table: PropertyTable, name: str, wire: str) -> Any:
    """The typed value of one desired wire string; ConfigError says why it is refused."""
    return getattr(runtime.validate({name: table.parse(name, wire)}), name)


def apply_all(runtime: RuntimeConfig, changes: dict[str, tuple[Any, str]]) -> dict[str, Rejection]:
    """Apply ``{name: (value, wire)}`` all or nothing; the rejections if it was refused."""
    try:
        runtime.apply({n: value for n, (value, _) in changes.items()})
    except ConfigError as exc:
        return {n: Rejection(value=wire, reason=str(exc)) for n, (_, wire) in changes.items()}
    return {}


def read_only_values(readings: Readings | None, table: PropertyTable, who: str) -> dict[str, Any]:
    """The ReadOnly properties' current values from ``readings`` (none if it fails: the
    failure is logged, and the report goes out without them)."""
    if readings is None:
        return {}
    try:
        values = readings()
    except Exception:
        log.exception("%s: reading the ReadOnly properties failed", who)
        return {}
    return {n: values[n] for n in table.readonly() if n in values}
