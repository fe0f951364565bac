"""Free TCP ports on the loopback interface (Triton's ports, test brokers, the demo)."""

from __future__ import annotations

import socket


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it can be bound on 127.0.0.1 now, else a port the kernel picks.

    The port is free when this returns; a process that binds it later may still lose a
    race to another, which callers on a shared machine retry or accept."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port on 127.0.0.1")
