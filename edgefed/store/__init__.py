"""SQLite stores of both daemons (edged's outbox, serverd's job table): one way to open
them and one migration runner.

``open_database`` opens a file in WAL mode with the settings each store has measured it
needs (see the callers' comments); the WAL checkpoints live in ``edgefed.store.checkpoint``.
``migrate`` applies named, ordered migrations, each once in its own transaction, and records
them in ``_migrations``; a database holding a migration this code does not know was written
by a newer release and is refused rather than guessed at. Append new migrations to a
store's list; never edit or reorder applied ones.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import sqlite_utils

from edgefed.clock import now_ms
from edgefed.errors import EdgeFedError
from edgefed.store.checkpoint import RESTART_FRAMES

Migration = Callable[[sqlite_utils.Database], None]
Migrations = Sequence[tuple[str, Migration]]


def open_database(
    path: Path,
    *,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    autocheckpoint: int,
    page_size: int | None = None,
    shared: bool = False,
    busy_timeout_s: float = 5.0,
    pragmas: Sequence[str] = (),
) -> sqlite_utils.Database:
    """``path`` (its directory made if missing) in WAL mode, in autocommit (a statement
    commits alone; ``db.atomic()`` groups several), rows as ``sqlite3.Row``.

    ``autocheckpoint``: WAL pages at which a commit checkpoints by itself (a bound for when
    the store's own checkpoints cannot keep up); a WAL grown past the smaller of that and
    ``RESTART_FRAMES`` pages is cut back to it when it is next started over; ``page_size``
    applies to a new file only; ``shared``: the connection may be used from several
    threads (under the caller's lock).
    Raises ``sqlite3.Error`` or ``OSError``; the store translates them into its own error.
    A ``sqlite3.Error`` says why when the cause is the file system's: SQLite's own words
    for a read-only mount or a full disk are "unable to open database file" and "disk I/O
    error" (the WAL's files cannot be created).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            str(path), check_same_thread=not shared, timeout=busy_timeout_s, isolation_level=None
        )
        conn.row_factory = sqlite3.Row
        if page_size is not None:
            conn.execute(f"PRAGMA page_size={int(page_size)}")
        db = sqlite_utils.Database(conn, execute_plugins=False)
        db.enable_wal()
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint)}")
        # SQLite reuses the WAL file from its start after a checkpoint and never shrinks it:
        # one burst (thousands of jobs between two checkpoints) would leave it at the
        # auto-checkpoint's size for good. Past this limit a reset truncates it.
        kept = min(int(autocheckpoint), RESTART_FRAMES)
        db.execute(f"PRAGMA journal_size_limit={kept * _page_size(conn)}")
        for pragma in pragmas:
            db.execute(f"PRAGMA {pragma}")
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        hint = _storage_hint(path)
        if not hint:
            raise
        hinted = type(exc)(f"{exc} ({hint})")
        for attr in ("sqlite_errorcode", "sqlite_errorname"):
            if hasattr(exc, attr):
                setattr(hinted, attr, getattr(exc, attr))
        raise hinted from exc
    return db


def _page_size(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA page_size").fetchone()[0])


LOW_SPACE = 1 << 20
"""Free bytes under which a failing open blames the file system's space."""


def _storage_hint(path: Path) -> str:
    """Why the file system may refuse ``path`` and its WAL files: its directory or the
    file not writable (a read-only mount, permissions), or under ``LOW_SPACE`` free
    (``shutil.disk_usage``: what an unprivileged process may use); "" when neither, or
    when the file system cannot even be asked (the caller's error says enough then)."""
    hints = []
    try:
        if not os.access(path.parent, os.W_OK):
            hints.append(f"the directory {path.parent} is not writable")
        elif path.exists() and not os.access(path, os.W_OK):
            hints.append(f"the file {path} is not writable")
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return "; ".join(hints)
    if free < LOW_SPACE:
        hints.append(f"the file system has {free} bytes free")
    return "; ".join(hints)


def migrate(
    db: sqlite_utils.Database,
    migrations: Migrations,
    error: type[EdgeFedError],
    what: str,
) -> list[str]:
    """Apply the missing ``migrations`` in order; returns the names applied now. A database
    migrated further than this code knows raises ``error`` naming ``what`` it is."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied INTEGER NOT NULL)"
    )
    done = {row["name"] for row in db.query("SELECT name FROM _migrations")}
    unknown = sorted(done - {name for name, _ in migrations})
    if unknown:
        raise error(f"{what} was migrated by a newer release (unknown migrations {unknown})")
    applied = []
    for name, migration in migrations:
        if name in done:
            continue
        with db.atomic():
            migration(db)
            db.execute("INSERT INTO _migrations (name, applied) VALUES (?, ?)", (name, now_ms()))
        applied.append(name)
    return applied
