"""serverd keeps each federated model's newest version on disk and starts from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serverd.federation.config import FederationConfig
from serverd.federation.versions import VersionFiles

MODEL = {
    "name": "digits",
    "features": 64,
    "classes": list("0123456789"),
    "pixels": {"width": 8, "height": 8, "max_value": 16},
}


def _config() -> FederationConfig:
    return FederationConfig.model_validate({"models": [MODEL]})


def test_a_restart_goes_on_from_the_saved_version(tmp_path: Path) -> None:
    files = VersionFiles(tmp_path / "federation")
    (first,) = _config().federations(files)
    assert first.version == 1 and not np.any(first.params[0])
    trained = [np.full((64, 10), 0.5, np.float32), np.arange(10, dtype=np.float32)]
    files.save("digits", 7, trained)
    (again,) = _config().federations(VersionFiles(tmp_path / "federation"))
    assert again.version == 7
    for got, want in zip(again.params, trained, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_damaged_or_misshapen_saved_version_is_ignored(tmp_path: Path) -> None:
    files = VersionFiles(tmp_path / "federation")
    files.save("digits", 4, [np.ones((64, 10), np.float32), np.ones(10, np.float32)])
    params = tmp_path / "federation" / "digits.params"
    params.write_bytes(params.read_bytes()[:-4] + b"\0\0\0\0")
    assert files.load("digits") is None
    (fed,) = _config().federations(files)
    assert fed.version == 1
    files.save("digits", 5, [np.ones((32, 10), np.float32), np.ones(10, np.float32)])
    (fed,) = _config().federations(files)
    assert fed.version == 1 and fed.params[0].shape == (64, 10)
