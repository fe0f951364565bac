"""The newest global version of each federated model, kept on disk so a restarted serverd
goes on from it (its edges refuse any version not newer than the one they serve).

Per model: ``<model>.params`` (``encode_params``) and ``<model>.json`` (``version`` and
the params' ``sha256``), each replaced atomically, the JSON last; a pair that does not
match is ignored with a warning and the model starts again from version 1.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from edgefed.errors import ProtocolError
from edgefed.federation_wire import decode_params, encode_params, sha256_hex
from serverd.federation.aggregate import Params

log = logging.getLogger("serverd.federation")


class VersionFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, model: str, version: int, params: Params) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = encode_params(params)
        _replace(self.directory / f"{model}.params", data)
        meta = {"version": version, "sha256": sha256_hex(data)}
        _replace(self.directory / f"{model}.json", json.dumps(meta).encode())

    def load(self, model: str) -> tuple[int, Params] | None:
        meta_path = self.directory / f"{model}.json"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            data = (self.directory / f"{model}.params").read_bytes()
            if sha256_hex(data) != meta["sha256"] or int(meta["version"]) < 1:
                raise ValueError("parameters do not match their sha256")
            return int(meta["version"]), decode_params(data)
        except (OSError, ValueError, KeyError, TypeError, ProtocolError) as exc:
            log.warning(
                "federation %s: ignoring the saved version in %s: %s", model, meta_path, exc
            )
            return None


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
