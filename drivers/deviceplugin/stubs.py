"""The v1beta1 API: its constants (constants.go upstream) and the generated stubs.

``load()`` imports the stubs with a clear error when they were not generated.
"""

from __future__ import annotations

from edgefed.errors import DriverError
from edgefed.stubs import Api, load_stubs

API_VERSION = "v1beta1"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_SOCKET_DIR = "/var/lib/kubelet/device-plugins"


def load() -> Api:
    """Import the generated stubs; DriverError says how to generate them if missing."""
    return load_stubs("drivers.deviceplugin", DriverError, "device-plugin")
