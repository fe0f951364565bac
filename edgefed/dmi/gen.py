"""Build step: generate the DMI gRPC stubs from ``api.proto`` (``python -m edgefed.dmi.gen``).

Writes ``api_pb2.py``, ``api_pb2.pyi`` and ``api_pb2_grpc.py`` next to the proto
(git-ignored) through ``edgefed.protogen``, with the descriptors in a private pool: the
DMI and the kubelet device-plugin API both declare ``v1beta1.Device`` (see protogen).
A wheel build runs it first (``packaging/build/edgefed_build.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from edgefed import protogen

PROTO = Path(__file__).resolve().parent / "api.proto"


def generate(force: bool = False) -> list[Path]:
    """Generate the stubs if needed; their paths. EdgeFedError names what failed."""
    return protogen.generate(PROTO, force=force, private_pool=True)


def main(argv: list[str] | None = None) -> int:
    return protogen.main(PROTO, argv, prog="python -m edgefed.dmi.gen", private_pool=True)


if __name__ == "__main__":
    sys.exit(main())
