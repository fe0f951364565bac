"""The key of an external Triton that restricts its APIs to a header.

serverd's own Tritons need no key: they are private (gRPC on a unix socket only
serverd's user reaches, ``supervisor``). An external Triton started with
``--grpc-restricted-protocol=<apis>:edgefed-triton-key=<key>`` (Triton 2.51's form; its
help's prose says ``<apis>,<header>=<value>``, which the binary refuses) refuses those
APIs to a call without the key, with gRPC UNAVAILABLE "This protocol is restricted".
An endpoint's ``key_file`` (config) holds that key; serverd sends it on every call. On
gRPC Triton expects the header with a ``triton-grpc-protocol-`` prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

HEADER = "edgefed-triton-key"
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"  # Triton's gRPC server adds this prefix
# Every API group of Triton 2.51's --http-restricted-api / --grpc-restricted-protocol
# (what the Kubernetes Triton restricts is checked against it).
APIS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)


def key_file_headers(path: Path) -> Callable[[], dict[str, str]]:
    """The gRPC headers of an external Triton whose key is in ``path`` (a mounted
    Secret, say), read again when the file changes (a rotated key); a file that cannot be
    read sends none, and that Triton refuses the call as it would any other."""
    seen: list[tuple[tuple[int, int], dict[str, str]]] = []

    def headers() -> dict[str, str]:
        try:
            found = path.stat()
            stamp = (found.st_ino, found.st_mtime_ns)  # a replaced file is a new inode
            if not seen or seen[0][0] != stamp:
                seen[:] = [(stamp, {GRPC_HEADER: path.read_text().strip()})]
        except OSError:
            return {}
        return seen[0][1]

    return headers
