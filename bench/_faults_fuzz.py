"""Hostile input for ``python -m bench faults``: a seeded generator and one driver per class.

``Hostile`` (``random.Random`` seeded, so a run can be repeated) makes wire frames with
near-valid headers (every message type, wrong types, numbers of 400 digits, 200-deep
nesting, bad ids, wrong versions and lengths) and random bytes, twin deltas with hostile
values, HTTP bodies, and model-image manifests and directories that are wrong in one way
each (types, huge numbers, path traversal, NUL bytes, unlisted files, symlinks, wrong
hashes, bad or missing signatures, YAML that is not a mapping, deep or aliased), and
``PUT /api/v1/config`` bodies for edged's API (with and without its token).

Each driver sends its cases to the real component and returns ``(cases, crashes)``: a
crash is an exception that escaped a handler (counted by the component), a daemon that
died, an answer of 5xx, or for images anything but a one-line ``ImageError``.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench._faults_broker import DEVICE_A, DEVICE_B, ShippedBroker
from bench._faults_system import Edge, Edged, Serverd, wait_for
from edged.settings import RuntimeConfig, RuntimeSettings
from edged.twin.properties import load_property_table
from edged.twin.service import TwinService
from edgefed.errors import ImageError
from edgefed.images import signing
from edgefed.images.manifest import MANIFEST_NAME, SIGNATURE_NAME
from edgefed.images.verify import verify_image_with_keys
from edgefed.mqtt import MqttClient
from edgefed.wire import MAGIC, PROTOCOL_VERSION, Topics

TYPES = ["request", "accepted", "result", "error", "availability", "other", ""]
KEYS = [
    "type", "job_id", "device_id", "model", "priority", "deadline", "created",
    "payload_kind", "attempt", "metadata", "local", "results", "served_by", "completed",
    "code", "reason", "retryable", "queued", "timings_ms", "role", "id", "state", "since",
]  # fmt: skip
SETTINGS = [*RuntimeSettings.model_fields, "fps", "colour", "", "x" * 200]
EVENT_KINDS = ["frame", "stats", "twin", "nothing"]
TRUSTED = "bench-faults"  # the key name of the throw-away signing key


class Hostile:
    """Seeded hostile values and messages."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def scalar(self) -> Any:
        r = self.rng
        return r.choice(
            [
                None, True, r.randint(-(2**70), 2**70), 10**400, -(10**400), 2**63, 0, -1,
                r.uniform(-1e308, 1e308), 1e-300, "", "x" * r.randint(1, 5000),
                "".join(chr(r.randint(0, 0x2FFF)) for _ in range(r.randint(1, 20))),
                "cam-1", DEVICE_A, DEVICE_B, "evil", "0123456789abcdef", "echo", "../../etc",
            ]
        )  # fmt: skip

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 3 or r < 0.6:
            return self.scalar()
        if r < 0.75:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 4))]
        if r < 0.9:
            return {str(self.scalar())[:8]: self.value(depth + 1) for _ in range(3)}
        return deep(self.rng.randint(1, 200))

    def frame(self) -> bytes:
        """Random bytes, or an EdgeFed frame around a near-valid JSON header."""
        r = self.rng
        if r.random() < 0.2:
            return r.randbytes(r.randint(0, 256))
        header: dict[str, Any] = {"type": r.choice(TYPES)}
        for key in r.sample(KEYS, r.randint(0, 10)):
            header[key] = self.value()
        text = json.dumps(header).encode()
        if r.random() < 0.1:
            text = text[: r.randint(0, len(text))]  # not JSON at all
        body = r.choice([b"", b"\xff\xd8\xff\xd9", r.randbytes(r.randint(0, 64))])
        version = r.choice([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2, 255])
        length = r.choice([len(text), len(text), 0, 2**32 - 1, len(text) + 1])
        return MAGIC + struct.pack(">BI", version, length) + text + body

    def delta(self) -> bytes:
        r = self.rng
        values = [
            "1e-300", "3.2e306", "1e999", "nan", "-0", "9" * 400, "9" * 5000, "0x10", "  7",
            ",".join(["person"] * 3000), "person,person,pose", "DEBUG\n", "always",
            str(r.randint(-(2**80), 2**80)), repr(r.uniform(-1e300, 1e300)),
        ]  # fmt: skip
        delta = {r.choice(SETTINGS): r.choice(values) for _ in range(r.randint(0, 4))}
        message: dict[str, Any] = {"event_id": uuid.uuid4().hex, "timestamp": 1, "delta": delta}
        if r.random() < 0.2:
            message = {k: self.value() for k in message}  # wrong types everywhere
        if r.random() < 0.05:
            return r.choice([r.randbytes(40), b"[" * 100_000, b'{"delta": ' + b"9" * 5000])
        return json.dumps(message).encode()

    def config_body(self) -> bytes:
        """A ``PUT /api/v1/config`` body: settings with hostile values, or not an object."""
        r = self.rng
        body = {r.choice(SETTINGS): self.value() for _ in range(r.randint(0, 4))}
        text = json.dumps(body).encode()
        return r.choice(
            [text, text, text, text[: r.randint(0, len(text))], r.randbytes(80),
             b"[" * 100_000, b"9" * 5000, json.dumps(deep(150)).encode()]
        )  # fmt: skip

    def event_body(self) -> bytes:
        r = self.rng
        body = {k: self.value() for k in r.sample(["device_id", "type", "ts", "data"], 3)}
        text = json.dumps(body).encode()
        return r.choice(
            [text, text[: r.randint(0, len(text))], r.randbytes(100), b"{" * 5000,
             b"[" * 100_000, b'{"device_id": "d", "n": ' + b"9" * 5000 + b"}"]
        )  # fmt: skip


def deep(depth: int) -> Any:
    out: Any = 1
    for _ in range(depth):
        out = [out]
    return out


# --- MQTT: requests to serverd, replies to edged, deltas to edged's twin ---


def _publish_frames(
    broker: ShippedBroker, identity: str, client_id: str, topic: str, n: int, h: Hostile
) -> None:
    """Publish ``n`` hostile frames on ``topic`` as ``identity``; wait for the last one."""
    client = MqttClient(broker.client_config(identity, client_id=client_id))
    client.start()
    if not client.wait_connected(10):
        raise SystemExit(f"fuzz: {identity} cannot connect")
    try:
        last = None
        for _ in range(n):
            last = client.publish(topic, h.frame())
        if last is not None:
            last.wait(60)
    finally:
        client.stop()


def fuzz_serverd_requests(broker: ShippedBroker, serverd: Serverd, n: int, h: Hostile) -> int:
    """Hostile requests on device B's own request topic to the running serverd."""
    before = serverd.counters()
    _publish_frames(broker, DEVICE_B, "fuzz-requests", Topics().request(DEVICE_B), n, h)
    wait_for(
        "serverd to handle every hostile request",
        lambda: serverd.counters()["received"] - before["received"] >= n,
        120,
    )
    return int(serverd.counters()["errors"] - before["errors"]) + (not serverd.alive)


def fuzz_edge_replies(broker: ShippedBroker, edge: Edge, n: int, h: Hostile) -> int:
    """Hostile replies on the edge's reply topic, from the one identity allowed there."""
    counters = edge.net.mqtt.counters
    before_in, before_errors = counters.messages_in, edge.errors()
    _publish_frames(broker, "serverd", "fuzz-replies", Topics().reply(DEVICE_A), n, h)
    wait_for(
        "the edge to read every hostile reply", lambda: counters.messages_in - before_in >= n, 120
    )
    time.sleep(0.5)  # the last burst
    return edge.errors() - before_errors


def fuzz_twin_deltas(broker: ShippedBroker, state: Path, n: int, h: Hostile) -> int:
    """Hostile deltas from EdgeCore's identity to device B's TwinService."""
    setters = {name: (lambda value: None) for name in RuntimeSettings.model_fields}
    initial = RuntimeSettings(
        motion_threshold=25, motion_min_pixels=5, target_fps=None,
        enabled_models=["person"], offload_policy="hard_example", log_level="INFO",
    )  # fmt: skip
    state.mkdir(parents=True, exist_ok=True)
    runtime = RuntimeConfig(
        initial, setters, lambda: {"person", "pose", "face"}, state_path=state / "runtime.json"
    )
    mqtt = MqttClient(broker.client_config(DEVICE_B, client_id="fuzz-twin"))
    twin = TwinService(mqtt, DEVICE_B, runtime, load_property_table(), report_interval_s=3600)
    twin.start()
    mqtt.start()
    edgecore = MqttClient(broker.client_config("edgecore", client_id="fuzz-edgecore"))
    edgecore.start()
    try:
        if not (mqtt.wait_connected(10) and edgecore.wait_connected(10)):
            raise SystemExit("fuzz: the twin or EdgeCore cannot connect")
        time.sleep(0.3)  # the twin's SUBACK
        topic = f"$hw/events/device/{DEVICE_B}/twin/update/delta"
        last = None
        for _ in range(n):
            last = edgecore.publish(topic, h.delta())
        if last is not None:
            last.wait(60)
        c = twin.counters
        wait_for("every delta handled", lambda: c.deltas + c.malformed + c.replayed >= n, 120)
        RuntimeSettings.model_validate(runtime.current().model_dump())  # still valid
        return mqtt.counters.handler_errors
    finally:
        edgecore.stop()
        twin.stop()
        mqtt.stop()


def fuzz_serverd_api(serverd: Serverd, n: int, h: Hostile) -> int:
    """Hostile bodies to serverd's ``POST /api/v1/edge-events/{kind}`` (with its token)."""
    crashes = 0
    for _ in range(n):
        status, _ = serverd.request(
            f"/api/v1/edge-events/{h.rng.choice(EVENT_KINDS)}", h.event_body()
        )
        crashes += status >= 500
    return crashes + (not serverd.alive)


def fuzz_edged_api(edged: Edged, n: int, h: Hostile) -> int:
    """Hostile ``PUT /api/v1/config`` bodies to a running edged: with the token each is
    applied or refused with a 4xx, without it (one in four) refused with 401/403."""
    crashes = 0
    for _ in range(n):
        with_token = h.rng.random() < 0.75
        status, _ = edged.call("PUT", "/api/v1/config", h.config_body(), token=with_token)
        crashes += status >= 500 or status == 0 or (not with_token and status not in (401, 403))
    settings, _ = edged.call("GET", "/api/v1/config")
    return crashes + (settings != 200) + (not edged.alive)


# --- model images ---


class HostileImages:
    """A small signed image (a real image's manifest around a tiny model file), made wrong
    in one way per case and verified with the trusted key."""

    def __init__(self, directory: Path, base: Path, h: Hostile) -> None:
        self.h, self.dir = h, directory / "image"
        self.key = signing.generate_key_pair(
            directory / f"{TRUSTED}.key", directory / f"{TRUSTED}.pub"
        )
        self.keys = [self.key.public_key()]
        self.base: dict[str, Any] = yaml.safe_load((base / MANIFEST_NAME).read_bytes())
        self.files = {"model.tflite": b"\x08tiny-model" * 32, "labels.txt": b"face\n"}
        self.mutations: list[Callable[[dict[str, Any]], bytes | None]] = [
            self._wrong_field, self._hostile_file_name, self._unlisted_model, self._raw_yaml,
            self._extra_file, self._symlinked_file, self._wrong_hash, self._bad_signature,
            self._missing_file, self._directory_as_file,
        ]  # fmt: skip

    def case(self) -> bool:
        """One hostile image; True if it crashed verification."""
        manifest = json.loads(json.dumps(self.base))
        manifest["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in self.files.items()}
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        for name, data in self.files.items():
            (self.dir / name).write_bytes(data)
        raw = self.h.rng.choice(self.mutations)(manifest)
        if raw is None:
            raw = yaml.safe_dump(manifest, allow_unicode=True).encode()
        (self.dir / MANIFEST_NAME).write_bytes(raw)
        if not (self.dir / SIGNATURE_NAME).exists():
            (self.dir / SIGNATURE_NAME).write_bytes(signing.sign(self.key, raw))
        try:
            verify_image_with_keys(self.dir, self.keys)
        except ImageError as exc:
            return "\n" in str(exc) or not str(exc)
        except Exception:
            return True
        return False  # the mutation left a valid image (e.g. a field set to a valid value)

    def _wrong_field(self, m: dict[str, Any]) -> None:
        where = (
            m if self.h.rng.random() < 0.5 else m[self.h.rng.choice(["input", "decoder", "source"])]
        )
        where[self.h.rng.choice([*where, "extra"])] = self.h.value()

    def _hostile_file_name(self, m: dict[str, Any]) -> None:
        name = self.h.rng.choice(
            ["../evil", "/etc/passwd", "a/../../b", "", ".", "a//b", "x\x00y", "n" * 5000,
             "model.tflite/", "./model.tflite", "\\..\\evil", "labels.txt\n"]
        )  # fmt: skip
        m["files"][name] = self.h.rng.choice([m["files"]["model.tflite"], "0" * 64, "zz"])
        if self.h.rng.random() < 0.5:
            m["model_file"] = name

    def _unlisted_model(self, m: dict[str, Any]) -> None:
        m["model_file"] = self.h.rng.choice(["other.tflite", "labels.txt/../model.tflite"])

    def _raw_yaml(self, m: dict[str, Any]) -> bytes:
        r = self.h.rng
        bomb = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
            f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
        if r.random() < 0.05:  # each costs the parser ~0.5 s before it gives up
            return b"[" * 20000 + b"]" * 20000
        return r.choice(
            [b"- just\n- a list\n", b"", b"\x00\xff\xfe", b"a: [\n", bomb.encode(),
             b"!!python/object/apply:os.system ['true']\n",
             b"name: " + b"x" * 1_000_000 + b"\n", r.randbytes(200)]
        )  # fmt: skip

    def _extra_file(self, m: dict[str, Any]) -> None:
        extra = self.dir / self.h.rng.choice(["extra.bin", ".hidden", "sub/dir.bin"])
        extra.parent.mkdir(exist_ok=True)
        extra.write_bytes(b"unlisted")

    def _symlinked_file(self, m: dict[str, Any]) -> None:
        target = self.dir / "model.tflite"
        target.unlink()
        target.symlink_to(self.h.rng.choice(["/etc/passwd", str(self.dir / "labels.txt")]))

    def _wrong_hash(self, m: dict[str, Any]) -> None:
        (self.dir / "model.tflite").write_bytes(self.h.rng.randbytes(64))

    def _bad_signature(self, m: dict[str, Any]) -> None:
        (self.dir / SIGNATURE_NAME).write_bytes(self.h.rng.choice([b"", self.h.rng.randbytes(64)]))

    def _missing_file(self, m: dict[str, Any]) -> None:
        (self.dir / self.h.rng.choice(list(self.files))).unlink()

    def _directory_as_file(self, m: dict[str, Any]) -> None:
        (self.dir / "labels.txt").unlink()
        (self.dir / "labels.txt").mkdir()


def fuzz_manifests(directory: Path, base: Path, n: int, h: Hostile) -> int:
    images = HostileImages(directory, base, h)
    return sum(images.case() for _ in range(n))
