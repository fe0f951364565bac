"""MJPEG over HTTP (``multipart/x-mixed-replace``): the part writer and a client-side reader.

Each part carries its Content-Length and is followed at once by the next boundary, so
a browser shows a frame as soon as it arrives instead of when the next one starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

BOUNDARY = "frame"
CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
OPENING = f"--{BOUNDARY}\r\n".encode()
_CLOSING = f"\r\n--{BOUNDARY}\r\n".encode()


def part(jpeg: bytes) -> bytes:
    """One JPEG part, ending with the boundary of the next one."""
    head = f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return head + jpeg + _CLOSING


async def read_parts(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The JPEG bodies of an MJPEG response, as they arrive (ends with the stream)."""
    content = response.content
    if await content.readline() != OPENING:
        raise ValueError("not an MJPEG stream with boundary 'frame'")
    while True:
        length = None
        while (line := await content.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if not line:
            return
        if length is None:
            raise ValueError("MJPEG part without Content-Length")
        body = await content.readexactly(length)
        if await content.readexactly(len(_CLOSING)) != _CLOSING:
            raise ValueError("MJPEG part not followed by the boundary")
        yield body
