"""Test harness: serverd on its own event-loop thread, and a minimal edge publisher.

The edge side is built on the real wire contract (``edgefed.wire``) and MQTT adapter
(``edgefed.mqtt``) so that tests can also send what a well-behaved edge never would:
duplicates, malformed frames, unknown models.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import tritonclient.grpc as grpcclient

from edgefed.clock import now_ms
from edgefed.mqtt import MqttClient, MqttConfig, MqttTls
from edgefed.wire import (
    OffloadAccepted,
    OffloadRequest,
    Reply,
    Topics,
    decode_reply,
    encode_payload,
    encode_request,
    new_job_id,
)
from serverd.app import ServerdApp
from serverd.config import ServerdConfig
from tests.support.paths import IMAGES_DIR, OPENCV_DATA, REPO

T = TypeVar("T")
API_TOKEN = "serverd-api-token-for-tests"


def frame_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A real photo with people in it (basketball1.png), resized and JPEG-encoded."""
    image = cv2.imread(str(OPENCV_DATA / "basketball1.png"))
    assert image is not None, "opencv-doc sample stills are missing"
    ok, data = cv2.imencode(".jpg", cv2.resize(image, (width, height)))
    assert ok
    return bytes(data.tobytes())


def triton_successes(serverd: ServerdThread, model: str) -> int:
    """Inferences Triton itself counts for ``model``, summed over serverd's own instances
    (asked over their sockets)."""
    total = 0
    for supervisor in serverd.app.supervisors.values():
        client = grpcclient.InferenceServerClient(supervisor.process.grpc_url)
        try:
            stats = client.get_inference_statistics(model, as_json=True)
        finally:
            client.close()
        total += sum(
            int(s["inference_stats"]["success"].get("count", 0)) for s in stats["model_stats"]
        )
    return total


def serverd_config(
    state_dir: Path,
    mqtt_port: int,
    instances: int = 2,
    triton: dict[str, Any] | None = None,
    **overrides: Any,
) -> ServerdConfig:
    """Two Tritons serving the pose detector ("person") and "echo", unless overridden."""
    raw: dict[str, Any] = {
        "server_id": "test-server",
        "state_dir": str(state_dir),
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": f"serverd-{mqtt_port}"},
        "images": {
            "dir": str(IMAGES_DIR),
            "trusted_keys": [str(IMAGES_DIR / "keys" / "dev-signing.pub")],
        },
        "triton": {
            "venv": str(REPO / ".venv-triton"),
            "instances": instances,
            "models": [
                {
                    "name": "person",
                    "image": "pose_detector",
                    "driver": {"type": "litert", "num_threads": 1},
                },
                {"name": "echo", "backend": "echo"},
            ],
        },
        "health_interval_s": 0.5,
        "api": {"port": 0, "token": API_TOKEN},
    }
    raw["triton"].update(triton or {})
    raw.update(overrides)
    return ServerdConfig.model_validate(raw)


class ServerdThread:
    """Runs ``ServerdApp.run`` on a private loop thread; ``call`` runs code on that loop."""

    def __init__(self, config: ServerdConfig) -> None:
        self.app = ServerdApp(config)
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._main, name="serverd-test", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.app.run(self._stop))
        except BaseException as exc:  # handed to the test thread
            self.error = exc
        finally:
            self._loop.close()

    def start(self, timeout: float = 180.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.app.ready.wait(0.1):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._thread.join(1)
                raise RuntimeError(f"serverd did not start: {self.error!r}")
        assert self.app.mqtt is not None and self.app.mqtt.wait_connected(10)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on serverd's loop (its state is only touched there) and return its value."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def status(self) -> dict[str, Any]:
        service = self.app.service
        assert service is not None
        return self.call(service.status)

    def job(self, device_id: str, job_id: str) -> dict[str, Any] | None:
        """The job table's row of ``device_id``'s job ``job_id``."""
        jobs = self.app.jobs
        assert jobs is not None
        return self.call(lambda: jobs.get((device_id, job_id)))

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(60)

    def __enter__(self) -> ServerdThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Edge:
    """One device: publishes requests and collects the replies on its reply topic."""

    def __init__(
        self,
        port: int,
        device_id: str = "site/cam-1",
        prefix: str = "edgefed",
        tls: MqttTls | None = None,
    ) -> None:
        self.device_id = device_id
        self.topics = Topics(prefix)
        self.replies: queue.Queue[tuple[Reply, bytes]] = queue.Queue()  # results and errors
        self.accepted: queue.Queue[OffloadAccepted] = queue.Queue()
        client_id = f"edge-{device_id.replace('/', '-')}-{port}"
        config = MqttConfig(port=port, client_id=client_id, clean_session=True, tls=tls)
        self.mqtt = MqttClient(config)
        self.mqtt.subscribe(self.topics.reply(device_id), self._on_reply)
        self.mqtt.start()
        assert self.mqtt.wait_connected(10)

    def _on_reply(self, topic: str, payload: bytes) -> None:
        reply = decode_reply(payload)
        if isinstance(reply, OffloadAccepted):
            self.accepted.put(reply)
        else:
            self.replies.put((reply, payload))

    def request(self, model: str, priority: int = 0, ttl_s: float = 30.0) -> OffloadRequest:
        now = now_ms()
        return OffloadRequest(
            job_id=new_job_id(),
            device_id=self.device_id,
            model=model,
            priority=priority,
            deadline=now + int(ttl_s * 1000),
            created=now,
            payload_kind="jpeg",
        )

    def send(self, request: OffloadRequest, payload: bytes | np.ndarray, wait: bool = True) -> None:
        body = encode_payload(request.payload_kind, payload)
        self.publish_raw(encode_request(request, body), wait=wait)

    def publish_raw(self, data: bytes, topic: str | None = None, wait: bool = True) -> None:
        ticket = self.mqtt.publish(topic or self.topics.request(self.device_id), data)
        assert not wait or ticket.wait(10), "broker did not acknowledge the request"

    def collect(self, count: int, timeout: float = 60.0) -> list[tuple[Reply, bytes]]:
        out: list[tuple[Reply, bytes]] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(out)} of {count} replies within {timeout} s")
            try:
                out.append(self.replies.get(timeout=remaining))
            except queue.Empty:
                continue
        return out

    def quiet(self, seconds: float) -> list[tuple[Reply, bytes]]:
        """Replies that arrive within ``seconds`` (to show that nothing more comes)."""
        out: list[tuple[Reply, bytes]] = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                out.append(self.replies.get(timeout=remaining))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self.mqtt.stop()
