"""The DMI v1beta1 constants and the generated stubs.

``load()`` imports the stubs with a clear error when they were not generated.
"""

from __future__ import annotations

from edgefed.errors import ConfigError
from edgefed.stubs import Api, load_stubs

API_VERSION = "v1beta1"
EDGECORE_SOCKET = "/etc/kubeedge/dmi.sock"
"""Where EdgeCore serves ``DeviceManagerService`` (edgecore.yaml ``deviceTwin.dmiSockPath``)."""
SOCKET_DIR = "/etc/kubeedge"
"""Where mappers put their own socket by convention (``<protocol>.sock``)."""


def load() -> Api:
    """Import the generated stubs; ConfigError says how to generate them if missing."""
    return load_stubs("edgefed.dmi", ConfigError, "DMI")
