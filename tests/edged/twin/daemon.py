"""The parts of edged the twin drives, for TwinService tests.

``Daemon`` holds a real three-frame gate and records what the other setters were given;
its ``runtime()`` is a real ``RuntimeConfig`` that starts from the persisted state, as
edged does. ``start`` runs a TwinService on a real broker next to an EdgeCore stand-in.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.motion import MotionConfig, ThreeFrameGate
from edged.settings import RuntimeConfig, RuntimeSettings
from edged.twin.properties import load_property_table
from edged.twin.service import TwinOutcome, TwinService
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.edgecore import EdgeCoreTwin, wait_until

MODELS = {"person", "pose", "face"}
DEFAULTS: dict[str, Any] = {
    "motion_threshold": 25,
    "motion_min_pixels": 5,
    "target_fps": None,
    "enabled_models": ["person", "pose"],
    "offload_policy": "hard_example",
    "log_level": "INFO",
}


def gated(gate: ThreeFrameGate, frames: list[np.ndarray]) -> int:
    gate.reset()
    return sum(gate.update(f).motion for f in frames)


@dataclass
class Daemon:
    """The parts of edged the twin drives: a real gate and what the other setters set."""

    state: Path
    gate: ThreeFrameGate = field(default_factory=lambda: ThreeFrameGate(MotionConfig()))
    applied: dict[str, Any] = field(default_factory=dict)
    fail_fps: float | None = None
    # while set, the min_pixels setter says so on ``held`` and waits for ``hold`` to clear
    # (a setter that takes a while: a camera reconfiguring)
    hold: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)

    def runtime(self) -> RuntimeConfig:
        initial = RuntimeSettings.model_validate(
            DEFAULTS | RuntimeConfig.load_persisted(self.state)
        )
        self.gate.reconfigure(
            threshold=initial.motion_threshold, min_pixels=initial.motion_min_pixels
        )
        return RuntimeConfig(
            initial,
            {
                "motion_threshold": self._set_threshold,
                "motion_min_pixels": self._set_min_pixels,
                "target_fps": self._set_fps,
                "enabled_models": lambda v: self.applied.__setitem__("enabled_models", v),
                "offload_policy": lambda v: self.applied.__setitem__("offload_policy", v),
                "log_level": lambda v: self.applied.__setitem__("log_level", v),
                "federated_training": lambda v: self.applied.__setitem__("federated_training", v),
            },
            known_models=lambda: MODELS,
            state_path=self.state,
        )

    def _set_threshold(self, value: int) -> None:
        self.gate.reconfigure(threshold=value)

    def _set_min_pixels(self, value: int) -> None:
        if self.hold.is_set():
            self.held.set()
            wait_until(lambda: not self.hold.is_set())
        self.gate.reconfigure(min_pixels=value)

    def _set_fps(self, value: float | None) -> None:
        if value is not None and value == self.fail_fps:
            raise RuntimeError("camera refused the rate")
        self.applied["target_fps"] = value


@dataclass
class Running:
    twin: TwinService
    runtime: RuntimeConfig
    client: MqttClient
    edgecore: EdgeCoreTwin
    outcomes: list[TwinOutcome]

    def stop(self) -> None:
        self.twin.stop()
        self.client.stop()


def start(
    broker: Broker,
    daemon: Daemon,
    device_id: str,
    edgecore: EdgeCoreTwin,
    seen_path: Path | None = None,
) -> Running:
    client = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="edged-twin"))
    runtime = daemon.runtime()
    outcomes: list[TwinOutcome] = []
    twin = TwinService(
        client, device_id, runtime, load_property_table(), outcomes.append, seen_path=seen_path
    )
    twin.start()
    client.start()
    wait_until(lambda: edgecore.gets >= 1)
    return Running(twin, runtime, client, edgecore, outcomes)
