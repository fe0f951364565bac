"""The live system of ``python -m bench faults`` and the ledger that accounts for its jobs.

``Serverd`` is ``serverd run`` as its own process (so that it can be killed with -9) with
one supervised Triton serving the ``echo`` model, connected to the shipped broker as
``serverd``. ``Edge`` is edged's offload path in this process: ``OffloadClient`` on a
``NetLoop`` with its SQLite outbox, connected as device A, its jobs timed on serverd's
clock as the replies teach it (``ServerClock``, as edged runs) over a wall clock the bench
can jump (``JumpClock``). ``Ledger`` records every job the edge submits and every outcome
the client tells: a job is lost if it was stored and never told, duplicated if it was
told twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import psutil
import yaml

from bench._faults_broker import DEVICE_A, REPO, ShippedBroker
from bench.gating import VTEST
from edged.netloop import NetLoop
from edged.offload.client import JobOutcome, OffloadClient, OffloadClientConfig
from edged.offload.outbox import Outbox
from edged.offload.records import OutboxConfig
from edged.offload.serverclock import ServerClock
from edgefed import paths
from edgefed.clock import now_ms
from edgefed.errors import OffloadError
from edgefed.lifecycle import Status
from edgefed.mqtt import MqttClient
from edgefed.ports import free_port
from edgefed.testing.processes import terminate
from edgefed.wire import Topics, decode_availability

SERVER_ID = "faults-server"
API_TOKEN = "faults-bench-token-0123456789"
DEMO_EDGED = REPO / "packaging" / "dev" / "demo-edged.yaml"
MAX_JOBS = 150  # the outbox bound; the "outbox near its bound" fault goes past it
TTL_S = 120.0  # a job's deadline: longer than any fault lasts, so none should expire


class JumpClock:
    """Wall time in epoch ms plus an offset the bench changes (a clock jump)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> int:
        return now_ms() + self.offset_ms


@dataclass
class Ledger:
    """Jobs by the fault under way when they were submitted, and what was told of them."""

    phase: str = "warm-up"
    submitted: dict[str, str] = field(default_factory=dict)  # stored job id -> phase
    refused: Counter[str] = field(default_factory=Counter)  # phase -> submits refused
    told: defaultdict[str, list[Status]] = field(default_factory=lambda: defaultdict(list))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stored(self, job_id: str) -> None:
        with self._lock:
            self.submitted[job_id] = self.phase

    def refuse(self) -> None:
        with self._lock:
            self.refused[self.phase] += 1

    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (phase, why not Exit)

    def tell(self, outcome: JobOutcome) -> None:
        with self._lock:
            self.told[outcome.job_id].append(outcome.status)
            if outcome.status != Status.EXIT:
                phase = self.submitted.get(outcome.job_id, self.phase)
                self.reasons[phase, outcome.reason[:120]] += 1

    def open_in(self, phase: str) -> int:
        """Jobs of ``phase`` stored and not told yet."""
        with self._lock:
            return sum(1 for j, p in self.submitted.items() if p == phase and j not in self.told)

    def per_phase(self) -> dict[str, dict[str, int]]:
        """Per phase: jobs stored, refused, told Exit/Failed/Expired, lost, duplicated."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for job, phase in self.submitted.items():
                row = out.setdefault(phase, dict.fromkeys(_ROW, 0))
                row["jobs"] += 1
                told = self.told.get(job, [])
                row["lost"] += not told
                row["duplicated"] += len(told) > 1
                for status in told[:1]:
                    row[str(status).lower()] += 1
            for phase, n in self.refused.items():
                out.setdefault(phase, dict.fromkeys(_ROW, 0))["refused"] += n
        return out

    def why_not_exit(self, phase: str) -> dict[str, int]:
        """Why jobs of ``phase`` closed without the server's result, and how many."""
        with self._lock:
            return {why: n for (p, why), n in self.reasons.items() if p == phase}


_ROW = ("jobs", "refused", "exit", "failed", "expired", "lost", "duplicated")


def vtest_jpeg() -> bytes:
    """One 320x240 frame of the real test video, as JPEG."""
    capture = cv2.VideoCapture(str(VTEST))
    ok, image = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"cannot read {VTEST}")
    ok, data = cv2.imencode(".jpg", cv2.resize(image, (320, 240)))
    return bytes(data.tobytes())


class Serverd:
    """``serverd run`` in its own process: start, kill -9, stop, status."""

    def __init__(self, directory: Path, broker: ShippedBroker) -> None:
        self.directory = directory
        self.api_port = free_port()
        mqtt = broker.client_config("serverd", client_id="serverd-faults")
        config = {
            "server_id": SERVER_ID,
            "log_level": "WARNING",
            "state_dir": str(directory / "state"),
            "mqtt": mqtt.model_dump(mode="json", exclude_none=True),
            "api": {"port": self.api_port, "token": API_TOKEN},
            "images": {"dir": str(REPO / paths.images_dir())},
            "triton": {
                "venv": str(REPO / paths.triton_venv()),
                "instances": 1,
                "models": [{"name": "echo", "backend": "echo"}],
            },
        }
        self.config_path = directory / "serverd.yaml"
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        log = (self.directory / "serverd.log").open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "serverd", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def tritons(self) -> list[psutil.Process]:
        """The ``tritonserver`` processes serverd supervises (its children)."""
        assert self._process is not None
        children = psutil.Process(self._process.pid).children(recursive=True)
        return [c for c in children if c.name() == "tritonserver"]

    def kill9(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(10)

    def stop(self) -> int | None:
        return terminate(self._process)

    def request(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One HTTP call to serverd's API (POST with ``body``); status and body."""
        method = "POST" if body is not None else "GET"
        return http_call(self.api_port, method, path, body, API_TOKEN)

    def counters(self) -> dict[str, Any]:
        status, body = self.request("/api/v1/status")
        if status != 200:
            raise SystemExit(f"serverd status answered {status}")
        counters: dict[str, Any] = json.loads(body)["counters"]
        return counters


class Edge:
    """edged's offload client as edged runs it, on device A's certificate."""

    def __init__(
        self, broker: ShippedBroker, directory: Path, ledger: Ledger, clock: JumpClock
    ) -> None:
        self.ledger, self.clock = ledger, clock
        self.outbox_path = directory / "outbox.sqlite"
        config = OutboxConfig(
            path=self.outbox_path,
            max_jobs=MAX_JOBS,
            result_timeout_s=3.0,
            retry_base_s=0.5,
            retry_cap_s=2.0,
            max_iterations=20,
        )
        # as edged runs it: jobs timed on serverd's clock, as the replies teach it
        self.server_clock = ServerClock(local=clock, state=directory / "outbox.sqlite.serverclock")
        self.outbox = Outbox(config, clock=self.server_clock)
        self.net = NetLoop(MqttClient(broker.client_config(DEVICE_A, client_id="edge-faults")))
        self.client = OffloadClient(
            DEVICE_A,
            self.net,
            self.outbox,
            OffloadClientConfig(),
            on_outcome=ledger.tell,
            clock=self.server_clock,
        )
        self.server_online = threading.Event()
        self.net.mqtt.subscribe(Topics().server_availability(SERVER_ID), self._availability)
        self.client.start()
        self.net.start()
        self.jpeg = vtest_jpeg()

    def _availability(self, _topic: str, data: bytes) -> None:
        if decode_availability(data).state == "online":
            self.server_online.set()
        else:
            self.server_online.clear()

    def submit(self) -> None:
        """One job of the echo model; stored (and accounted) or refused (counted)."""
        request = self.client.make_request("echo", "jpeg", ttl_s=TTL_S)
        try:
            outcome = self.client.submit(request, self.jpeg)
        except OffloadError:
            self.ledger.refuse()
            return
        if outcome.accepted:
            self.ledger.stored(request.job_id)
        else:
            self.ledger.refuse()

    def crashes(self) -> int:
        """Exceptions that escaped an MQTT handler or the outcome listener."""
        return self.client.counters.listener_errors + self.net.mqtt.counters.handler_errors

    def errors(self) -> int:
        """``crashes`` and the steps of the client that failed (contained, logged)."""
        return self.crashes() + self.client.counters.worker_errors

    def close(self) -> None:
        self.client.stop()
        self.net.stop()
        self.outbox.close()


class Feeder:
    """Submits a job every ``1/rate_hz`` s from its own thread while running."""

    def __init__(self, edge: Edge, rate_hz: float) -> None:
        self._edge, self._period = edge, 1.0 / rate_hz
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-feeder", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self._edge.submit()

    def __enter__(self) -> Feeder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def wait_for(what: str, condition: Any, timeout: float) -> float:
    """Seconds until ``condition()`` held; SystemExit after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"faults bench: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - start


class Edged:
    """``edged run`` in its own process: the real video, one real model (face_detector on
    whole frames), its API on a free port with a token; no broker (the API alone)."""

    TOKEN = "faults-bench-edged-token-0123456789"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.api_port = directory, free_port()
        raw: dict[str, Any] = yaml.safe_load(DEMO_EDGED.read_text(encoding="utf-8"))
        images = REPO / paths.images_dir()
        raw.update(
            device_id="site/cam-c",
            log_level="WARNING",
            cameras=[{"name": "vtest", "source": str(VTEST), "loop": True}],
            images={"dir": str(images), "trusted_keys": [str(images / "keys" / "dev-signing.pub")]},
            models=[{"name": "face", "image": "face_detector", "regions": "full"}],
            output={"results": str(directory / "results.jsonl")},
            state_dir=str(directory / "state"),
            api={"port": self.api_port, "token": self.TOKEN},
        )
        self.config_path = directory / "edged.yaml"
        self.config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.directory / "edged.log").open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "edged", "run", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            cwd=REPO,
        )
        log.close()
        wait_for("edged's API", lambda: self.alive and self.call("GET", "/healthz")[0] == 200, 120)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def call(
        self, method: str, path: str, body: bytes | None = None, token: bool = True
    ) -> tuple[int, bytes]:
        """One HTTP call to edged's API, with or without its token."""
        return http_call(self.api_port, method, path, body, self.TOKEN if token else None)

    def stop(self) -> int | None:
        return terminate(self._process)


def http_call(
    port: int, method: str, path: str, body: bytes | None, token: str | None
) -> tuple[int, bytes]:
    """One call to a daemon's API on 127.0.0.1: its status (0: no answer) and body."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"http://127.0.0.1:{port}{path}"
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""
