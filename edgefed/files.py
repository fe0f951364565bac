"""Files replaced whole and durably: after a crash or a power cut a reader finds the old
content or the new, never a part or an empty file (edge boxes lose power; a rename that
reaches the disk before the data it names leaves a zero-length file on ext4 and XFS).

``write_durably`` writes a temp file beside the target, fsyncs it, renames it over the
target and fsyncs the directory (so that the rename itself survives); if any step fails
(a full disk, a read-only mount) the temp file is removed and the target is as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to disk (a directory: the names in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole, on disk; or raise ``OSError`` with ``path`` as it was
    and no temp file left (``<name>.tmp`` beside it). A directory that cannot be synced
    after the rename is a warning: the new content is in place."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    try:
        fsync_path(path.parent)
    except OSError as exc:  # the file is replaced: only a power cut now may undo it
        log.warning("%s is written, but its directory could not be synced: %s", path, exc)
