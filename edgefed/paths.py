"""Default paths: a checkout's ``var/`` and ``firmware-images/``, or an installed daemon's.

Run from a checkout (the directory holding the ``edgefed`` package also holds
``pyproject.toml`` and ``firmware-images/``), the defaults are what they have always been:
relative paths (``var/edged``, ``var/serverd``, ``firmware-images/build``) that resolve
against the working directory. Installed from a wheel, they are the usual places of a
system daemon:

=================  ==============================  =====================================
what               checkout                        installed
=================  ==============================  =====================================
state root         ``var``                         ``/var/lib/edgefed``
model images       ``firmware-images/build``       ``/var/lib/edgefed/images``
trusted keys       ``<images>/keys/dev-signing.pub``  ``/etc/edgefed/keys/image-signing.pub``
Triton's venv      ``.venv-triton``                ``<state root>/venv-triton``
=================  ==============================  =====================================

``EDGEFED_STATE_DIR``, ``EDGEFED_IMAGES_DIR`` and ``EDGEFED_CONFIG_DIR`` (the directory of
``keys/``) override the roots; a config file overrides each path. Every function reads
the environment when called, so a config model's ``default_factory`` sees the current one.

``resource`` is the one way the packages reach their own data files (twin property table,
dashboard, Triton backends): through ``importlib.resources``, never relative to a checkout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

SYSTEM_STATE = Path("/var/lib/edgefed")
SYSTEM_CONFIG = Path("/etc/edgefed")
DEV_KEY = Path("keys/dev-signing.pub")
SYSTEM_KEY = Path("keys/image-signing.pub")


def find_checkout(package_dir: Path | None = None) -> Path | None:
    """The checkout's root if the packages run from one, else None (installed)."""
    root = (package_dir or Path(__file__).resolve().parent).parent
    if (root / "pyproject.toml").is_file() and (root / "firmware-images").is_dir():
        return root
    return None


CHECKOUT = find_checkout()


def _env(env: Mapping[str, str] | None, name: str) -> Path | None:
    value = (os.environ if env is None else env).get(name, "")
    return Path(value) if value else None


def state_root(env: Mapping[str, str] | None = None) -> Path:
    """Where the daemons keep their state: ``$EDGEFED_STATE_DIR``, ``var`` or /var/lib."""
    if (override := _env(env, "EDGEFED_STATE_DIR")) is not None:
        return override
    return Path("var") if CHECKOUT is not None else SYSTEM_STATE


def state_dir(daemon: str, env: Mapping[str, str] | None = None) -> Path:
    """One daemon's state directory (``edged``, ``serverd``) under the state root."""
    return state_root(env) / daemon


def images_dir(env: Mapping[str, str] | None = None) -> Path:
    """Installed model images: ``$EDGEFED_IMAGES_DIR``, ``firmware-images/build`` or /var/lib."""
    if (override := _env(env, "EDGEFED_IMAGES_DIR")) is not None:
        return override
    return Path("firmware-images/build") if CHECKOUT is not None else SYSTEM_STATE / "images"


def trusted_keys(env: Mapping[str, str] | None = None) -> list[Path]:
    """The public keys model images must be signed with, by default."""
    if (override := _env(env, "EDGEFED_CONFIG_DIR")) is not None:
        return [override / SYSTEM_KEY]
    if CHECKOUT is not None:
        return [images_dir(env) / DEV_KEY]
    return [SYSTEM_CONFIG / SYSTEM_KEY]


def triton_venv(env: Mapping[str, str] | None = None) -> Path:
    """serverd's Triton environment: ``.venv-triton`` of a checkout, else under the state root."""
    return Path(".venv-triton") if CHECKOUT is not None else state_root(env) / "venv-triton"


def checkout_path(relative: str) -> Path | None:
    """A path inside the checkout (absolute), or None when installed: for tool defaults."""
    return None if CHECKOUT is None else CHECKOUT / relative


def resource(package: str, *parts: str) -> Path:
    """A data file or directory shipped inside a package, as a file system path.

    Wheels are installed unpacked, so the resource is a real file; a zipped import (which
    would need ``importlib.resources.as_file``) is refused with a clear error, because
    some readers (Triton, a shell) need a path on disk.
    """
    found = files(package)
    for part in parts:
        found = found.joinpath(part)
    if not isinstance(found, Path):
        raise RuntimeError(f"{package} is not installed as files on disk (got {found!r})")
    return found
