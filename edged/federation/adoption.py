"""Adopting a global version at the edge: check, judge on the held-back slice, swap.

``check`` verifies a received version's header signature against the trusted keys (its
hash was checked on decoding; the packed image inside carries its own signature, checked
when it is unpacked, ``edged.federation.versions``) and that it is newer than the one
served and than one the operator rolled back from. ``judge`` refuses a version whose
held-back accuracy is worse than the current one's by more than ``margin``. ``HeadSlot``
holds the served head; a swap replaces one reference under a lock, so a reader gets
either the old or the new version whole, and the previous version is kept for
``rollback``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edged.federation.trainer import Params, accuracy
from edgefed.errors import FederationError
from edgefed.federation_wire import ReceivedModel, signed_text
from edgefed.images.signing import signed_by_any


@dataclass(frozen=True)
class Served:
    version: int
    params: Params
    image: Path | None = None  # the installed image (<root>/<model>), when there is one


@dataclass(frozen=True)
class Decision:
    adopt: bool
    reason: str
    candidate_accuracy: float | None
    current_accuracy: float | None


class HeadSlot:
    """The served version of a trainable head and the one before it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Served | None = None
        self._previous: Served | None = None

    @property
    def current(self) -> Served | None:
        with self._lock:
            return self._current

    def swap(self, served: Served) -> None:
        with self._lock:
            self._previous, self._current = self._current, served

    def rollback(self) -> Served:
        """Serve the previous version again; ``FederationError`` if there is none."""
        with self._lock:
            if self._previous is None:
                raise FederationError("no previous version to roll back to")
            self._current, self._previous = self._previous, None
            return self._current


def check(
    received: ReceivedModel,
    keys: Sequence[Ed25519PublicKey],
    served: Served | None,
    rolled_back_from: int | None = None,
) -> None:
    """``FederationError`` unless the version is signed by a trusted key, newer than the
    served one and newer than a version the operator rolled back from."""
    head = received.model
    try:
        signature = bytes.fromhex(head.signature)
    except ValueError as exc:
        raise FederationError(f"{head.model} v{head.version}: signature is not hex") from exc
    if not signed_by_any(keys, signed_text(head.model, head.version, head.sha256), signature):
        raise FederationError(f"{head.model} v{head.version}: not signed by a trusted key")
    if served is not None and head.version <= served.version:
        raise FederationError(
            f"{head.model} v{head.version}: not newer than the served v{served.version}"
        )
    if rolled_back_from is not None and head.version <= rolled_back_from:
        raise FederationError(
            f"{head.model} v{head.version}: the operator rolled back from v{rolled_back_from}"
        )


def judge(
    candidate: Params,
    served: Served | None,
    holdout: tuple[np.ndarray, np.ndarray],
    margin: float,
    min_holdout: int = 10,
) -> Decision:
    """Adopt unless the candidate is worse on the held-back slice by more than ``margin``
    (a share, 0.02 = two points) plus one sample: on a small slice one sample is several
    points, and a single flipped sample is noise, not a worse model. With no version
    served, or fewer than ``min_holdout`` held-back samples to judge by, a verified
    version is adopted."""
    x, y = holdout
    if served is None or len(y) < min_holdout:
        return Decision(True, "", None, None)
    new, old = accuracy(candidate, x, y), accuracy(served.params, x, y)
    allowed = margin + 1.0 / len(y)
    if new < old - allowed - 1e-12:
        reason = (
            f"held-back accuracy {new:.4f} is below the served {old:.4f} by more than "
            f"{allowed:.4f} (margin {margin} + one of {len(y)} samples)"
        )
        return Decision(False, reason, new, old)
    return Decision(True, "", new, old)
