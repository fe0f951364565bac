"""Reading and verifying a model image directory (used by edged, serverd and the CLI).

``verify_image`` is the gate before any model file is handed to a driver: the
manifest must parse, its detached signature must verify with a trusted key (unless
``allow_unsigned``), every listed file must exist with the listed sha256, and nothing
else may be in the directory (a file the signature does not cover could be read by a
driver or a vendor SDK). The directory itself is not a symlink, except the links of
an A/B install (``<root>/<name> -> slots/<name>/current -> a|b``, ``install.py``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefed.errors import ImageError

from . import signing
from .manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest, manifest_from_yaml

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _manifest_bytes(path: Path) -> bytes:
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise ImageError(f"{path}: model image directory not found")
    if path.is_symlink() and not _installed_slot(path):
        raise ImageError(f"{path}: a model image directory must not be a symlink")
    try:
        return manifest_path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(f"{path}: not a model image (no {MANIFEST_NAME})") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot read {MANIFEST_NAME}: {exc.strerror or exc}") from exc


def read_manifest(path: Path) -> Manifest:
    """Parse an image's manifest without checking signature or files."""
    return manifest_from_yaml(_manifest_bytes(path), str(path))


def verify_image(
    path: Path, trusted_keys: Sequence[Path], allow_unsigned: bool = False
) -> Manifest:
    """Check an image's signature and every file's sha256; return its manifest.

    Raises ImageError with a one-line cause, e.g. ``pose_detector: sha256 mismatch
    for model.tflite``. With ``allow_unsigned`` a missing or non-matching signature
    is logged as a warning instead (development only); files are always checked.
    """
    keys = [signing.load_public_key(p) for p in trusted_keys]
    return verify_image_with_keys(path, keys, allow_unsigned)


def verify_image_with_keys(
    path: Path, keys: Sequence[Ed25519PublicKey], allow_unsigned: bool = False
) -> Manifest:
    """``verify_image`` with already loaded public keys."""
    raw = _manifest_bytes(path)
    manifest = manifest_from_yaml(raw, str(path))
    problem = _signature_problem(path, raw, keys)
    if problem is not None:
        if not allow_unsigned:
            raise ImageError(f"{manifest.name}: {problem}")
        log.warning("%s: %s (accepted: allow_unsigned)", manifest.name, problem)
    for name, expected in manifest.files.items():
        _check_file(manifest.name, path / name, name, expected)
    extra = _unlisted(path, {MANIFEST_NAME, SIGNATURE_NAME, *manifest.files})
    if extra:
        shown = ", ".join(extra[:5]) + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
        raise ImageError(f"{manifest.name}: files not listed in the manifest: {shown}")
    return manifest


def _unlisted(path: Path, allowed: set[str]) -> list[str]:
    """What is in the image directory beyond ``allowed`` (folders of listed files pass)."""
    out = []
    for entry in path.rglob("*"):
        rel = entry.relative_to(path).as_posix()
        if entry.is_dir() and not entry.is_symlink():
            if not any(name.startswith(rel + "/") for name in allowed):
                out.append(rel + "/")
        elif rel not in allowed:
            out.append(rel)
    return sorted(out)


def _installed_slot(path: Path) -> bool:
    """``<root>/<name>`` linking (through ``slots/<name>/current``) to slot a or b."""
    slots = (path.parent / "slots" / path.name).resolve()
    target = path.resolve()
    return target.parent == slots and target.name in ("a", "b")


def _signature_problem(path: Path, raw: bytes, keys: Sequence[Ed25519PublicKey]) -> str | None:
    try:
        signature = (path / SIGNATURE_NAME).read_bytes()
    except FileNotFoundError:
        return f"unsigned image (no {SIGNATURE_NAME})"
    except OSError as exc:
        return f"cannot read {SIGNATURE_NAME}: {exc.strerror or exc}"
    if not keys:
        return "no trusted key given to check the signature"
    if not signing.signed_by_any(keys, raw, signature):
        return "signature does not match any trusted key"
    return None


def _check_file(image: str, path: Path, name: str, expected: str) -> None:
    if not path.exists() and not path.is_symlink():
        raise ImageError(f"{image}: missing file {name}")
    if path.is_symlink() or not path.is_file():
        raise ImageError(f"{image}: {name} is not a regular file")
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise ImageError(f"{image}: cannot read {name}: {exc.strerror or exc}") from exc
    if actual != expected:
        raise ImageError(f"{image}: sha256 mismatch for {name}")


def load_labels(path: Path, manifest: Manifest) -> list[str]:
    """The image's labels, one per line (empty list when the image has none)."""
    if manifest.labels is None:
        return []
    try:
        text = (path / manifest.labels).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageError(f"{manifest.name}: cannot read labels {manifest.labels}: {exc}") from exc
    return text.splitlines()
