"""Free TCP ports on the loopback interface (Triton's ports, test brokers, the demo)."""

from __future__ import annotations

import contextlib
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


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports, all held while they are picked: one ``free_port()``
    after another can be handed the same port twice, once the first socket is closed."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports
