from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edged.settings import RuntimeConfig, RuntimeSettings
from edgefed.errors import ConfigError

INITIAL = RuntimeSettings(
    motion_threshold=25,
    motion_min_pixels=5,
    target_fps=None,
    enabled_models=["person", "face"],
    offload_policy="never",
    log_level="INFO",
)


def make(tmp_path: Path, fail_on: str | None = None) -> tuple[RuntimeConfig, dict[str, Any]]:
    applied: dict[str, Any] = {}

    def setter(key: str) -> Any:
        def set_value(value: Any) -> None:
            if key == fail_on and value != getattr(INITIAL, key):
                raise RuntimeError(f"{key} refused")
            applied[key] = value

        return set_value

    rc = RuntimeConfig(
        INITIAL,
        {k: setter(k) for k in RuntimeSettings.model_fields},
        known_models={"person", "face", "scene"},
        state_path=tmp_path / "runtime.json",
    )
    return rc, applied


def test_apply_pushes_only_changed_values_and_persists(tmp_path: Path) -> None:
    rc, applied = make(tmp_path)
    new = rc.apply({"motion_threshold": 40, "enabled_models": "person, scene"})
    assert applied == {"motion_threshold": 40, "enabled_models": ["person", "scene"]}
    assert new.enabled_models == ["person", "scene"]
    saved = json.loads((tmp_path / "runtime.json").read_text())
    assert saved["motion_threshold"] == 40
    assert RuntimeConfig.load_persisted(tmp_path / "runtime.json")["enabled_models"] == [
        "person",
        "scene",
    ]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"motion_threshold": 0}, "motion_threshold"),
        ({"motion_threshold": "high"}, "motion_threshold"),
        ({"target_fps": -1}, "target_fps"),
        ({"offload_policy": "sometimes"}, "offload_policy"),
        ({"enabled_models": "person,ghost"}, "ghost"),
        ({"colour": "blue"}, "unknown setting"),
    ],
)
def test_invalid_changes_are_refused_and_nothing_changes(
    tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    rc, applied = make(tmp_path)
    with pytest.raises(ConfigError, match=reason):
        rc.apply(changes)
    assert applied == {}
    assert rc.current() == INITIAL
    assert not (tmp_path / "runtime.json").exists()


def test_a_failing_setter_rolls_back_the_ones_already_applied(tmp_path: Path) -> None:
    rc, applied = make(tmp_path, fail_on="target_fps")
    with pytest.raises(ConfigError, match="rolled back"):
        rc.apply({"motion_threshold": 60, "target_fps": 5.0})
    assert applied["motion_threshold"] == 25  # re-applied old value
    assert rc.current() == INITIAL


def test_unreadable_state_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    path.write_text("{not json")
    assert RuntimeConfig.load_persisted(path) == {}
