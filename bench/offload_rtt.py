"""``python -m bench offload-rtt``: edge -> server -> edge round trip on loopback.

Brings up a private mosquitto (TCP_NODELAY) and ``serverd run`` as its own process with
one supervised Triton serving the demo detector (``pose_detector`` through the npu
backend) and the ``echo`` model (no model: the system's own overhead). The edge side is
edged's real offload client (``edged.offload.OffloadClient``: SQLite outbox, MQTT QoS 1,
result matched by job id). One job at a time; the time is from ``submit`` to the outcome.

Requests are 640x480 JPEG frames of vtest.avi. In the same run, detector round trips
alternate with direct tritonclient gRPC calls of the same model on the same Triton with
the same frames, so ``overhead_ratio`` (detector round-trip p50 / direct p50) compares
like with like. ``tiny_bare_publisher_*`` time the same echo jobs sent by a bare MQTT
publisher on the wire contract (no outbox), which separates serverd's share from the
edge client's. Two floors are measured in the same run, so that a target can be set
against what its parts cost on the machine at hand: ``mqtt_floor_*``, the same frames
through the same broker to a responder process that answers each with a short message
on paho's thread (the two MQTT legs alone, on the same MQTT stack as serverd), and
``echo_direct_*``, a direct tritonclient call of the ``echo`` model (Triton and its
python backend alone). ``tiny_crop_*`` times the same echo jobs through edged's client
with a 128x128 crop of each frame instead of the frame (what a small model is sent), which
separates the per-message cost from the per-byte one; the target is on the frames.
``tiny_consecutive_*`` times the same echo jobs one after another, with no other series in
between (a pipeline offloading frame after frame), and ``tiny_consecutive_cpu_ms_per_job``
the CPU time each part (edge, serverd, Triton with its python stubs, mosquitto) spent per
job of that series; ``tiny_*`` is the interleaved series.
The original project's target for the round trip is 80 ms (over 5G).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import tritonclient.grpc as grpcclient
import yaml

from bench.gating import VTEST
from edged.netloop import NetLoop
from edged.offload.client import JobOutcome, OffloadClient
from edged.offload.outbox import Outbox
from edged.offload.records import OutboxConfig
from edgefed import paths
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.wire import (
    OffloadResult,
    Topics,
    decode_availability,
    decode_reply,
    encode_request,
)

REPO = Path(__file__).resolve().parents[1]
IMAGES_DIR = REPO / paths.images_dir()  # $EDGEFED_IMAGES_DIR or the checkout's build dir
SERVER_ID = "bench-server"
RAW_DEVICE = "bench-raw"
FLOOR_REQUEST = "bench/floor/request"
FLOOR_REPLY = "bench/floor/reply"
TARGET_MS = 80.0
TARGETS = {"tiny_p99_ms": 5.0, "detector_p99_ms": 30.0, "overhead_ratio": 1.5}


def frames(count: int, quality: int) -> list[bytes]:
    """``count`` 640x480 JPEG frames spread over vtest.avi."""
    capture = cv2.VideoCapture(str(VTEST))
    out: list[bytes] = []
    step = max(1, 795 // count)
    index = 0
    while len(out) < count:
        ok, image = capture.read()
        if not ok:
            break
        if index % step == 0:
            out.append(jpeg_of(cv2.resize(image, (640, 480)), quality))
        index += 1
    capture.release()
    if not out:
        raise SystemExit(f"cannot read frames from {VTEST}")
    return out


def crops(jpegs: list[bytes], size: int, quality: int) -> list[bytes]:
    """The centre ``size`` x ``size`` crop of each frame, as JPEG."""
    out: list[bytes] = []
    for jpeg in jpegs:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        out.append(jpeg_of(image[top : top + size, left : left + size], quality))
    return out


def jpeg_of(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SystemExit("OpenCV could not encode a JPEG")
    return bytes(data.tobytes())


def free_block(size: int = 3) -> int:
    """A base port with ``size`` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + size > 65000:
            continue
        try:
            socks = []
            for port in range(base, base + size):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise SystemExit("no block of free ports found")


def write_config(directory: Path, mqtt_port: int, base_port: int, threads: int) -> Path:
    config = {
        "server_id": SERVER_ID,
        "log_level": "WARNING",
        "state_dir": str(directory / "serverd"),
        "mqtt": {"port": mqtt_port, "client_id": "serverd-bench"},
        "api": {"port": 0},
        "images": {
            "dir": str(IMAGES_DIR),
            "trusted_keys": [str(IMAGES_DIR / "keys" / "dev-signing.pub")],
        },
        "triton": {
            "venv": str(REPO / paths.triton_venv()),
            "instances": 1,
            "base_port": base_port,
            "models": [
                {
                    "name": "detector",
                    "image": "pose_detector",
                    "driver": {"type": "litert", "num_threads": threads},
                },
                {"name": "echo", "backend": "echo"},
            ],
        },
    }
    path = directory / "serverd.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def respond(port: int) -> None:
    """The MQTT floor's responder (its own process): answer each frame with 64 bytes."""
    mqtt = MqttClient(MqttConfig(port=port, client_id="bench-floor-responder"))
    mqtt.subscribe(FLOOR_REQUEST, lambda _t, data: mqtt.publish(FLOOR_REPLY, data[:64]))
    mqtt.start()
    if not mqtt.wait_connected(30):
        raise SystemExit("floor responder: no broker")
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes the pipe
    mqtt.stop()


class Edge:
    """edged's offload client on edged's network loop, with a blocking ``round_trip``."""

    def __init__(self, port: int, directory: Path) -> None:
        self._done: dict[str, threading.Event] = {}
        self._outcomes: dict[str, JobOutcome] = {}
        self.net = NetLoop(MqttClient(MqttConfig(port=port, client_id="bench-edge")))
        self.mqtt = self.net.mqtt
        self.outbox = Outbox(OutboxConfig(path=directory / "outbox.sqlite"))
        self.client = OffloadClient("bench-cam", self.net, self.outbox, on_outcome=self._on)
        server_online = threading.Event()

        def on_availability(_topic: str, data: bytes) -> None:
            if decode_availability(data).state == "online":
                server_online.set()

        self.mqtt.subscribe(Topics().server_availability(SERVER_ID), on_availability)
        self._raw: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.mqtt.subscribe(Topics().reply(RAW_DEVICE), lambda _t, data: self._raw.put(data))
        self._floor: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.mqtt.subscribe(FLOOR_REPLY, lambda _t, data: self._floor.put(data))
        self.client.start()
        self.net.start()
        if not server_online.wait(180):
            raise SystemExit("serverd did not announce itself online")

    def _on(self, outcome: JobOutcome) -> None:
        self._outcomes[outcome.job_id] = outcome
        self._done[outcome.job_id].set()

    def round_trip(self, model: str, jpeg: bytes) -> tuple[float, dict[str, float]]:
        request = self.client.make_request(model, "jpeg", ttl_s=30)
        event = self._done[request.job_id] = threading.Event()
        start = time.perf_counter()
        self.client.submit(request, jpeg)
        if not event.wait(30):
            raise SystemExit(f"no answer for a {model} job within 30 s")
        elapsed = (time.perf_counter() - start) * 1000
        outcome = self._outcomes.pop(request.job_id)
        del self._done[request.job_id]
        if outcome.result is None:
            raise SystemExit(f"{model} job closed {outcome.status}: {outcome.reason}")
        return elapsed, outcome.result.timings_ms

    def raw_round_trip(self, model: str, jpeg: bytes) -> float:
        """The same job from a bare publisher (no outbox): serverd's share of the time."""
        request = self.client.make_request(model, "jpeg", ttl_s=30)
        request = request.model_copy(update={"device_id": RAW_DEVICE})
        start = time.perf_counter()
        self.mqtt.publish(Topics().request(RAW_DEVICE), encode_request(request, jpeg))
        while True:
            reply = decode_reply(self._raw.get(timeout=30))
            if isinstance(reply, OffloadResult) and reply.job_id == request.job_id:
                return (time.perf_counter() - start) * 1000

    def floor_round_trip(self, jpeg: bytes) -> float:
        """The same frame to the floor responder and back: the MQTT legs alone."""
        start = time.perf_counter()
        self.mqtt.publish(FLOOR_REQUEST, jpeg)
        self._floor.get(timeout=30)
        return (time.perf_counter() - start) * 1000

    def close(self) -> None:
        self.client.stop()
        self.net.stop()
        self.outbox.close()


def direct_call(url: str) -> Callable[[str, bytes], float]:
    """Calls of serverd's Triton at ``url``: its unix socket, which this benchmark may open
    as serverd's own user."""
    client = grpcclient.InferenceServerClient(url)

    def call(model: str, jpeg: bytes) -> float:
        tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[jpeg]], dtype=np.object_))
        start = time.perf_counter()
        client.infer(model, [tensor])
        return (time.perf_counter() - start) * 1000

    return call


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3)


def processes(serverd: int, broker: int | None) -> dict[str, list[int]]:
    """The pids of each part: this process (the edge), serverd, its Tritons with their
    python stubs, and mosquitto."""
    triton = [p.pid for p in psutil.Process(serverd).children(recursive=True)]
    return {
        "edge": [os.getpid()],
        "serverd": [serverd],
        "triton": triton,
        "mosquitto": [broker] if broker is not None else [],
    }


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU time (user + system) used so far by each part's processes."""
    out: dict[str, float] = {}
    for name, group in pids.items():
        out[name] = 0.0
        for pid in group:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                out[name] += times.user + times.system
    return out


def measure(
    edge: Edge,
    direct: Callable[[str, bytes], float],
    jpegs: list[bytes],
    small: list[bytes],
    n: int,
    pids: dict[str, list[int]],
) -> dict[str, Any]:
    for i in range(20):  # warm-up: connections, interpreters, caches
        jpeg = jpegs[i % len(jpegs)]
        edge.round_trip("echo", jpeg)
        edge.round_trip("detector", jpeg)
        direct("detector", jpeg)
        direct("echo", jpeg)
        edge.floor_round_trip(jpeg)
    tiny: list[float] = []
    tiny_raw: list[float] = []
    tiny_crop: list[float] = []
    tiny_server: dict[str, list[float]] = {}
    mqtt_floor: list[float] = []
    echo_direct: list[float] = []
    for i in range(n):  # the series interleaved, so that a busy spell hits them all
        jpeg = jpegs[i % len(jpegs)]
        ms, timings = edge.round_trip("echo", jpeg)
        tiny.append(ms)
        for key, value in timings.items():
            tiny_server.setdefault(key, []).append(value)
        tiny_raw.append(edge.raw_round_trip("echo", jpeg))
        tiny_crop.append(edge.round_trip("echo", small[i % len(small)])[0])
        mqtt_floor.append(edge.floor_round_trip(jpeg))
        echo_direct.append(direct("echo", jpeg))
    # the same echo jobs one after another, as a pipeline offloading frame after frame
    before = cpu_seconds(pids)
    consecutive = [edge.round_trip("echo", jpegs[i % len(jpegs)])[0] for i in range(n)]
    cpu = {k: round((v - before[k]) * 1000 / n, 3) for k, v in cpu_seconds(pids).items()}
    detector: list[float] = []
    direct_ms: list[float] = []
    server: dict[str, list[float]] = {}
    for i in range(n):
        jpeg = jpegs[i % len(jpegs)]
        ms, timings = edge.round_trip("detector", jpeg)
        detector.append(ms)
        for key, value in timings.items():
            server.setdefault(key, []).append(value)
        direct_ms.append(direct("detector", jpeg))
    return {
        "tiny_p50_ms": pct(tiny, 50),
        "tiny_p99_ms": pct(tiny, 99),
        "tiny_bare_publisher_p50_ms": pct(tiny_raw, 50),
        "tiny_bare_publisher_p99_ms": pct(tiny_raw, 99),
        "tiny_server_p50_ms": {k: pct(v, 50) for k, v in sorted(tiny_server.items())},
        "tiny_consecutive_p50_ms": pct(consecutive, 50),
        "tiny_consecutive_p99_ms": pct(consecutive, 99),
        "tiny_consecutive_cpu_ms_per_job": cpu,
        "tiny_crop_p50_ms": pct(tiny_crop, 50),
        "tiny_crop_p99_ms": pct(tiny_crop, 99),
        "mqtt_floor_p50_ms": pct(mqtt_floor, 50),
        "mqtt_floor_p99_ms": pct(mqtt_floor, 99),
        "echo_direct_p50_ms": pct(echo_direct, 50),
        "echo_direct_p99_ms": pct(echo_direct, 99),
        "detector_p50_ms": pct(detector, 50),
        "detector_p99_ms": pct(detector, 99),
        "direct_p50_ms": pct(direct_ms, 50),
        "direct_p99_ms": pct(direct_ms, 99),
        "overhead_ratio": round(pct(detector, 50) / pct(direct_ms, 50), 3),
        "detector_server_p50_ms": {k: pct(v, 50) for k, v in sorted(server.items())},
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench offload-rtt", description=__doc__)
    parser.add_argument("--requests", type=int, default=300, help="timed jobs per series")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of frames")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads of the detector")
    args = parser.parse_args(argv)
    jpegs = frames(50, args.jpeg_quality)
    small = crops(jpegs, 128, args.jpeg_quality)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with Broker(directory / "broker") as broker:
            base = free_block()
            config = write_config(directory, broker.port, base, args.threads)
            process = subprocess.Popen(
                [sys.executable, "-m", "serverd", "run", "-c", str(config)],
                cwd=REPO,
                env=os.environ | {"PYTHONPATH": str(REPO)},
            )
            responder = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    f"from bench.offload_rtt import respond; respond({broker.port})",
                ],
                cwd=REPO,
                env=os.environ | {"PYTHONPATH": str(REPO)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            edge: Edge | None = None
            try:
                if responder.stdout is None or responder.stdout.readline().strip() != "ready":
                    raise SystemExit("the MQTT floor responder did not start")
                edge = Edge(broker.port, directory)
                socket = directory / "serverd" / "triton" / "sockets" / "local-0.sock:0"
                direct = direct_call(f"unix:{socket}")
                pids = processes(process.pid, broker.pid)
                report = measure(edge, direct, jpegs, small, args.requests, pids)
            finally:
                if edge is not None:
                    edge.close()
                responder.communicate(timeout=30)
                process.send_signal(signal.SIGTERM)
                process.wait(60)
    report |= {
        "target_ms": TARGET_MS,
        "targets": TARGETS,
        "met": {k: report[k] < v for k, v in TARGETS.items()},
        "requests": args.requests,
        "payload_bytes_p50": int(np.median([len(j) for j in jpegs])),
        "crop_bytes_p50": int(np.median([len(j) for j in small])),
        "edge_client": "edged.offload.OffloadClient (SQLite outbox, MQTT QoS 1)",
        "server": f"serverd run: 1 supervised Triton, npu backend, litert x{args.threads} threads",
    }
    print(json.dumps(report))
    return 0
