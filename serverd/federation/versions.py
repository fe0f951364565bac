"""The newest global version of each federated model, kept on disk so a restarted serverd
goes on from it (its edges refuse any version not newer than the one they serve).

Per model: ``<model>.params.<version>`` (``encode_params``) and ``<model>.json``
(``version``, the params' ``sha256`` and ``params``, the name of their file). A save is
atomic as a whole: the new version's params file is written and fsynced first, beside
the one the JSON names, and the JSON is replaced (written to a temp file, fsynced,
renamed, the directory fsynced) only then; so a full disk or a crash at any point leaves
the JSON naming a complete version, the new one or the one before. The other params
files are removed after the JSON is replaced, a temp file when its write fails. (The
version goes after ``.params``, not before: ``a.v2.params`` is the earlier layout's file
of a model named ``a.v2``.)

A JSON without ``params`` names ``<model>.params``, the layout of earlier releases, so an
upgrade goes on from their version. A JSON and params that do not match are ignored with
a warning and the model starts again from version 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

from edgefed.errors import ProtocolError
from edgefed.federation_wire import decode_params, encode_params, sha256_hex
from edgefed.files import write_durably
from serverd.federation.aggregate import Params

log = logging.getLogger("serverd.federation")


class VersionFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def save(self, model: str, version: int, params: Params) -> None:
        """Make ``version`` the one ``load`` returns, or raise ``OSError`` and leave the
        one saved before it (with no temp file left behind)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data = encode_params(params)
        name = f"{model}.params.{int(version)}"
        meta = {"version": version, "sha256": sha256_hex(data), "params": name}
        try:
            write_durably(self.directory / name, data)
            write_durably(self._meta_path(model), json.dumps(meta).encode())
        except OSError:
            if self._saved_params(model) != name:  # not what a JSON names: an orphan
                _remove(self.directory / name)
            raise
        self._remove_all_but(model, name)

    def load(self, model: str) -> tuple[int, Params] | None:
        meta_path = self._meta_path(model)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            data = (self.directory / _params_name(model, meta)).read_bytes()
            if sha256_hex(data) != meta["sha256"] or int(meta["version"]) < 1:
                raise ValueError("parameters do not match their sha256")
            return int(meta["version"]), decode_params(data)
        except (OSError, ValueError, KeyError, TypeError, ProtocolError) as exc:
            log.warning(
                "federation %s: ignoring the saved version in %s: %s", model, meta_path, exc
            )
            return None

    def _meta_path(self, model: str) -> Path:
        return self.directory / f"{model}.json"

    def _saved_params(self, model: str) -> str | None:
        """The params file the JSON on disk names (None when there is no readable one)."""
        try:
            return _params_name(model, json.loads(self._meta_path(model).read_bytes()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _remove_all_but(self, model: str, keep: str) -> None:
        """The model's params files but ``keep`` (older versions, the old layout's, one an
        interrupted save left) and its temp files (a crash between write and rename). What
        cannot be removed now is tried again after the next save."""
        ours = re.compile(re.escape(model) + r"\.(params(\.[0-9]+)?(\.tmp)?|json\.tmp)")
        for path in self.directory.iterdir():
            if path.name != keep and ours.fullmatch(path.name):
                _remove(path)


def _params_name(model: str, meta: object) -> str:
    """The params file a saved JSON names: a plain name in the same directory."""
    if not isinstance(meta, dict):
        raise TypeError("the saved version is not a JSON object")
    name = meta.get("params", f"{model}.params")  # no "params": an earlier release's JSON
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"bad params file name {name!r}")
    return name


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # best effort: the next save tries again
        path.unlink(missing_ok=True)
