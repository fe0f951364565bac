"""The twin property table: it loads, it matches RuntimeSettings, wire values convert."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from edged.settings import RuntimeConfig, RuntimeSettings
from edged.twin.properties import load_property_table, parse_property_table
from edgefed.errors import ConfigError

TABLE = load_property_table()
MODELS = {"person", "pose"}


def runtime() -> RuntimeConfig:
    initial = RuntimeSettings(
        motion_threshold=25,
        motion_min_pixels=5,
        target_fps=None,
        enabled_models=["person"],
        offload_policy="never",
        log_level="INFO",
    )
    return RuntimeConfig(
        initial, {k: lambda v: None for k in RuntimeSettings.model_fields}, lambda: MODELS
    )


def test_writable_properties_are_exactly_the_runtime_settings() -> None:
    assert set(TABLE.writable()) == set(RuntimeSettings.model_fields)
    assert set(TABLE.readonly()).isdisjoint(RuntimeSettings.model_fields)


@pytest.mark.parametrize("name", TABLE.writable())
def test_table_bounds_agree_with_runtime_config(name: str) -> None:
    """A value the table accepts, RuntimeConfig accepts; just past a bound both refuse."""
    spec = TABLE.spec(name)
    rc = runtime()
    step = 1 if spec.type == "INT" else 1e-6
    if spec.minimum is not None:
        low = spec.minimum + (step if spec.exclusive_minimum else 0)
        value = int(low) if spec.type == "INT" else low
        rc.validate({name: TABLE.parse(name, str(value))})
        below = spec.minimum if spec.exclusive_minimum else spec.minimum - step
        below_wire = str(int(below)) if spec.type == "INT" else repr(below)
        with pytest.raises(ConfigError, match="out of range"):
            TABLE.parse(name, below_wire)
        with pytest.raises(ConfigError):
            rc.validate({name: int(below) if spec.type == "INT" else below})
    if spec.maximum is not None:
        rc.validate({name: TABLE.parse(name, str(int(spec.maximum)))})
        above = spec.maximum + step
        with pytest.raises(ConfigError, match="out of range"):
            TABLE.parse(name, str(int(above)) if spec.type == "INT" else repr(above))
        with pytest.raises(ConfigError):
            rc.validate({name: int(above) if spec.type == "INT" else above})
    for allowed in spec.allowed or []:
        rc.validate({name: TABLE.parse(name, allowed)})
    if spec.allowed:
        with pytest.raises(ConfigError):
            rc.validate({name: "not-" + spec.allowed[0]})


@pytest.mark.parametrize(
    ("name", "wire", "value"),
    [
        ("motion_threshold", "40", 40),
        ("motion_min_pixels", "0", 0),
        ("target_fps", "2.50", 2.5),
        ("target_fps", "1e1", 10.0),
        ("enabled_models", "person,pose", "person,pose"),
        ("offload_policy", "priority", "priority"),
    ],
)
def test_parse(name: str, wire: str, value: Any) -> None:
    assert TABLE.parse(name, wire) == value


@pytest.mark.parametrize(
    ("name", "wire", "reason"),
    [
        ("motion_threshold", "4O", "not an integer"),
        ("motion_threshold", " 40", "not an integer"),
        ("motion_threshold", "1_0", "not an integer"),
        ("motion_threshold", "40\n", "not an integer"),  # Python's $ took it; EdgeCore's not
        ("target_fps", "2.5\n", "not a finite number"),
        ("target_fps", "nan", "not a finite number"),
        ("target_fps", "inf", "not a finite number"),
        ("target_fps", "1e999", "not a finite number"),
        ("offload_policy", "Always", "not one of"),
        ("outbox_depth", "3", "read-only"),
        ("nope", "3", "unknown property"),
    ],
)
def test_parse_refuses(name: str, wire: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        TABLE.parse(name, wire)


def test_format() -> None:
    assert TABLE.format("motion_threshold", 40) == "40"
    assert TABLE.format("target_fps", 2.5) == "2.5"
    assert TABLE.format("target_fps", None) is None
    assert TABLE.format("enabled_models", ["a", "b"]) == "a,b"
    assert TABLE.format("gated_ratio", 0.25) == "0.25"
    assert math.isclose(float(TABLE.format("fps", 12.5) or "0"), 12.5)
    assert TABLE.wire_type("target_fps") == "float"
    assert TABLE.wire_type("enabled_models") == "string"


def test_bad_tables_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_property_table(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("properties: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_property_table(tmp_path / "bad.yaml")
    entry = {"name": "a", "type": "INT", "access_mode": "ReadWrite", "description": "x"}
    with pytest.raises(ConfigError, match="duplicate"):
        parse_property_table({"schema_version": 1, "properties": [entry, entry]})
    with pytest.raises(ConfigError, match="type"):
        parse_property_table({"schema_version": 1, "properties": [entry | {"type": "DOUBLE"}]})
