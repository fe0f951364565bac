"""Opening the daemons' SQLite stores (``edgefed.store``): where the file system refuses,
and the WAL they leave behind."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

import pytest

from edgefed.store import open_database
from edgefed.store.checkpoint import RESTART_FRAMES, restart

NOBODY = 65534


def open_as_unprivileged(path: Path) -> str:
    """Open a store at ``path`` in a forked child, as ``nobody`` when the tests run as
    root (who may write into any directory); the error it raised, as text."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's report is the test's)
        os.close(read)
        try:
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            open_database(path, autocheckpoint=1000)
            said = "opened"
        except BaseException as exc:
            said = f"{type(exc).__name__} (from {type(exc.__cause__).__name__}): {exc}"
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    os.waitpid(child, 0)
    return said


def test_a_store_in_a_read_only_directory_says_the_directory_is_not_writable() -> None:
    """SQLite's own words, "unable to open database file", name neither the cause nor
    the place; a read-only mount says the same (its free space can be plenty). The error
    keeps its type (every store translates ``sqlite3.Error`` into its own) and its
    cause."""
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)  # nobody may look in
        directory = Path(top) / "state"
        directory.mkdir(mode=0o555)
        try:
            said = open_as_unprivileged(directory / "jobs.sqlite")
        finally:
            directory.chmod(0o755)
    assert said == (
        "OperationalError (from OperationalError): unable to open database file "
        f"(the directory {directory} is not writable)"
    )


def test_a_store_that_fails_for_another_reason_keeps_sqlites_words_alone(
    tmp_path: Path,
) -> None:
    """A file that is no database, in a writable directory with room: the error guesses
    nothing about the disk."""
    path = tmp_path / "jobs.sqlite"
    path.write_bytes(b"not a database, " * 256)
    with pytest.raises(sqlite3.DatabaseError) as raised:
        open_database(path, autocheckpoint=1000)
    assert str(raised.value) == "file is not a database"


@pytest.mark.parametrize("page_size", [None, 16384])
def test_a_wal_grown_by_a_burst_is_cut_back_when_it_starts_over(
    tmp_path: Path, page_size: int | None
) -> None:
    """Thousands of commits between two checkpoints (serverd's job table takes a burst
    within one maintenance tick) grow the WAL to the auto-checkpoint's size; SQLite reuses
    the file from its start afterwards and never shrinks it on its own: it stayed at
    ~78 MB (measured) where serverd's docs promise ~8 MB."""
    path = tmp_path / "store.sqlite"
    db = open_database(path, autocheckpoint=10 * RESTART_FRAMES, page_size=page_size)
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.execute("CREATE TABLE t (x BLOB)")
    with db.atomic():
        for _ in range(2 * RESTART_FRAMES):
            db.execute("INSERT INTO t VALUES (?)", (os.urandom(page - 200),))
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 1.5 * RESTART_FRAMES * page
    restart(db.conn)
    db.execute("INSERT INTO t VALUES (?)", (b"next",))
    assert wal.stat().st_size <= RESTART_FRAMES * page
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 2 * RESTART_FRAMES + 1
    db.close()
