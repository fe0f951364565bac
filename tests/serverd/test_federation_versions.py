"""serverd keeps each federated model's newest version on disk and starts from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefed.federation_wire import encode_params, sha256_hex
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
    params = tmp_path / "federation" / "digits.params.4"
    params.write_bytes(params.read_bytes()[:-4] + b"\0\0\0\0")
    assert files.load("digits") is None
    (fed,) = _config().federations(files)
    assert fed.version == 1
    files.save("digits", 5, [np.ones((32, 10), np.float32), np.ones(10, np.float32)])
    (fed,) = _config().federations(files)
    assert fed.version == 1 and fed.params[0].shape == (64, 10)


def _head(value: float) -> list[np.ndarray]:
    return [np.full((64, 10), value, np.float32), np.full(10, value, np.float32)]


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_save_cut_short_before_its_json_leaves_the_last_complete_version(
    tmp_path: Path,
) -> None:
    """The disk fills between the two writes of a save: before, the params of v3 had
    replaced those of v2 and the JSON still said v2, so a restart ignored both (a sha256
    mismatch) and went on from version 1, losing v2 as well. A directory standing where
    the JSON's temp file goes refuses that write for root too, as a full disk does."""
    directory = tmp_path / "federation"
    files = VersionFiles(directory)
    files.save("digits", 2, _head(0.2))
    (directory / "digits.json.tmp").mkdir()
    with pytest.raises(OSError):
        files.save("digits", 3, _head(0.3))
    (fed,) = _config().federations(VersionFiles(directory))  # serverd restarted
    assert fed.version == 2
    np.testing.assert_array_equal(fed.params[0], _head(0.2)[0])
    assert _files(directory) == ["digits.json", "digits.json.tmp", "digits.params.2"]


def test_saves_that_keep_failing_leave_no_files_behind_and_the_next_one_tidies_up(
    tmp_path: Path,
) -> None:
    """A version the disk refuses is saved again on every tick: neither a temp file nor
    an orphaned params file per attempt may pile up (a directory in the way refuses the
    JSON's temp file, or the rename of a params file already written), and the save that
    succeeds leaves one JSON and the params it names, a temp file a crash left included."""
    directory = tmp_path / "federation"
    files = VersionFiles(directory)
    files.save("digits", 2, _head(0.2))
    (directory / "digits.json.tmp").mkdir()
    for version in (3, 3, 4, 5):
        with pytest.raises(OSError):
            files.save("digits", version, _head(version / 10))
    (directory / "digits.json.tmp").rmdir()
    (directory / "digits.params.9").mkdir()
    with pytest.raises(OSError):
        files.save("digits", 9, _head(0.9))
    assert _files(directory) == ["digits.json", "digits.params.2", "digits.params.9"]
    (directory / "digits.params.9").rmdir()
    (directory / "digits.params.5.tmp").write_bytes(b"left by a kill -9")
    files.save("digits", 6, _head(0.6))
    assert _files(directory) == ["digits.json", "digits.params.6"]
    saved = VersionFiles(directory).load("digits")
    assert saved is not None and saved[0] == 6


def _save_as_an_earlier_release(directory: Path, model: str, version: int, value: float) -> None:
    """What releases before version-named params files wrote: ``<model>.params`` beside a
    JSON that does not name it."""
    directory.mkdir(parents=True, exist_ok=True)
    data = encode_params(_head(value))
    (directory / f"{model}.params").write_bytes(data)
    meta = {"version": version, "sha256": sha256_hex(data)}
    (directory / f"{model}.json").write_text(json.dumps(meta))


def test_the_version_an_earlier_release_saved_is_loaded_after_an_upgrade(
    tmp_path: Path,
) -> None:
    """An upgraded serverd goes on from the version the release before it saved, and its
    first save removes the old layout's params file."""
    directory = tmp_path / "federation"
    _save_as_an_earlier_release(directory, "digits", 7, 0.7)
    (fed,) = _config().federations(VersionFiles(directory))
    assert fed.version == 7
    np.testing.assert_array_equal(fed.params[1], _head(0.7)[1])
    VersionFiles(directory).save("digits", 8, _head(0.8))
    assert _files(directory) == ["digits.json", "digits.params.8"]


def test_models_whose_names_share_a_prefix_keep_each_others_files(tmp_path: Path) -> None:
    """Model names may hold dots: saving ``digits`` removes its own older files only, not
    those of ``digits.v2`` (saved by an earlier release) or of ``digits.params``."""
    directory = tmp_path / "federation"
    files = VersionFiles(directory)
    _save_as_an_earlier_release(directory, "digits.v2", 5, 0.5)
    files.save("digits.params", 3, _head(0.3))
    for version in (2, 3):
        files.save("digits", version, _head(version / 10))
    for model, version in (("digits.v2", 5), ("digits.params", 3), ("digits", 3)):
        saved = files.load(model)
        assert saved is not None and saved[0] == version
