"""The twin deltas edged has already applied, remembered across restarts.

A delta published with the retain flag comes again with every (re)subscription, so at
every start of edged: without this record it would be applied again over any change
made since (through ``PUT /api/v1/config`` or a later delta). A delta is known by its
``event_id`` (or, if it has none, the hash of its payload); the last ``keep`` are kept
in a small JSON file next to ``runtime.json``, written atomically. A delta not in the
record (one that arrived while edged was down, or a new one) is applied as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from pathlib import Path

from edgefed.files import write_durably

log = logging.getLogger(__name__)

KEEP = 64


def delta_key(event_id: str, payload: bytes) -> str:
    return event_id or "sha256:" + hashlib.sha256(payload).hexdigest()


class SeenDeltas:
    """A bounded, persisted record of delta keys; ``path`` None keeps it in memory."""

    def __init__(self, path: Path | None, keep: int = KEEP) -> None:
        self._path = path
        self._keys: deque[str] = deque(maxlen=keep)
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self._keys.extend(str(k) for k in data.get("applied", []))
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("twin: ignoring unreadable delta record %s: %s", path, exc)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        self._keys.append(key)
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_durably(self._path, json.dumps({"applied": list(self._keys)}).encode())
        except OSError as exc:  # the delta stays applied; a restart may apply it again
            log.warning("twin: cannot record applied delta in %s: %s", self._path, exc)
