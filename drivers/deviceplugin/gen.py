"""Build step: generate the device-plugin gRPC stubs from ``api.proto`` with grpcio-tools.

``python -m drivers.deviceplugin.gen`` writes ``api_pb2.py``, ``api_pb2.pyi`` and
``api_pb2_grpc.py`` next to the proto (git-ignored), through ``edgefed.protogen`` (which
regenerates only when needed, unless ``--force``). grpcio-tools is a build/dev
dependency: the plugin itself only needs grpcio and protobuf. A wheel build runs it
first (``packaging/build/edgefed_build.py``, the build backend).
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgefed import protogen
from edgefed.errors import DriverError, EdgeFedError

PROTO = Path(__file__).resolve().parent / "api.proto"


def generate(force: bool = False) -> list[Path]:
    """Generate the stubs if needed; returns their paths. DriverError names what failed."""
    try:
        return protogen.generate(PROTO, force=force)
    except EdgeFedError as exc:
        raise DriverError(f"device-plugin stubs: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    return protogen.main(PROTO, argv, prog="python -m drivers.deviceplugin.gen")


if __name__ == "__main__":
    sys.exit(main())
