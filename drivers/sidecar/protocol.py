"""The side-car channel: JSON headers framed by length on a socket, tensors in shared memory.

Nothing on the channel is pickled. A message is a 4-byte big-endian length and a JSON
object of at most ``MAX_HEADER`` bytes. Tensors travel in a POSIX shared-memory segment
that the sender owns; the header names the segment and gives each tensor's name, dtype,
shape and byte offset, so the receiver maps them as numpy arrays without a copy. Numbers
are in the machine's byte order (a dtype name does not say): the sender swaps others.
Segments are created mode 0600 by the sending process and found only by their random
name, which crosses the private socket pair between the two processes.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import struct
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from edgefed.driver import DeviceInfo, TensorSpec
from edgefed.errors import DriverError

MAX_HEADER = 1 << 20
_LENGTH = struct.Struct("!I")
_ALIGN = 64  # every tensor starts on a cache line
# numpy dtypes that may cross the channel: plain numbers, never object arrays
DTYPES = frozenset(
    ["float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]
)


class ChannelClosed(DriverError):
    """The other end closed the channel (it exited or was killed)."""


def send(sock: socket.socket, header: dict[str, Any]) -> None:
    body = json.dumps(header, separators=(",", ":")).encode()
    if len(body) > MAX_HEADER:
        raise DriverError(f"side-car header of {len(body)} bytes is over {MAX_HEADER}")
    sock.sendall(_LENGTH.pack(len(body)) + body)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ChannelClosed("side-car channel closed")
        chunks += chunk
    return bytes(chunks)


def receive(sock: socket.socket) -> dict[str, Any]:
    """One header; ``TimeoutError`` if the socket's timeout passes, ChannelClosed on EOF."""
    (size,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    if size > MAX_HEADER:
        raise DriverError(f"side-car sent a header of {size} bytes (limit {MAX_HEADER})")
    try:
        header = json.loads(_recv_exact(sock, size))
    except ValueError as exc:
        raise DriverError(f"side-car sent a malformed header: {exc}") from exc
    if not isinstance(header, dict):
        raise DriverError("side-car sent a header that is not a JSON object")
    return header


def attach(name: str) -> shared_memory.SharedMemory:
    """Map the other process's segment without adopting it (Python 3.11's SharedMemory
    registers even attached segments with this process's resource tracker, which would
    unlink them when this process exits)."""
    segment = shared_memory.SharedMemory(name=name)
    resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
    return segment


def _aligned(size: int) -> int:
    return (size + _ALIGN - 1) // _ALIGN * _ALIGN


class Arena:
    """A growable segment this process writes tensors into (one call at a time)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._segment: shared_memory.SharedMemory | None = None

    def _reserve(self, size: int) -> shared_memory.SharedMemory:
        segment = self._segment
        if segment is None or segment.size < size:
            self.close()
            capacity = max(1 << 20, 1 << (size - 1).bit_length())
            name = f"{self._prefix}-{secrets.token_hex(8)}"
            segment = shared_memory.SharedMemory(name=name, create=True, size=capacity)
            self._segment = segment
        return segment

    def write(self, tensors: dict[str, np.ndarray]) -> dict[str, Any]:
        """Copy ``tensors`` into the segment; the header part that describes them."""
        layout, offset = [], 0
        for name, value in tensors.items():
            array = np.asarray(value)
            if array.dtype.name not in DTYPES:
                raise DriverError(f"tensor {name!r} has dtype {array.dtype}, not a number type")
            layout.append((name, array, offset))
            offset = _aligned(offset + array.nbytes)
        segment = self._reserve(max(offset, 1))
        described = []
        for name, array, start in layout:
            # a dtype name says nothing of byte order: the reader maps native numbers, so a
            # big-endian tensor ('>f4', also 'float32') is swapped while it is copied in
            native = array.dtype.newbyteorder("=")
            view = np.ndarray(array.shape, native, buffer=segment.buf, offset=start)
            view[...] = array
            described.append(
                {
                    "name": name,
                    "dtype": array.dtype.name,
                    "shape": list(array.shape),
                    "offset": start,
                }
            )
        return {"shm": segment.name, "tensors": described}

    def close(self) -> None:
        if self._segment is not None:
            self._segment.close()
            self._segment.unlink()
            self._segment = None


class Reader:
    """Maps the other process's segments, keeping the current one attached."""

    def __init__(self) -> None:
        self._segment: shared_memory.SharedMemory | None = None

    def read(self, header: dict[str, Any], copy: bool) -> dict[str, np.ndarray]:
        """The tensors ``header`` describes; views into the segment unless ``copy``."""
        try:
            name, tensors = str(header["shm"]), header["tensors"]
            if self._segment is None or self._segment.name != name:
                self.close()
                self._segment = attach(name)
            buf = self._segment.buf
            out = {}
            for t in tensors:
                dtype = str(t["dtype"])
                if dtype not in DTYPES:
                    raise DriverError(f"tensor {t['name']!r}: dtype {dtype} is not allowed")
                view = np.ndarray(
                    tuple(t["shape"]), np.dtype(dtype), buffer=buf, offset=t["offset"]
                )
                out[str(t["name"])] = view.copy() if copy else view
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise DriverError(f"side-car tensors are malformed: {exc}") from exc
        return out

    def close(self) -> None:
        if self._segment is not None:
            # a view handed out may still be alive: then the mapping goes with it
            with contextlib.suppress(BufferError):
                self._segment.close()
            self._segment = None


def specs_to_json(specs: list[TensorSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in specs]


def specs_from_json(raw: list[dict[str, Any]]) -> list[TensorSpec]:
    return [
        TensorSpec(str(s["name"]), tuple(int(d) for d in s["shape"]), str(s["dtype"])) for s in raw
    ]


def devices_to_json(devices: list[DeviceInfo]) -> list[dict[str, Any]]:
    return [
        {"id": d.id, "model": d.model, "healthy": d.healthy, "detail": d.detail} for d in devices
    ]


def devices_from_json(raw: list[dict[str, Any]]) -> list[DeviceInfo]:
    return [
        DeviceInfo(str(d["id"]), str(d["model"]), bool(d["healthy"]), str(d["detail"])) for d in raw
    ]
