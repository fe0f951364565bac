"""The v1beta1 API: its constants (constants.go upstream) and the generated stubs.

``load()`` imports the stubs with a clear error when they were not generated.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from edgefed.errors import DriverError

API_VERSION = "v1beta1"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_SOCKET_DIR = "/var/lib/kubelet/device-plugins"


@dataclass(frozen=True)
class Api:
    """The generated message module (``pb``) and service module (``grpc``)."""

    pb: ModuleType
    grpc: ModuleType


def load() -> Api:
    """Import the generated stubs; DriverError says how to generate them if missing."""
    try:
        pb = importlib.import_module("drivers.deviceplugin.api_pb2")
        services = importlib.import_module("drivers.deviceplugin.api_pb2_grpc")
    except ImportError as exc:
        raise DriverError(
            f"device-plugin stubs are not generated ({exc}); "
            "run: python -m drivers.deviceplugin.gen"
        ) from exc
    return Api(pb, services)
