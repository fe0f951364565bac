"""Fixtures every test package shares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefed.testing.broker import Broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free port of 127.0.0.1, stopped after the test."""
    with Broker(tmp_path / "broker") as running:
        yield running
