"""Runtime-adjustable settings shared by the device twin and ``PUT /api/v1/config``.

A change is validated as a whole (type, range, known names) before anything is
applied; it is then applied setting by setting and rolled back to the previous
values if any setter fails. The values last applied are persisted to a small JSON
state file so they survive a restart until the next change (file < env < twin).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edged.offload.policy import OffloadPolicyName
from edgefed.config import LogLevel
from edgefed.errors import ConfigError
from edgefed.files import write_durably

log = logging.getLogger(__name__)

# Bounds of the runtime settings, the same for the device twin and the HTTP API (and
# edged/twin/properties.yaml, which a test holds equal): a value that would stop
# processing (1e-300 frames/s) or break every twin report (3.2e306) is refused.
MIN_FPS, MAX_FPS = 0.01, 1000.0
MAX_PIXELS = 100_000_000  # above any camera's frame (8K is 33 Mpx)
MAX_MODELS = 64
MAX_LIST_ITEMS = 1024


class RuntimeSettings(BaseModel):
    """Every setting that can change without a restart (twin property names)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    motion_threshold: int = Field(ge=1, le=255, description="Pixel difference threshold")
    motion_min_pixels: int = Field(
        ge=0, le=MAX_PIXELS, description="Changed pixels that count as motion"
    )
    target_fps: float | None = Field(
        ge=MIN_FPS, le=MAX_FPS, description="Frames/s taken per camera (None: all)"
    )
    enabled_models: list[str] = Field(
        max_length=MAX_LIST_ITEMS,
        description=f"Models that run (must be loaded; a repeat counts once; at most {MAX_MODELS})",
    )
    offload_policy: OffloadPolicyName = Field(description="When work leaves for serverd")
    log_level: LogLevel = Field(description="Daemon log level")
    federated_training: bool = Field(
        default=True, description="Whether this device may train in federation rounds"
    )

    @field_validator("enabled_models", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """A comma-separated string or a list; repeats dropped (first one kept), at most
        ``MAX_MODELS`` distinct names out of at most ``MAX_LIST_ITEMS`` given."""
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list | tuple):
            if len(value) > MAX_LIST_ITEMS:
                raise ValueError(f"at most {MAX_LIST_ITEMS} items, got {len(value)}")
            return list(dict.fromkeys(value)) if all(isinstance(v, str) for v in value) else value
        return value

    @field_validator("enabled_models")
    @classmethod
    def _few(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_MODELS:
            raise ValueError(f"at most {MAX_MODELS} distinct models, got {len(value)}")
        return value


Setter = Callable[[Any], None]


class RuntimeConfig:
    """Holds the current settings and the setters that push them into the daemon."""

    def __init__(
        self,
        initial: RuntimeSettings,
        setters: Mapping[str, Setter],
        known_models: Callable[[], Collection[str]],
        state_path: Path | None = None,
    ) -> None:
        missing = set(RuntimeSettings.model_fields) - set(setters)
        if missing:
            raise ValueError(f"no setter for {sorted(missing)}")
        self._settings = initial
        self._setters = dict(setters)
        self._known_models = known_models
        self._state_path = state_path
        self._lock = threading.Lock()
        # one change at a time, from validation to the saved file (the twin, the API and
        # DMI each apply from a thread of their own)
        self._applying = threading.Lock()
        self._listeners: list[Callable[[RuntimeSettings], None]] = []

    def current(self) -> RuntimeSettings:
        with self._lock:
            return self._settings.model_copy()

    def on_change(self, listener: Callable[[RuntimeSettings], None]) -> None:
        self._listeners.append(listener)

    def validate(self, changes: Mapping[str, Any]) -> RuntimeSettings:
        """The settings after ``changes``, or ConfigError listing every bad property."""
        unknown = sorted(set(changes) - set(RuntimeSettings.model_fields))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        data = self.current().model_dump() | dict(changes)
        try:
            new = RuntimeSettings.model_validate(data)
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(reasons) from None
        known = set(self._known_models())
        bad = sorted(set(new.enabled_models) - known)
        if bad:
            raise ConfigError(
                f"enabled_models: unknown or unloaded model(s) {', '.join(bad)} "
                f"(loaded: {', '.join(sorted(known))})"
            )
        return new

    def apply(self, changes: Mapping[str, Any]) -> RuntimeSettings:
        """Validate and apply ``changes``; roll back every setting if one setter fails."""
        with self._applying:
            new, changed = self._apply(changes)
        self._announce(new, changed)
        return new

    def model_added(self, name: str, enabled: bool) -> None:
        """Model ``name`` began to serve while running (a federated model's first
        version): from now on a known model, and among ``enabled_models`` (saved with
        them, so the next start keeps it on) if ``enabled``."""
        with self._applying:
            current = self._settings.enabled_models
            if not enabled or name in current:
                return
            new, changed = self._apply({"enabled_models": [*current, name]})
        self._announce(new, changed)

    def _apply(self, changes: Mapping[str, Any]) -> tuple[RuntimeSettings, list[str]]:
        """The settings after ``changes``, in effect and saved; the names that changed."""
        old = self._settings
        new = self.validate(changes)
        changed = [k for k in RuntimeSettings.model_fields if getattr(new, k) != getattr(old, k)]
        done: list[str] = []
        try:
            for key in changed:
                self._setters[key](getattr(new, key))
                done.append(key)
        except Exception as exc:
            for key in reversed(done):
                try:
                    self._setters[key](getattr(old, key))
                except Exception:
                    log.exception("rollback of %s failed", key)
            raise ConfigError(f"applying {changed[len(done)]} failed, rolled back: {exc}") from exc
        with self._lock:
            self._settings = new
        if changed:
            log.info("runtime settings changed: %s", {k: getattr(new, k) for k in changed})
            self._persist(new)
        return new, changed

    def _announce(self, new: RuntimeSettings, changed: list[str]) -> None:
        """Tell the listeners (the twin's report, DMI) of a change, after it is applied and
        outside the lock: a listener takes locks of its own, and their holders apply
        changes (the twin applies a delta under its lock)."""
        if changed:
            for listener in self._listeners:
                listener(new)

    def _persist(self, settings: RuntimeSettings) -> None:
        if self._state_path is None:
            return
        try:
            self._state_path.parent.mkdir(parents=True, exist_ok=True)
            write_durably(self._state_path, json.dumps(settings.model_dump()).encode())
        except OSError as exc:  # a full disk or read-only state dir: the change stands
            log.warning(
                "runtime settings are in effect but not saved to %s (%s): "
                "a restart goes back to the last saved ones",
                self._state_path,
                exc,
            )

    @staticmethod
    def load_persisted(path: Path | None) -> dict[str, Any]:
        """Values persisted by an earlier run (empty if none or unreadable)."""
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable runtime state %s: %s", path, exc)
            return {}
        return data if isinstance(data, dict) else {}
