"""Atomic install of verified images into A/B slots, and rollback.

Layout under an images root (what ``images.dir`` of edged points at)::

    <root>/slots/<name>/a/             one image
    <root>/slots/<name>/b/             the other (previous) image
    <root>/slots/<name>/current -> a   swapped atomically with os.replace
    <root>/<name> -> slots/<name>/current

An install copies the image into the inactive slot, verifies the copy, fsyncs it, then
flips ``current`` (fsync'd too, so a power cut leaves the old or the new image); a rollback
flips it back after verifying the other slot. Readers that open ``<root>/<name>`` see
either the old or the new image, never a mix. An image older than the installed one is
refused unless forced. An optional health check runs after the switch; if it fails the
install undoes itself: back to the previous slot, or nothing installed if there was none.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgefed.errors import EdgeFedError, ImageError
from edgefed.files import fsync_path

from .manifest import Manifest
from .verify import read_manifest, verify_image

SLOTS = ("a", "b")
_RELEASE = re.compile(r"^v?(\d+(?:\.\d+)*)")

# Called after the switch with the new manifest and the path edged loads; raises an
# EdgeFedError (or returns normally) to say whether the daemon is healthy on the new image.
HealthCheck = Callable[[Manifest, Path], None]


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


def version_key(version: str) -> tuple[int, ...]:
    """The numeric release of a version ("1.10.2", "v2", "1.0.0+fl3" -> (1, 0, 0))."""
    match = _RELEASE.match(version)
    if match is None:
        raise ImageError(f"version {version!r} has no numeric release to compare")
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()  # 1.0 == 1.0.0
    return tuple(parts)


def _refuse_downgrade(new: Manifest, installed: Manifest) -> None:
    if version_key(new.version) < version_key(installed.version):
        raise ImageError(
            f"{new.name}: version {new.version} is older than the installed "
            f"{installed.version}; refused (use --force to downgrade)"
        )


def _fsync_tree(top: Path) -> None:
    for folder, _, files in os.walk(top):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


@contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    slot_dir = _slot_dir(root, name)
    try:  # a slot dir made by another user (root) or a full disk: ImageError says which
        slot_dir.mkdir(parents=True, exist_ok=True)
        fh = (slot_dir / ".lock").open("w")
    except OSError as exc:
        raise ImageError(f"{name}: cannot use the slots in {slot_dir}: {exc}") from exc
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _point(root: Path, name: str, slot: str) -> None:
    """Flip ``current`` to ``slot`` atomically and make sure ``<root>/<name>`` follows it."""
    slot_dir = _slot_dir(root, name)
    tmp = slot_dir / ".current.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(slot)
    os.replace(tmp, slot_dir / "current")
    fsync_path(slot_dir)
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
    fsync_path(root)


def _unpoint(root: Path, name: str) -> None:
    """Undo a first install: nothing is installed under ``<root>/<name>`` afterwards."""
    (_slot_dir(root, name) / "current").unlink(missing_ok=True)
    (root / name).unlink(missing_ok=True)
    fsync_path(_slot_dir(root, name))
    fsync_path(root)


def install_image(
    image: Path,
    root: Path,
    trusted_keys: Sequence[Path],
    allow_unsigned: bool = False,
    *,
    force: bool = False,
    health: HealthCheck | None = None,
) -> tuple[Manifest, SlotState]:
    """Verify ``image``, copy it into the inactive slot, verify the copy, switch to it.

    An image older than the active one is refused unless ``force``. ``health`` runs after
    the switch; when it fails the switch is undone and ImageError says why and to what.
    """
    manifest = verify_image(image, trusted_keys, allow_unsigned)
    with _locked(root, manifest.name):
        active = active_slot(root, manifest.name)
        slot_dir = _slot_dir(root, manifest.name)
        if active is not None and not force:
            _refuse_downgrade(manifest, read_manifest(slot_dir / active))
        target = "b" if active == "a" else "a"
        dest = slot_dir / target
        staging = dest.with_name(f".{target}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(image, staging, symlinks=False)
            installed = verify_image(staging, trusted_keys, allow_unsigned)
            _fsync_tree(staging)
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
        fsync_path(slot_dir)
        _point(root, manifest.name, target)
        if health is not None:
            _check_health(health, installed, root, active)
    return manifest, SlotState(manifest.name, target, root / manifest.name)


def _check_health(health: HealthCheck, new: Manifest, root: Path, previous: str | None) -> None:
    try:
        health(new, root / new.name)
    except EdgeFedError as exc:
        if previous is None:
            _unpoint(root, new.name)
            undone = "removed it (nothing was installed before)"
        else:
            _point(root, new.name, previous)
            old = read_manifest(_slot_dir(root, new.name) / previous)
            undone = f"rolled back to {old.version} in slot {previous}"
        raise ImageError(
            f"{new.name} {new.version}: health check failed after the switch ({exc}); {undone}"
        ) from exc


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
