"""Atomic install of verified images into A/B slots, and rollback.

Layout under an images root (what ``images.dir`` of edged points at)::

    <root>/slots/<name>/a/             one image
    <root>/slots/<name>/b/             the other (previous) image
    <root>/slots/<name>/current -> a   swapped atomically with os.replace
    <root>/<name> -> slots/<name>/current

An install copies the image into the inactive slot, verifies the copy, then flips
``current``; a rollback flips it back after verifying the other slot. Readers that
open ``<root>/<name>`` see either the old or the new image, never a mix.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgefed.errors import ImageError

from .manifest import Manifest
from .verify import verify_image

SLOTS = ("a", "b")


@dataclass(frozen=True)
class SlotState:
    name: str
    active: str | None  # "a", "b" or None when nothing is installed
    path: Path  # <root>/<name>, the path edged loads


def _slot_dir(root: Path, name: str) -> Path:
    return root / "slots" / name


def active_slot(root: Path, name: str) -> str | None:
    """The slot ``current`` points at, or None when the image was never installed."""
    link = _slot_dir(root, name) / "current"
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ImageError(f"{name}: {link} is not a slot link ({exc.strerror or exc})") from exc
    if target not in SLOTS:
        raise ImageError(f"{name}: {link} points at {target!r}, not a slot")
    return target


@contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    slot_dir = _slot_dir(root, name)
    slot_dir.mkdir(parents=True, exist_ok=True)
    with (slot_dir / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _point(root: Path, name: str, slot: str) -> None:
    """Flip ``current`` to ``slot`` atomically and make sure ``<root>/<name>`` follows it."""
    slot_dir = _slot_dir(root, name)
    tmp = slot_dir / ".current.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(slot)
    os.replace(tmp, slot_dir / "current")
    entry = root / name
    want = os.path.join("slots", name, "current")
    if entry.is_symlink() and os.readlink(entry) == want:
        return
    if entry.exists() and not entry.is_symlink():
        raise ImageError(f"{name}: {entry} exists and is not the slot link; move it away")
    tmp_entry = root / f".{name}.tmp"
    tmp_entry.unlink(missing_ok=True)
    tmp_entry.symlink_to(want)
    os.replace(tmp_entry, entry)


def install_image(
    image: Path, root: Path, trusted_keys: Sequence[Path], allow_unsigned: bool = False
) -> tuple[Manifest, SlotState]:
    """Verify ``image``, copy it into the inactive slot, verify the copy, switch to it."""
    manifest = verify_image(image, trusted_keys, allow_unsigned)
    with _locked(root, manifest.name):
        active = active_slot(root, manifest.name)
        target = "b" if active == "a" else "a"
        dest = _slot_dir(root, manifest.name) / target
        staging = dest.with_name(f".{target}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(image, staging, symlinks=False)
            installed = verify_image(staging, trusted_keys, allow_unsigned)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ImageError(f"{manifest.name}: copy into slot {target} failed: {exc}") from exc
        except ImageError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if installed.name != manifest.name:
            shutil.rmtree(staging, ignore_errors=True)
            raise ImageError(f"{manifest.name}: image changed while it was being installed")
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
        _point(root, manifest.name, target)
    return manifest, SlotState(manifest.name, target, root / manifest.name)


def rollback_image(
    root: Path, name: str, trusted_keys: Sequence[Path], allow_unsigned: bool = False
) -> tuple[Manifest, SlotState]:
    """Switch ``name`` back to its other slot after verifying the image there."""
    with _locked(root, name):
        active = active_slot(root, name)
        if active is None:
            raise ImageError(f"{name}: not installed under {root}")
        other = "b" if active == "a" else "a"
        other_dir = _slot_dir(root, name) / other
        if not other_dir.is_dir():
            raise ImageError(f"{name}: no previous image to roll back to")
        manifest = verify_image(other_dir, trusted_keys, allow_unsigned)
        if manifest.name != name:
            raise ImageError(f"{name}: slot {other} holds image {manifest.name!r}")
        _point(root, name, other)
    return manifest, SlotState(name, other, root / name)
