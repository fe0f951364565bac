"""Simulated edge devices for ``python -m bench fleet``: many per process, on asyncio.

Each device is its own MQTT connection (client id ``fleet-<device>``), subscribes to its
own reply topic and publishes requests on its own request topic, framed by the real wire
contract (``edgefed.wire``): a JPEG body, a priority, a deadline. Offloads arrive as a
Poisson process at the given rate per device. paho runs a thread and a socket loop per
client, too heavy for a thousand clients on two cores, so the devices speak MQTT 3.1.1
themselves: CONNECT, SUBSCRIBE, PUBLISH at QoS 1 both ways with PUBACKs, TCP_NODELAY, no
TLS, no keep-alive (a step lasts seconds). Run as ``python -m bench._fleet_devices``
with one JSON argument; prints one JSON report when the step is over.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from edgefed.clock import now_ms
from edgefed.errors import ProtocolError
from edgefed.wire import (
    OffloadErrorMessage,
    OffloadRequest,
    OffloadResult,
    Topics,
    decode_reply,
    encode_request,
    new_job_id,
)

DRAIN_S = 6.0  # after the last request: answers still due (the job lifetime is 5 s)


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _length(len(body)) + body


class Device:
    """One simulated device: its connection, its jobs in flight and what it measured."""

    def __init__(self, device_id: str, step: dict[str, Any], jpegs: list[bytes]) -> None:
        self.device_id = device_id
        self.step = step
        self.jpegs = jpegs
        self.topics = Topics()
        self.sent: dict[str, tuple[float, int]] = {}  # job id -> (perf_counter, priority)
        self.rtt: dict[int, list[float]] = {}
        self.shed: dict[int, int] = {}
        self.errors = 0
        self.offered = 0
        self.completed = 0
        self._pid = 0
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer = writer
        client_id = "fleet-" + self.device_id.replace("/", "-")
        connect = _string("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 0) + _string(client_id)
        writer.write(_packet(0x10, connect))
        kind, body = await self._read(reader)
        if kind != 0x20 or body[1] != 0:
            raise SystemExit(f"{self.device_id}: broker refused the connection ({body!r})")
        subscribe = struct.pack(">H", self._next_pid()) + _string(self.topics.reply(self.device_id))
        writer.write(_packet(0x82, subscribe + b"\x01"))
        kind, _ = await self._read(reader)
        if kind != 0x90:
            raise SystemExit(f"{self.device_id}: no SUBACK")
        self._reader_task = asyncio.create_task(self._receive(reader), name=self.device_id)

    def _next_pid(self) -> int:
        self._pid = self._pid % 65535 + 1
        return self._pid

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, await reader.readexactly(length)

    async def _receive(self, reader: asyncio.StreamReader) -> None:
        writer = self._writer
        assert writer is not None
        while True:
            try:
                first, body = await self._read(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if first >> 4 == 3:  # a PUBLISH (the broker's PUBACKs need nothing)
                (topic_len,) = struct.unpack_from(">H", body)
                at = 2 + topic_len
                if (first >> 1) & 3:
                    writer.write(_packet(0x40, body[at : at + 2]))
                    at += 2
                self._reply(body[at:])

    def _reply(self, payload: bytes) -> None:
        try:
            reply = decode_reply(payload)
        except ProtocolError:
            self.errors += 1
            return
        if not isinstance(reply, OffloadResult | OffloadErrorMessage):
            return
        sent = self.sent.pop(reply.job_id, None)
        if sent is None:
            return
        started, priority = sent
        if isinstance(reply, OffloadResult):
            self.completed += 1
            ms = (time.perf_counter() - started) * 1000
            self.rtt.setdefault(priority, []).append(round(ms, 3))
        elif reply.code == "shed":
            self.shed[priority] = self.shed.get(priority, 0) + 1
        else:
            self.errors += 1

    async def run(self, until: float, rng: random.Random) -> None:
        rate = float(self.step["rate"])
        high_share = float(self.step["high_share"])
        while True:
            at = time.perf_counter() + rng.expovariate(rate)
            if at >= until:
                return
            await asyncio.sleep(at - time.perf_counter())
            self._send(5 if rng.random() < high_share else 0, rng.choice(self.jpegs))

    def _send(self, priority: int, jpeg: bytes) -> None:
        created = now_ms()
        request = OffloadRequest(
            job_id=new_job_id(),
            device_id=self.device_id,
            model=str(self.step["model"]),
            priority=priority,
            deadline=created + 5000,
            created=created,
            payload_kind="jpeg",
        )
        frame = encode_request(request, jpeg)
        publish = _string(self.topics.request(self.device_id)) + struct.pack(">H", self._next_pid())
        assert self._writer is not None
        self.sent[request.job_id] = (time.perf_counter(), priority)
        self.offered += 1
        self._writer.write(_packet(0x32, publish + frame))

    def close(self) -> None:
        self._reader_task.cancel()
        if self._writer is not None:
            self._writer.write(b"\xe0\x00")  # DISCONNECT
            self._writer.close()


async def run_step(step: dict[str, Any]) -> dict[str, Any]:
    jpegs = [p.read_bytes() for p in sorted(Path(step["jpeg_dir"]).glob("*.jpg"))]
    devices = [Device(d, step, jpegs) for d in step["device_ids"]]
    for i in range(0, len(devices), 50):  # connect in batches: no SYN flood on the broker
        await asyncio.gather(*(d.connect(int(step["port"])) for d in devices[i : i + 50]))
    print("connected", flush=True)
    sys.stdin.readline()  # every worker is connected: the step starts
    rng = random.Random(step["seed"])
    until = time.perf_counter() + float(step["duration_s"])
    await asyncio.gather(*(d.run(until, random.Random(rng.random())) for d in devices))
    drain_until = time.perf_counter() + DRAIN_S
    while any(d.sent for d in devices) and time.perf_counter() < drain_until:
        await asyncio.sleep(0.1)
    for d in devices:
        d.close()
    rtt: dict[int, list[float]] = {}
    shed: dict[int, int] = {}
    for d in devices:
        for priority, values in d.rtt.items():
            rtt.setdefault(priority, []).extend(values)
        for priority, count in d.shed.items():
            shed[priority] = shed.get(priority, 0) + count
    return {
        "rtt_ms": rtt,
        "shed": shed,
        "offered": [d.offered for d in devices],
        "completed": [d.completed for d in devices],
        "lost": sum(len(d.sent) for d in devices),
        "errors": sum(d.errors for d in devices),
    }


def main() -> None:
    step = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(run_step(step))), flush=True)


if __name__ == "__main__":
    main()
