"""Keys for Tritons that serverd calls but does not start (a Kubernetes Deployment, say).

serverd's own Tritons need no key: they are private (gRPC on a unix socket only
serverd's user reaches, ``supervisor``). A Triton on the network restricts its API
groups to a header carrying a key: ``--http-restricted-api`` and
``--grpc-restricted-protocol``, both ``<apis>:<header>=<value>`` (Triton 2.51's form; its
help's prose says ``<apis>,<header>=<value>``, which the binary refuses); a refused call
gets HTTP 403, or gRPC UNAVAILABLE "This protocol is restricted". ``serverd
tritonserver`` (the Triton image's entry point) adds them (``restriction_args``): with
``--key-file`` every group but health needs that key, which serverd sends from its
endpoint's ``key_file`` (``key_file_headers``); without, the groups serverd never calls
need a random key nobody holds. On gRPC Triton expects the header with a
``triton-grpc-protocol-`` prefix.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from edgefed.errors import ConfigError

HEADER = "edgefed-triton-key"
GRPC_HEADER = f"triton-grpc-protocol-{HEADER}"  # Triton's gRPC server adds this prefix
# Every API group of Triton 2.51's --http-restricted-api / --grpc-restricted-protocol.
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
OPEN = ("health",)  # the kubelet's probes send no header
SERVERD_CALLS = ("health", "inference", "model-repository")  # serverd/triton/client.py
KEY_MIN_CHARS = 32


def restriction_args(key: str, apis: Sequence[str]) -> list[str]:
    """The ``tritonserver`` flags that refuse ``apis`` to a call without ``key``."""
    groups = ",".join(apis)
    return [
        f"--http-restricted-api={groups}:{HEADER}={key}",
        f"--grpc-restricted-protocol={groups}:{HEADER}={key}",
    ]


def entry_point_restriction(key_file: Path | None) -> list[str]:
    """What ``serverd tritonserver`` restricts: with ``key_file`` every API group but
    health needs its key; without, the groups serverd never calls need a random key
    nobody holds. ConfigError if the file cannot be read or holds too short a key."""
    if key_file is None:
        return restriction_args(secrets.token_hex(32), [a for a in APIS if a not in SERVERD_CALLS])
    try:
        key = key_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--key-file {key_file}: cannot read it: {exc}") from exc
    if len(key) < KEY_MIN_CHARS or any(c.isspace() or c in ",:=" for c in key):
        raise ConfigError(
            f"--key-file {key_file}: the key must be at least {KEY_MIN_CHARS} characters "
            "without spaces, ',', ':' or '=' (e.g. openssl rand -hex 32)"
        )
    return restriction_args(key, [a for a in APIS if a not in OPEN])


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
