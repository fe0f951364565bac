"""The versions of federated models installed on this device: signed model images in
A/B slots under ``root`` (``edgefed.images.install``), so the served version survives a
restart and ``edged image rollback NAME`` brings the previous one back.

A received version is unpacked into a private directory under ``root`` and verified
like any model image (signature by a trusted key, every file's sha256) before it is
judged; only an adopted one is installed. A rollback leaves the newer version in the
other slot: while it is there, versions up to it are refused (the operator said no).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from edged.federation.adoption import Served
from edgefed.errors import FederationError, ImageError
from edgefed.images.federated import HEAD_TENSORS, Params, head_params, unpack
from edgefed.images.install import SLOTS, active_slot, install_image, rollback_image
from edgefed.images.signing import load_public_key
from edgefed.images.verify import read_manifest, verify_image_with_keys

log = logging.getLogger("edged.federation")

INCOMING = ".incoming"


class VersionImages:
    """Installed federated versions under ``root``, checked against ``trusted_keys``."""

    def __init__(self, root: Path, trusted_keys: Sequence[Path]) -> None:
        self.root, self.key_paths = root, list(trusted_keys)
        self.keys = [load_public_key(p) for p in self.key_paths]
        # what an unpacking cut short by a crash or a kill left (a whole image each)
        for left in _entries(root / INCOMING):
            shutil.rmtree(left, ignore_errors=True)

    def served(self, model: str) -> Served | None:
        """The installed version of ``model`` (None when there is none or it fails its
        checks: then the next version the server publishes is adopted afresh)."""
        try:
            if active_slot(self.root, model) is None:
                return None
            path = self.root / model
            manifest = verify_image_with_keys(path, self.keys)
            return Served(_version(manifest.version), head_params(path, manifest), path)
        except (ImageError, FederationError) as exc:
            log.warning("federation %s: ignoring the installed version: %s", model, exc)
            return None

    def rolled_back_from(self, model: str) -> int | None:
        """The version in the inactive slot when it is newer than the active one."""
        try:
            active = active_slot(self.root, model)
            if active is None:
                return None
            slots = self.root / "slots" / model
            other = slots / next(s for s in SLOTS if s != active)
            if not other.is_dir():
                return None
            newer = _version(read_manifest(other).version)
            return newer if newer > _version(read_manifest(slots / active).version) else None
        except (ImageError, FederationError) as exc:
            log.warning("federation %s: cannot read the other slot: %s", model, exc)
            return None

    @contextmanager
    def unpacked(self, model: str, version: int, body: bytes) -> Iterator[tuple[Path, Params]]:
        """The verified image of ``model`` v``version`` in ``body`` and its head;
        ``FederationError`` says why it is not one. The directory goes on exit."""
        incoming = self.root / INCOMING
        try:
            incoming.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f"{model}-", dir=incoming))
        except OSError as exc:  # a full disk: the version is refused with the reason
            raise FederationError(
                f"{model} v{version}: cannot unpack in {incoming}: {exc}"
            ) from exc
        try:
            image = work / model
            try:
                image.mkdir()
                unpack(body, image)
                manifest = verify_image_with_keys(image, self.keys)
                if manifest.name != model or manifest.version != str(version):
                    raise FederationError(
                        f"the image is {manifest.name} {manifest.version}, not {model} {version}"
                    )
                trainable = manifest.trainable
                if trainable is None or trainable.tensors != HEAD_TENSORS:
                    raise FederationError("the image declares no federated head")
                params = head_params(image, manifest)
            except (ImageError, OSError) as exc:
                raise FederationError(f"{model} v{version}: {exc}") from exc
            yield image, params
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def install(self, image: Path) -> Path:
        """Install a verified version into the inactive slot; the path edged loads."""
        try:
            _, state = install_image(image, self.root, self.key_paths)
        except (ImageError, OSError) as exc:  # OSError: a full disk past the copy
            raise FederationError(f"install failed: {exc}") from exc
        return state.path

    def roll_back(self, model: str) -> None:
        """Back to the previous slot (after a version that could not be served)."""
        try:
            rollback_image(self.root, model, self.key_paths)
        except (ImageError, OSError) as exc:
            log.error("federation %s: rollback failed: %s", model, exc)


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:  # none yet (or not a directory: unpacking will say so)
        return []


def _version(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise FederationError(f"version {text!r} is not a federated version number") from None
