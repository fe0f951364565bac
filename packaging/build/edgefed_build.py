"""EdgeFed's PEP 517 build backend: setuptools, after generating the gRPC stubs.

The gRPC stubs of ``drivers/deviceplugin/api.proto`` (kubelet device plugin) and
``edgefed/dmi/api.proto`` (KubeEdge DMI) are generated, not committed (they are
git-ignored), so a wheel built from a clean clone would lack them. Before setuptools
builds a wheel (or an editable install), this runs ``python -m drivers.deviceplugin.gen``
and ``python -m edgefed.dmi.gen`` in the source tree (pip runs build hooks there), with
grpcio-tools from the build requirements in pyproject.toml; the stubs are then ordinary
modules of the package.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import (  # noqa: F401  (the rest of the PEP 517 interface)
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

GENERATORS = ("drivers.deviceplugin.gen", "edgefed.dmi.gen")


def _generate_stubs() -> None:
    for module in GENERATORS:
        subprocess.run([sys.executable, "-m", module], check=True)


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _generate_stubs()
    return str(build_meta.build_wheel(wheel_directory, config_settings, metadata_directory))


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    _generate_stubs()
    return str(build_meta.build_editable(wheel_directory, config_settings, metadata_directory))
