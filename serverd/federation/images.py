"""Each global version of a federated model as a packed, signed model image
(``edgefed.images.federated``), built once per version and kept for re-publishing."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefed.images.federated import Base, Params, build_version, pack


class VersionImager:
    """Packs version N of ``model``: its base with the version's head, signed by ``key``,
    built in a temporary directory under ``scratch`` (None: the system's, ``TMPDIR``)."""

    def __init__(
        self,
        model: str,
        base: Base,
        classes: Sequence[str],
        key: Ed25519PrivateKey,
        scratch: Path | None = None,
    ) -> None:
        self.model, self.base, self.classes, self.key = model, base, list(classes), key
        self.scratch = scratch
        self._lock = threading.Lock()
        self._last: tuple[int, bytes] | None = None

    def packed(self, version: int, params: Params) -> bytes:
        """The packed image of ``version`` (built on first use, then the same bytes);
        ``OSError`` when it cannot be built (no room under ``scratch``)."""
        with self._lock:
            if self._last is not None and self._last[0] == version:
                return self._last[1]
            with tempfile.TemporaryDirectory(prefix=f"fed-{self.model}-", dir=self.scratch) as tmp:
                image = Path(tmp) / self.model
                build_version(image, self.base, self.model, version, self.classes, params, self.key)
                data = pack(image)
            self._last = (version, data)
            return data
