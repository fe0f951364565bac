"""Free ports: the preferred one when free, and several at once never the same twice."""

from __future__ import annotations

import socket

from edgefed.ports import free_port, free_ports


def test_several_ports_at_once_are_distinct_and_free() -> None:
    """Triton's three ports came out of three free_port() calls, and the kernel may hand
    a just-closed port out again: Triton then refused to start (gRPC and metrics on one
    port). free_ports holds every socket until all are picked."""
    for _ in range(50):
        ports = free_ports(3)
        assert len(set(ports)) == 3
    held = []
    try:
        for port in free_ports(6):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind(("127.0.0.1", port))  # each one can be bound after the call
    finally:
        for s in held:
            s.close()


def test_the_preferred_port_is_taken_only_when_free() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        assert free_port(taken) != taken
    assert free_port(taken) == taken
