from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgefed.testing.broker import Broker
from tests.serverd.harness import Edge, ServerdThread, serverd_config
from tests.support.paths import IMAGES_DIR, REPO


def _require_triton() -> None:
    if not (REPO / ".venv-triton" / ".edgefed-installed").exists():
        pytest.fail("Triton's environment is missing: run bash serverd/triton/setup_env.sh")
    if not (IMAGES_DIR / "pose_detector" / "manifest.yaml").exists():
        pytest.fail("model images are missing: run packaging/dev/setup.sh")


@pytest.fixture(scope="session")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker(tmp_path_factory.mktemp("broker")) as running:
        yield running


@pytest.fixture(scope="session")
def serverd(
    shared_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerdThread]:
    """serverd with two supervised Tritons serving the pose detector and the echo model."""
    _require_triton()
    state = tmp_path_factory.mktemp("serverd")
    config = serverd_config(state, shared_broker.port, send_accepted=True)
    with ServerdThread(config) as running:
        yield running


@pytest.fixture
def edge(shared_broker: Broker) -> Iterator[Edge]:
    client = Edge(shared_broker.port)
    yield client
    client.close()
