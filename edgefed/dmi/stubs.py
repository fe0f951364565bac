"""The DMI v1beta1 constants and the generated stubs.

``load()`` imports the stubs with a clear error when they were not generated.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from edgefed.errors import ConfigError

API_VERSION = "v1beta1"
EDGECORE_SOCKET = "/etc/kubeedge/dmi.sock"
"""Where EdgeCore serves ``DeviceManagerService`` (edgecore.yaml ``deviceTwin.dmiSockPath``)."""
SOCKET_DIR = "/etc/kubeedge"
"""Where mappers put their own socket by convention (``<protocol>.sock``)."""


@dataclass(frozen=True)
class Api:
    """The generated message module (``pb``) and service module (``grpc``)."""

    pb: ModuleType
    grpc: ModuleType


def load() -> Api:
    """Import the generated stubs; ConfigError says how to generate them if missing."""
    try:
        pb = importlib.import_module("edgefed.dmi.api_pb2")
        services = importlib.import_module("edgefed.dmi.api_pb2_grpc")
    except ImportError as exc:
        raise ConfigError(
            f"DMI stubs are not generated ({exc}); run: python -m edgefed.dmi.gen"
        ) from exc
    return Api(pb, services)
