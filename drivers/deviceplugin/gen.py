"""Build step: generate the device-plugin gRPC stubs from ``api.proto`` with grpcio-tools.

``python -m drivers.deviceplugin.gen`` writes ``api_pb2.py``, ``api_pb2.pyi`` and
``api_pb2_grpc.py`` next to the proto (git-ignored). It regenerates only when an output
is missing or older than the proto, unless ``--force``; outputs are written to a
temporary directory and moved into place, so a concurrent reader never sees half a file.
grpcio-tools is a build/dev dependency: the plugin itself only needs grpcio and protobuf.
A wheel build runs it first (``packaging/build/edgefed_build.py``, the build backend).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from edgefed.errors import DriverError

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO = PACKAGE_DIR / "api.proto"
OUTPUTS = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def _up_to_date() -> bool:
    proto_mtime = PROTO.stat().st_mtime
    outputs = [PACKAGE_DIR / name for name in OUTPUTS]
    return all(p.is_file() and p.stat().st_mtime >= proto_mtime for p in outputs)


def generate(force: bool = False) -> list[Path]:
    """Generate the stubs if needed; returns their paths. DriverError names what failed."""
    if not PROTO.is_file():
        raise DriverError(f"device-plugin proto missing: {PROTO}")
    outputs = [PACKAGE_DIR / name for name in OUTPUTS]
    if not force and _up_to_date():
        return outputs
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        raise DriverError(f"grpcio-tools is needed to generate the stubs: {exc}") from exc
    # the import root is the directory holding the top-level 'drivers' package, so the
    # generated grpc module imports its messages as drivers.deviceplugin.api_pb2
    import_root = PACKAGE_DIR.parents[1]
    relative_proto = PROTO.relative_to(import_root)
    well_known = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="edgefed-dp-gen-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{import_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(relative_proto),
        ]
        if protoc.main(args) != 0:
            raise DriverError(f"protoc failed on {PROTO} (see its message above)")
        generated = Path(tmp) / relative_proto.parent
        for name in OUTPUTS:
            staged = PACKAGE_DIR / f".{name}.tmp"
            staged.write_bytes((generated / name).read_bytes())
            os.replace(staged, PACKAGE_DIR / name)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drivers.deviceplugin.gen", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    try:
        paths = generate(force=args.force)
    except DriverError as exc:
        print(f"gen: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
