"""Fixtures every test package shares."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefed.dmi import gen
from edgefed.testing.broker import Broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free port of 127.0.0.1, stopped after the test."""
    with Broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture(scope="session")
def dmi_stubs() -> None:
    """The KubeEdge DMI stubs, generated from edgefed/dmi/api.proto first if missing."""
    gen.generate()
