from __future__ import annotations

import json
import threading
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
        known_models=lambda: {"person", "face", "scene"},
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


def test_repeated_model_names_are_kept_once_and_huge_lists_refused(tmp_path: Path) -> None:
    """On main 100,000 copies of one model name were accepted and persisted."""
    rc, _ = make(tmp_path)
    new = rc.apply({"enabled_models": ["scene", "person", "scene", "person"] * 250})
    assert new.enabled_models == ["scene", "person"]
    assert json.loads((tmp_path / "runtime.json").read_text())["enabled_models"] == [
        "scene",
        "person",
    ]
    with pytest.raises(ConfigError, match="at most 1024 items"):
        rc.apply({"enabled_models": ["person"] * 100_000})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (1e-300, "greater than or equal to 0.01"),
        (3.2e306, "less than or equal to 1000"),
        (float("inf"), "finite number"),
        (float("nan"), "finite number"),
    ],
)
def test_target_fps_that_would_stop_processing_or_break_reports_is_refused(
    tmp_path: Path, value: float, reason: str
) -> None:
    rc, applied = make(tmp_path)
    with pytest.raises(ConfigError, match=reason):
        rc.apply({"target_fps": value})
    assert applied == {} and rc.current().target_fps is None


def test_a_state_dir_that_cannot_be_written_leaves_the_change_in_effect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk or an unusable state dir: the change still applies and listeners hear
    of it (the twin reports it); the log says it will not survive a restart."""
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state dir should be")
    heard: list[RuntimeSettings] = []
    applied: dict[str, Any] = {}
    rc = RuntimeConfig(
        INITIAL,
        {k: (lambda v, k=k: applied.__setitem__(k, v)) for k in RuntimeSettings.model_fields},
        known_models=lambda: {"person", "face"},
        state_path=blocker / "runtime.json",
    )
    rc.on_change(heard.append)
    new = rc.apply({"motion_threshold": 40})
    assert applied == {"motion_threshold": 40} and rc.current() == new
    assert [s.motion_threshold for s in heard] == [40]
    assert "not saved to" in caplog.text and "a restart goes back" in caplog.text


def test_changes_from_two_threads_both_stand(tmp_path: Path) -> None:
    """The twin, the API and DMI apply from threads of their own. A change made while
    another is still in its setters waits for it and builds on it; before, it built on
    what it read first, and whichever stored last erased the other's value from the
    settings, the saved file and the twin's report, though that value was in effect."""
    in_setter, release = threading.Event(), threading.Event()

    def slow(value: Any) -> None:  # a setter that takes a while (a camera reconfiguring)
        in_setter.set()
        release.wait(10)

    setters: dict[str, Any] = {k: (lambda v: None) for k in RuntimeSettings.model_fields}
    rc = RuntimeConfig(
        INITIAL,
        setters | {"target_fps": slow},
        known_models=lambda: {"person", "face"},
        state_path=tmp_path / "runtime.json",
    )
    first = threading.Thread(target=rc.apply, args=({"target_fps": 5},))
    first.start()
    assert in_setter.wait(10)
    second = threading.Thread(target=rc.apply, args=({"motion_threshold": 40},))
    second.start()
    second.join(0.5)  # before: done by now, on top of the settings without target_fps
    release.set()
    first.join(10)
    second.join(10)
    assert (rc.current().target_fps, rc.current().motion_threshold) == (5, 40)
    saved = json.loads((tmp_path / "runtime.json").read_text())
    assert (saved["target_fps"], saved["motion_threshold"]) == (5, 40)


def test_a_model_that_starts_while_running_becomes_known_and_enabled(tmp_path: Path) -> None:
    loaded = {"person", "face"}
    applied: dict[str, Any] = {}
    rc = RuntimeConfig(
        INITIAL,
        {k: (lambda v, k=k: applied.__setitem__(k, v)) for k in RuntimeSettings.model_fields},
        known_models=lambda: loaded,
        state_path=tmp_path / "runtime.json",
    )
    with pytest.raises(ConfigError, match="unknown or unloaded model"):
        rc.apply({"enabled_models": ["person", "people"]})
    loaded.add("people")  # its first version arrived and the pipeline serves it
    rc.model_added("people", enabled=True)
    assert rc.current().enabled_models == ["person", "face", "people"]
    saved = json.loads((tmp_path / "runtime.json").read_text())
    assert saved["enabled_models"] == ["person", "face", "people"]
    loaded.add("cars")
    rc.model_added("cars", enabled=False)  # its config says: loaded, not run
    assert "cars" not in rc.current().enabled_models
    rc.apply({"enabled_models": ["cars"]})
    assert applied["enabled_models"] == ["cars"]
