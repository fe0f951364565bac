"""The edge's bounded on-disk sample store: labelled feature vectors for local training.

Samples never leave the device. Each is a model's feature vector (float32, what the
frozen part of the model computes; the trainer sees only these) with a class label and
its source: ``operator`` (posted through the API) or ``server`` (a hard example serverd
answered, labelled with the server's result). The store holds at most ``max_samples``;
adding past the bound drops the oldest samples and counts them (``dropped_oldest``,
kept in the database so the count survives a restart).

Every ``holdout_every``-th sample (by id) is held back: it is never trained on and is the
local slice a new global version is evaluated on before it is adopted.

A bad sample is a ``FederationError``; a store that fails (a full disk, a corrupt file:
it opens and migrates, then a read or write fails) is a ``SampleStoreError``, its subclass,
so a caller can tell "this sample is wrong" from "try again later". Its failures are
counted (``write_failures``, ``read_failures``) and logged as one outage each, not a line
per call.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import sqlite_utils

from edgefed.clock import Clock, now_ms
from edgefed.counters import Counters
from edgefed.errors import FederationError
from edgefed.outage import Outage
from edgefed.store import migrate, open_database

Source = Literal["operator", "server"]
SOURCES: tuple[Source, ...] = ("operator", "server")
MAX_FEATURES = 65536

log = logging.getLogger("edged.federation")


class SampleStoreError(FederationError):
    """The store failed to read or write (a full disk, a corrupt file), not the sample:
    the same call may work later (the API answers 503, not 400)."""


def _create(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE samples (id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, "
        "source TEXT NOT NULL, label INTEGER NOT NULL, dim INTEGER NOT NULL, "
        "features BLOB NOT NULL, ref TEXT, created INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX samples_model ON samples (model, id)")
    db.execute("CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO totals VALUES ('dropped_oldest', 0)")


MIGRATIONS = [("0001_samples", _create)]


@dataclass
class SampleCounters(Counters):
    added: int = 0
    refused: int = 0
    dropped_oldest: int = 0
    write_failures: int = 0  # good samples the store failed to write (a full disk)
    read_failures: int = 0  # reads the store failed (a corrupt file): counts, training sets


class SampleStore:
    """Samples in SQLite (WAL), bounded; safe to call from several threads."""

    def __init__(
        self,
        path: Path,
        max_samples: int = 20_000,
        holdout_every: int = 5,
        clock: Clock = now_ms,
    ) -> None:
        if max_samples < 1 or holdout_every < 2:
            raise FederationError("max_samples must be >= 1 and holdout_every >= 2")
        self.max_samples = max_samples
        self.holdout_every = holdout_every
        self._clock = clock
        self._lock = threading.Lock()
        self._name = f"sample store {path}"
        self._writes = Outage(log, f"{self._name}: storing a sample")
        self._reads = Outage(log, f"{self._name}: reading samples")
        try:
            self._db = open_database(path, autocheckpoint=1000, shared=True)
            migrate(self._db, MIGRATIONS, FederationError, self._name)
            dropped = self._total("dropped_oldest")
        except (sqlite3.Error, OSError) as exc:
            raise FederationError(f"{self._name}: {exc}") from exc
        self.counters = SampleCounters(dropped_oldest=dropped)

    def add(
        self,
        model: str,
        features: np.ndarray,
        label: int | np.integer,
        source: Source,
        ref: str | None = None,
    ) -> int:
        """Store one sample; returns its id. A bad sample raises ``FederationError`` with
        the reason, a failing store ``SampleStoreError``; either changes nothing."""
        vector = self._check(features, label, source)
        # the feature count's check and the insert are one step: two concurrent first
        # samples of different lengths would both be stored and break every training set
        with self._lock:
            try:
                dim = self._dim(model)
                if dim is not None and dim != vector.size:
                    self.counters.refused += 1
                    reason = f"{model} samples have {dim} features, got {vector.size}"
                    raise FederationError(f"sample refused: {reason}")
                with self._db.atomic():
                    cur = self._db.execute(
                        "INSERT INTO samples (model, source, label, dim, features, ref, created) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            model,
                            source,
                            int(label),
                            vector.size,
                            vector.tobytes(),
                            ref,
                            self._clock(),
                        ),
                    )
                    dropped = self._drop_oldest()
            except sqlite3.Error as exc:
                self.counters.write_failures += 1
                raise self._failure(self._writes, exc) from exc
            self.counters.added += 1
            self.counters.dropped_oldest += dropped
        self._writes.ok()
        return int(cur.lastrowid or 0)

    def count(self, model: str) -> int:
        """Samples of ``model`` available for training (the held-back slice excluded)."""
        rows = self._read(
            "SELECT COUNT(*) FROM samples WHERE model = ? AND id % ? != 0",
            (model, self.holdout_every),
        )
        return int(rows[0][0])

    def training_set(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of ``model`` to train on (the held-back slice excluded)."""
        return self._select(model, "id % ? != 0")

    def holdout(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """The held-back slice of ``model``: never trained on, used to judge a new version."""
        return self._select(model, "id % ? = 0")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _check(self, features: np.ndarray, label: int | np.integer, source: str) -> np.ndarray:
        """The checks that need no database (the feature count is checked in ``add``)."""
        reason = ""
        vector = np.asarray(features)
        if source not in SOURCES:
            reason = f"source {source!r} is not one of {SOURCES}"
        elif vector.ndim != 1 or not 1 <= vector.size <= MAX_FEATURES:
            reason = f"features must be a vector of 1 to {MAX_FEATURES} values, got {vector.shape}"
        elif vector.dtype.kind not in "fiu" or not np.all(np.isfinite(vector)):
            reason = "features must be finite numbers"
        elif not isinstance(label, int | np.integer) or label < 0:
            reason = f"label must be a class index >= 0, got {label!r}"
        if reason:
            with self._lock:
                self.counters.refused += 1
            raise FederationError(f"sample refused: {reason}")
        return vector.astype("<f4")

    def _dim(self, model: str) -> int | None:
        """The feature count of ``model``'s samples (None: none yet); call under the lock."""
        row = self._db.execute(
            "SELECT dim FROM samples WHERE model = ? LIMIT 1", (model,)
        ).fetchone()
        return None if row is None else int(row[0])

    def _read(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        with self._lock:
            try:
                rows = self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                self.counters.read_failures += 1
                raise self._failure(self._reads, exc) from exc
        self._reads.ok()
        return rows

    def _failure(self, outage: Outage, exc: sqlite3.Error) -> SampleStoreError:
        outage.failed(exc)  # the first with its traceback, then a line every few minutes
        return SampleStoreError(f"{self._name}: {exc}")

    def _drop_oldest(self) -> int:
        total = int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        excess = total - self.max_samples
        if excess <= 0:
            return 0
        self._db.execute(
            "DELETE FROM samples WHERE id IN (SELECT id FROM samples ORDER BY id LIMIT ?)",
            (excess,),
        )
        self._db.execute(
            "UPDATE totals SET value = value + ? WHERE name = 'dropped_oldest'", (excess,)
        )
        return excess

    def _total(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM totals WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def _select(self, model: str, where: str) -> tuple[np.ndarray, np.ndarray]:
        rows = self._read(
            f"SELECT label, features FROM samples WHERE model = ? AND {where} ORDER BY id",
            (model, self.holdout_every),
        )
        if not rows:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        x = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]).astype(np.float32)
        y = np.array([r[0] for r in rows], dtype=np.int64)
        return x, y
