"""Real model images (firmware-images/build), real drivers and real stills for these tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers import registry
from edgefed.driver import Driver
from edgefed.images.verify import read_manifest
from edgefed.models.runner import ModelRunner, open_runner
from tests.drivers.model_files import SETUP_HINT, built_image
from tests.support.paths import OPENCV_DATA, TRUST_DIR

DEV_KEY = TRUST_DIR / "dev-signing.pub"


def read_still(name: str) -> np.ndarray:
    path = OPENCV_DATA / name
    image = cv2.imread(str(path)) if path.is_file() else None
    if image is None:
        pytest.fail(f"test still {path} is missing: {SETUP_HINT}", pytrace=False)
    return image


@pytest.fixture(scope="session")
def still() -> Callable[[str], np.ndarray]:
    cache: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = read_still(name)
        return cache[name].copy()

    return get


@pytest.fixture(scope="session")
def drivers() -> Iterator[dict[str, Driver]]:
    types = ("onnxruntime", "litert")
    made = {t: registry.create(registry.parse_config({"type": t})) for t in types}
    yield made
    for driver in made.values():
        driver.close()


@pytest.fixture(scope="session")
def runner(drivers: dict[str, Driver]) -> Iterator[Callable[[str], ModelRunner]]:
    """Opens a built image once per session, verified with the development key."""
    opened: dict[str, ModelRunner] = {}

    def get(name: str) -> ModelRunner:
        if name not in opened:
            path = built_image(name)
            if not DEV_KEY.is_file():
                pytest.fail(f"signing key {DEV_KEY} is missing: {SETUP_HINT}", pytrace=False)
            driver = drivers[read_manifest(path).driver]
            opened[name] = open_runner(name, path, driver, None, [DEV_KEY])
        return opened[name]

    yield get
    for r in opened.values():
        r.close()


@pytest.fixture
def image_copy(tmp_path: Path) -> Callable[[str], Path]:
    """A writable copy of a built image (to tamper with)."""

    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(built_image(name), dest)
        return dest

    return copy
