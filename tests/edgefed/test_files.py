"""Files replaced whole (``edgefed.files``): the runtime settings, the twin's applied
deltas, serverd's clock as an edge learnt it, serverd's federated versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefed.files import write_durably


def test_a_file_is_replaced_whole_and_no_temp_file_stays(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    write_durably(path, b'{"a": 1}')
    write_durably(path, b'{"a": 2}')
    assert path.read_bytes() == b'{"a": 2}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runtime.json"]


def test_a_write_that_fails_leaves_the_target_as_it_was_and_no_temp_file(
    tmp_path: Path,
) -> None:
    """The rename fails for real (the target is a directory with something in it, as a
    full disk or a read-only mount fails a step): the error reaches the caller, the
    target keeps its content and the temp file is gone, so none piles up."""
    path = tmp_path / "state.json"
    path.mkdir()
    (path / "kept").write_bytes(b"as it was")
    with pytest.raises(OSError):
        write_durably(path, b"new")
    assert (path / "kept").read_bytes() == b"as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
