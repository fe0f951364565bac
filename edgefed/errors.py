"""The one exception tree of EdgeFed (edged, serverd and drivers).

Library errors are translated into these at the adapter that calls the library
(``raise DriverError(...) from exc``) so callers handle one documented tree.
Exit codes for fatal errors of the daemons are listed in ``EXIT_CODES``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class EdgeFedError(Exception):
    """Base of every error EdgeFed raises on purpose."""


class ConfigError(EdgeFedError):
    """A configuration file, environment override or twin value is invalid."""


class StartError(EdgeFedError):
    """A daemon could not start for a reason that may pass: its port in use, its address
    not up yet. Not a ``ConfigError``: systemd restarts it (``RestartPreventExitStatus``
    keeps only configuration errors from restarting)."""


class CaptureError(EdgeFedError):
    """A camera source cannot be opened or read."""


class DriverError(EdgeFedError):
    """A driver cannot list devices, load a model or run it."""


class ImageError(EdgeFedError):
    """A model image is missing, malformed, corrupt or badly signed."""


class ModelError(EdgeFedError):
    """Pre- or post-processing of a model failed on a given input."""


class OffloadError(EdgeFedError):
    """The offload path (outbox, MQTT, server) failed."""


class FederationError(EdgeFedError):
    """Federated learning refused a call: a round cannot open, a sample or an update is
    invalid, the sample store failed."""


class ProtocolError(OffloadError):
    """A wire message is malformed, oversized or of an unknown version."""


EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_IMAGE = 3
EXIT_DRIVER = 4
EXIT_RUNTIME = 5

EXIT_CODES = {
    EXIT_OK: "clean stop",
    EXIT_CONFIG: "invalid configuration",
    EXIT_IMAGE: "a model image failed verification",
    EXIT_DRIVER: "no driver could load a configured model",
    EXIT_RUNTIME: "unexpected runtime failure",
}


_KINDS: tuple[tuple[type[EdgeFedError], str, int], ...] = (
    (ConfigError, "invalid configuration: ", EXIT_CONFIG),
    (ImageError, "model image error: ", EXIT_IMAGE),
    (DriverError, "driver error: ", EXIT_DRIVER),
    (CaptureError, "camera error: ", EXIT_RUNTIME),
    (StartError, "cannot start: ", EXIT_RUNTIME),
    (EdgeFedError, "", EXIT_RUNTIME),
)


def describe_fatal(exc: EdgeFedError) -> tuple[str, int]:
    """The one-line message and documented exit code of a fatal error (both CLIs use it)."""
    for kind, label, code in _KINDS:
        if isinstance(exc, kind):
            return f"{label}{exc}", code
    raise AssertionError("unreachable: EdgeFedError matches the last entry")


def run_command(prog: str, command: Callable[[], int]) -> int:
    """Run a CLI command; a fatal EdgeFedError becomes one stderr line and its exit code."""
    try:
        return command()
    except EdgeFedError as exc:
        message, code = describe_fatal(exc)
        print(f"{prog}: {message}", file=sys.stderr)
        return code
