"""Fixtures of the twin tests: a real broker, real video frames, a running TwinService."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefed.testing.broker import Broker
from edgefed.testing.edgecore import EdgeCoreTwin
from tests.edged.twin.daemon import Daemon, Running, start
from tests.support.paths import VTEST


@pytest.fixture(scope="session")
def frames() -> list[np.ndarray]:
    """The first 40 frames of the real test video (walking pedestrians)."""
    cap = cv2.VideoCapture(str(VTEST))
    out = []
    for _ in range(40):
        ok, frame = cap.read()
        assert ok, f"cannot read {VTEST}"
        out.append(frame)
    cap.release()
    return out


@pytest.fixture
def device_id() -> str:
    return "demo/edge-01"


@pytest.fixture
def setup(broker: Broker, tmp_path: Path, device_id: str) -> Iterator[tuple[Running, Daemon]]:
    edgecore = EdgeCoreTwin(broker, device_id)
    daemon = Daemon(tmp_path / "state" / "runtime.json")
    running = start(broker, daemon, device_id, edgecore)
    yield running, daemon
    running.stop()
    edgecore.close()
