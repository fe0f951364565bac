"""Who may call a supervised Triton: every API of its HTTP and gRPC ports needs a key.

Triton listens on 127.0.0.1, where any local user reaches it; with every API open one
could register a system shared-memory region naming a /dev/shm object Triton can open
and have inference outputs written into it, unload models, change logging and trace
settings, or infer past serverd's priorities and shedding. So each start of a supervised
Triton restricts all its API groups (``APIS``, as ``tritonserver --help`` of Triton 2.51
lists them) to a header carrying a fresh random key: ``--http-restricted-api`` and
``--grpc-restricted-protocol``, both ``<apis>:<header>=<value>`` (the help's prose says
``<apis>,<header>=<value>``, which the binary refuses). serverd's own calls send it: its
ready check (HTTP health), and its gRPC client (inference, health, and the repository
index when it must learn an instance's models). The metrics port has no such flag; it is
read-only and stays on loopback for serverd's scraper.

On gRPC Triton expects the header with a ``triton-grpc-protocol-`` prefix. Refused calls
get HTTP 403, or gRPC UNAVAILABLE "This protocol is restricted".

The key is on Triton's command line, which every local user can read in /proc unless
/proc is mounted with ``hidepid=invisible`` (docs/security.md): the key keeps out callers
that cannot read serverd's processes (other containers or pods on the network namespace,
browsers and SSRF, sandboxed processes), not a local user of a host without ``hidepid``.

serverd's ``TritonEndpoint`` of a supervised Triton reads the headers from its
``TritonProcess`` at each call, so it sends the current key, a new one after a restart.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

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


def new_key() -> str:
    """A fresh random key (64 hex digits), one per start of Triton."""
    return secrets.token_hex(32)


def restriction_args(key: str, apis: Sequence[str] = APIS) -> list[str]:
    """The ``tritonserver`` flags that refuse ``apis`` to a call without ``key``."""
    groups = ",".join(apis)
    return [
        f"--http-restricted-api={groups}:{HEADER}={key}",
        f"--grpc-restricted-protocol={groups}:{HEADER}={key}",
    ]


def key_file_headers(path: Path) -> Callable[[], dict[str, str]]:
    """The gRPC headers of an external Triton whose key is in ``path`` (another serverd's
    ``local-<i>.key``, a mounted Secret), read again when the file changes (a restart
    writes a new key); a file that cannot be read sends none, and that Triton refuses
    the call as it would any other."""
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
