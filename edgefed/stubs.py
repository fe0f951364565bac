"""Loading generated gRPC stubs (the device plugin's, the DMI's) with one clear error.

The stubs are generated from each package's ``api.proto`` (``edgefed.protogen``; a wheel
carries them); this module only imports them, so a daemon never needs grpcio-tools.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from edgefed.errors import EdgeFedError


@dataclass(frozen=True)
class Api:
    """Generated stubs: the message module (``pb``) and the service module (``grpc``)."""

    pb: ModuleType
    grpc: ModuleType


def load_stubs(package: str, error: type[EdgeFedError], what: str) -> Api:
    """Import ``<package>.api_pb2`` and ``api_pb2_grpc``; ``error`` says how to generate
    them when they are missing (``python -m <package>.gen``)."""
    try:
        pb = importlib.import_module(f"{package}.api_pb2")
        services = importlib.import_module(f"{package}.api_pb2_grpc")
    except ImportError as exc:
        raise error(
            f"{what} stubs are not generated ({exc}); run: python -m {package}.gen"
        ) from exc
    return Api(pb, services)
