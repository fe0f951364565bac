"""Build step shared by the gRPC APIs we speak: generate Python stubs from a ``.proto``.

``generate(proto)`` writes ``<stem>_pb2.py``, ``<stem>_pb2.pyi`` and ``<stem>_pb2_grpc.py``
next to the proto (git-ignored) with grpcio-tools. It regenerates only when an output is
missing or older than the proto, unless ``force``; outputs are written to a temporary
directory and moved into place, so a concurrent reader never sees half a file.
grpcio-tools is a build/dev dependency: the daemons only need grpcio and protobuf.

``private_pool``: protobuf keeps one symbol per full name in its default descriptor
pool, and two upstream APIs we speak both declare ``package v1beta1`` with a message
``Device`` (the kubelet device-plugin API and KubeEdge's DMI), so importing both in one
process fails with "duplicate symbol 'v1beta1.Device'". The package name cannot change
(it is part of every gRPC method path), so the DMI stubs register their descriptors in a
pool of their own: the one line of the generated ``_pb2.py`` that adds the file to
``descriptor_pool.Default()`` is rewritten to add it, after the well-known files it
imports, to a private pool. Messages, wire format and the ``_pb2_grpc`` module are
unchanged.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from edgefed.errors import EdgeFedError

_DEFAULT_POOL_LINE = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_WELL_KNOWN_IMPORT = re.compile(r"^from google\.protobuf import \w+_pb2 as (\w+)$", re.MULTILINE)


def outputs(proto: Path) -> list[Path]:
    """The files ``generate`` writes for ``proto``."""
    stem = proto.stem
    return [
        proto.with_name(f"{stem}{suffix}") for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    ]


def _up_to_date(proto: Path) -> bool:
    proto_mtime = proto.stat().st_mtime
    return all(p.is_file() and p.stat().st_mtime >= proto_mtime for p in outputs(proto))


def _to_private_pool(source: str, proto: Path) -> str:
    if source.count(_DEFAULT_POOL_LINE) != 1:
        raise EdgeFedError(
            f"cannot move {proto.name}'s descriptors to a private pool: the generated code "
            "no longer has exactly one default-pool registration (protobuf changed its output)"
        )
    dependencies = _WELL_KNOWN_IMPORT.findall(source)
    lines = ["_PRIVATE_POOL = _descriptor_pool.DescriptorPool()  # see edgefed/protogen.py"]
    lines += [
        f"_PRIVATE_POOL.AddSerializedFile({d}.DESCRIPTOR.serialized_pb)" for d in dependencies
    ]
    lines.append("DESCRIPTOR = _PRIVATE_POOL.AddSerializedFile(")
    return source.replace(_DEFAULT_POOL_LINE, "\n".join(lines))


def generate(proto: Path, force: bool = False, private_pool: bool = False) -> list[Path]:
    """Generate the stubs of ``proto`` if needed; their paths. EdgeFedError names what failed.

    The import root is the directory above the top-level package holding ``proto``, so a
    generated grpc module imports its messages by their full module name.
    """
    if not proto.is_file():
        raise EdgeFedError(f"proto missing: {proto}")
    paths = outputs(proto)
    if not force and _up_to_date(proto):
        return paths
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        raise EdgeFedError(f"grpcio-tools is needed to generate the stubs: {exc}") from exc
    import_root = _package_root(proto).parent
    relative_proto = proto.relative_to(import_root)
    well_known = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="edgefed-protogen-") as tmp:
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
            raise EdgeFedError(f"protoc failed on {proto} (see its message above)")
        generated = Path(tmp) / relative_proto.parent
        for path in paths:
            content = (generated / path.name).read_text(encoding="utf-8")
            if private_pool and path.name.endswith("_pb2.py"):
                content = _to_private_pool(content, proto)
            # per process: two generating at once (test workers) each move in a whole file
            staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            staged.write_text(content, encoding="utf-8")
            os.replace(staged, path)
    return paths


def _package_root(proto: Path) -> Path:
    """The top-level package directory holding ``proto`` (the highest with __init__.py)."""
    root = proto.parent
    while (root.parent / "__init__.py").is_file():
        root = root.parent
    return root


def main(proto: Path, argv: list[str] | None, prog: str, private_pool: bool = False) -> int:
    """The command line of a ``gen`` module: print the stub paths, or the error and 1."""
    parser = argparse.ArgumentParser(prog=prog, description=f"Generate the gRPC stubs of {proto}")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    try:
        paths = generate(proto, force=args.force, private_pool=private_pool)
    except EdgeFedError as exc:
        print(f"gen: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
