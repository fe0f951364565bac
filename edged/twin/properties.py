"""The twin property table (``edged/twin/properties.yaml``, package data) and wire values.

The YAML file is the single source of truth for the device twin's properties: name,
KubeEdge type, range, allowed values and access mode; the DeviceModel manifest is
checked against it. edged reads it at start-up to turn the strings of the wire into
typed values and back, and refuses a desired value that breaks the table (type,
range, allowed values, read-only). ``RuntimeConfig`` then validates the value again
with its own rules (known model names among them); tests check that both agree.

ReadWrite properties are the fields of ``RuntimeSettings``; ReadOnly properties are
readings edged reports (frame rate, gate ratio, outbox depth).
"""

from __future__ import annotations

import math
import re
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefed.errors import ConfigError

TABLE_RESOURCE = "properties.yaml"
"""The packaged table, beside this module (``importlib.resources``; a wheel carries it)."""

KubeEdgeType = Literal["INT", "FLOAT", "STRING", "BOOLEAN"]
WIRE_TYPES: dict[str, str] = {
    "INT": "int",
    "FLOAT": "float",
    "STRING": "string",
    "BOOLEAN": "boolean",
}
"""DeviceModel type -> twin ``metadata.type`` (the names EdgeCore's ValidateValue knows)."""

_INT = re.compile(r"^-?[0-9]+\Z")
MAX_NUMBER_CHARS = 64  # a longer number is out of every range (and costly to parse)
_FLOAT = re.compile(r"^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\Z")


class PropertySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Twin property name")
    type: KubeEdgeType = Field(description="DeviceModel property type")
    access_mode: Literal["ReadWrite", "ReadOnly"] = Field(
        description="ReadWrite: the cloud sets it; ReadOnly: edged reports it"
    )
    minimum: float | None = Field(default=None, description="Smallest value (inclusive)")
    maximum: float | None = Field(default=None, description="Largest value (inclusive)")
    exclusive_minimum: bool = Field(
        default=False, description="The value must be strictly greater than the minimum"
    )
    allowed: list[str] | None = Field(default=None, description="The only values accepted")
    list_separator: str | None = Field(
        default=None, description="The value is a list of items joined by this separator"
    )
    unit: str | None = Field(default=None, description="DeviceModel unit")
    description: str = Field(description="One line for operators")

    def check_range(self, value: float) -> None:
        low, high = self.minimum, self.maximum
        shown = _show(value)
        if low is not None and (value <= low if self.exclusive_minimum else value < low):
            word = "greater than" if self.exclusive_minimum else "at least"
            raise ConfigError(f"{self.name}: {shown} is out of range (must be {word} {_show(low)})")
        if high is not None and value > high:
            raise ConfigError(
                f"{self.name}: {shown} is out of range (must be at most {_show(high)})"
            )


def _show(value: float) -> str:
    """A bound or value for a message: whole numbers in full, others short (1e-300)."""
    if isinstance(value, int) or (abs(value) < 1e15 and value == int(value)):
        text = str(int(value))
        return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"
    return f"{value:g}"


class PropertyTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = Field(description="Version of this file's layout")
    properties: list[PropertySpec] = Field(min_length=1, description="The twin properties")

    def names(self) -> list[str]:
        return [p.name for p in self.properties]

    def writable(self) -> list[str]:
        """ReadWrite properties: the runtime settings the cloud may set."""
        return [p.name for p in self.properties if p.access_mode == "ReadWrite"]

    def readonly(self) -> list[str]:
        """ReadOnly properties: readings edged reports."""
        return [p.name for p in self.properties if p.access_mode == "ReadOnly"]

    def spec(self, name: str) -> PropertySpec:
        for p in self.properties:
            if p.name == name:
                return p
        raise ConfigError(f"unknown property {name!r} (known: {', '.join(self.writable())})")

    def wire_type(self, name: str) -> str:
        """The twin ``metadata.type`` of a property: int, float, string or boolean."""
        return WIRE_TYPES[self.spec(name).type]

    def parse(self, name: str, wire: str) -> Any:
        """The typed value of a desired wire string; ConfigError says why it is refused."""
        spec = self.spec(name)
        if spec.access_mode == "ReadOnly":
            raise ConfigError(f"{name} is read-only: edged reports it, the cloud cannot set it")
        if spec.type in ("INT", "FLOAT") and len(wire) > MAX_NUMBER_CHARS:
            raise ConfigError(f"{name}: a number of {len(wire)} characters is out of range")
        if spec.type == "INT":
            if not _INT.match(wire):
                raise ConfigError(f"{name}: {wire!r} is not an integer")
            spec.check_range(int(wire))
            return int(wire)
        if spec.type == "FLOAT":
            if not _FLOAT.match(wire) or not math.isfinite(number := float(wire)):
                raise ConfigError(f"{name}: {wire!r} is not a finite number")
            spec.check_range(number)
            return number
        if spec.type == "BOOLEAN":
            if wire not in ("true", "false"):
                raise ConfigError(f"{name}: {wire!r} is not true or false")
            return wire == "true"
        if spec.allowed is not None and wire not in spec.allowed:
            raise ConfigError(f"{name}: {wire!r} is not one of {', '.join(spec.allowed)}")
        return wire

    def format(self, name: str, value: Any) -> str | None:
        """The wire string of a current value (None: no value, nothing to report)."""
        spec = self.spec(name)
        if value is None:
            return None
        if spec.type == "BOOLEAN":
            return "true" if value else "false"
        if spec.type == "FLOAT":
            return repr(float(value))
        if spec.type == "INT":
            return str(int(value))
        if isinstance(value, list | tuple):
            return (spec.list_separator or ",").join(str(v) for v in value)
        return str(value)


def parse_property_table(data: Any, source: str = "twin property table") -> PropertyTable:
    try:
        table = PropertyTable.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None
    names = table.names()
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: duplicate property names")
    return table


def load_property_table(path: Path | None = None) -> PropertyTable:
    """Read and validate a twin property table; None: the one packaged with edged."""
    source = files(__package__ or "edged.twin") / TABLE_RESOURCE if path is None else path
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read twin property table {source}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    return parse_property_table(data, str(source))
