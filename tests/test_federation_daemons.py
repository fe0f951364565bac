"""Federated learning through the real daemons: ``serverd run`` and three ``edged run``
processes (each with its camera on the real video, a real model and its federation) on a
real broker, two models at once. An operator labels handwritten digits and
EfficientNet-Lite0 features of person and background crops of vtest.avi through each
edge's API, split non-IID; ``serverd federation start`` (and the API behind it) opens the
rounds over the devices that offered samples; every global version reaches the edges as a
signed model image installed into A/B slots; a spy subscribed to ``#`` sees every message
of the whole federation."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from bench.crops import CLASSES
from bench.federated import (
    PERSON_TRAIN,
    TRAIN,
    Data,
    Poisoner,
    baselines,
    digits_base,
    digits_data,
    person_data,
)
from edged.federation.trainer import accuracy
from edgefed.federation_upload import Reassembler
from edgefed.federation_wire import (
    MAX_VERSION_FRAME_BYTES,
    FederationTopics,
    GlobalModel,
    Received,
    ReceivedModel,
    decode,
    decode_params,
    encode,
    sha256_hex,
    signed_text,
)
from edgefed.images.federated import read_head
from edgefed.images.install import active_slot
from edgefed.images.signing import generate_key_pair, load_private_key, sign
from edgefed.images.verify import read_manifest
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.ports import free_ports
from edgefed.testing.broker import Broker
from edgefed.testing.datasets import DIGIT_FEATURES
from edgefed.testing.wait import wait_until
from edgefed.wire import new_job_id
from serverd.federation.images import VersionImager
from tests.edged.api.httpclient import call
from tests.support.configs import demo_config
from tests.support.paths import IMAGES_DIR, REPO, TRUST_DIR

TOKEN = "federation-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
ROUNDS = 30
PERSON_ROUNDS = 20  # run beside the first digits rounds
# About 90 held-back samples per edge: one sample is 1.1 points, so the adoption margin
# is a few samples wide, or one unlucky sample makes an edge refuse a better version.
MARGIN = 0.05
EDGES = ["demo/edge-0", "demo/edge-1", "demo/edge-2"]
FEDERATION_TOPICS = "/federation/"


@dataclass
class Fleet:
    broker: Broker
    data: Data
    person: Data
    root: Path
    server_url: str
    edge_urls: dict[str, str]
    seen: queue.Queue[tuple[str, bytes]]
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]]  # serverd first
    serverd: tuple[list[str], Path]  # its command and working directory
    edges: dict[str, tuple[list[str], Path]]  # each edged's command and working directory
    signing_key: Path

    def restart_serverd(self) -> None:
        self.processes[0].terminate()
        assert self.processes[0].wait(30) == 0
        self.processes[0] = _spawn(*self.serverd, self.env)

    def restart_edge(self, device: str, between: Callable[[], None]) -> None:
        """Stop ``device``'s edged, run ``between``, start it again."""
        index = 1 + EDGES.index(device)
        self.processes[index].terminate()
        assert self.processes[index].wait(30) == 0
        between()
        self.processes[index] = _spawn(*self.edges[device], self.env)

    def serverd_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "serverd", "federation", *args, "--url", self.server_url]
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60)

    def edge_status(self, device: str) -> dict[str, Any]:
        federation: dict[str, Any] = call(self.edge_urls[device] + "/api/v1/status").json()[
            "federation"
        ]
        return federation

    def versions(self, model: str = "digits") -> list[int | None]:
        return [self.edge_status(d)["models"][model]["version"] for d in EDGES]

    def edge_dir(self, device: str) -> Path:
        return self.root / device.replace("/", "_")

    def edge_images(self, device: str) -> Path:
        """Where the edge installs the versions it adopts."""
        return self.edge_dir(device) / "federated-images"

    def offers(self) -> dict[str, Any]:
        edges: dict[str, Any] = call(self.server_url + "/api/v1/federation").json()["edges"]
        return edges


def _spawn(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (cwd / "daemon.log").open("ab")
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _serverd(tmp: Path, broker: Broker, key: Path, port: int) -> Path:
    raw = {
        "server_id": "fed-server",
        "state_dir": str(tmp / "state"),
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": "serverd-fed"},
        "triton": {"instances": 0},
        "endpoints": [{"name": "none", "url": "127.0.0.1:9", "models": ["echo"]}],
        "api": {"port": port, "token": TOKEN},
        "images": {"dir": str(IMAGES_DIR), "trusted_keys": [str(TRUST_DIR / "dev-signing.pub")]},
        "federation": {
            "enabled": True,
            "signing_key": str(key),
            "models": [
                {
                    "name": "digits",
                    "features": DIGIT_FEATURES,
                    "classes": list("0123456789"),
                    "pixels": {"width": 8, "height": 8, "max_value": 16},
                },
                {
                    "name": "person",
                    "features": 1280,
                    "classes": list(CLASSES),
                    "image": "efficientnet_lite0",
                    "train": PERSON_TRAIN.model_dump(),
                },
            ],
            "timeout_s": 60,
            "train": TRAIN.model_dump(),
        },
    }
    path = tmp / "serverd.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _edged(tmp: Path, broker: Broker, device: str, trusted: Path, port: int) -> Path:
    raw = demo_config(
        tmp,
        device_id=device,
        mqtt={"host": broker.host, "port": broker.port, "client_id": device.replace("/", ".")},
        models=[{"name": "person", "image": "pose_detector"}],
        pipeline={"target_fps": 2},
        api={"port": port, "token": TOKEN},
        federation={
            "enabled": True,
            "models": [
                {"name": "digits", "classes": list("0123456789")},
                {"name": "person", "classes": list(CLASSES)},
            ],
            "images_dir": str(tmp / "federated-images"),
            "holdout_every": 5,
            "margin": MARGIN,
            "offer_interval_s": 2,
            "trusted_keys": [str(trusted)],
        },
    )
    path = tmp / "edged.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _label(url: str, model: str, x: np.ndarray, y: np.ndarray, names: list[str]) -> None:
    """The operator's labels, one POST per sample."""
    for features, label in zip(x, y, strict=True):
        body = json.dumps({"features": features.tolist(), "label": names[label]}).encode()
        answer = call(url + f"/api/v1/federation/{model}/samples", "POST", body, AUTH)
        assert answer.status == 201, answer.body


def _label_edge(fleet: Fleet, index: int) -> None:
    """Edge ``index``'s digits, then its person crops (every 5th sample of the store, by
    id, is held back: the same order gives the same slices on every run)."""
    url = fleet.edge_urls[EDGES[index]]
    _label(url, "digits", *fleet.data.edges[index], list("0123456789"))
    _label(url, "person", *fleet.person.edges[index], list(CLASSES))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    private, public = root / "keys" / "fed.key", root / "keys" / "fed.pub"
    generate_key_pair(private, public)
    env = {**os.environ, "PYTHONPATH": str(REPO), "SERVERD_API_TOKEN": TOKEN}
    processes: list[subprocess.Popen[bytes]] = []
    with Broker(root / "broker") as broker:
        seen: queue.Queue[tuple[str, bytes]] = queue.Queue()
        spy = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="spy"))
        spy.subscribe("#", lambda topic, payload: seen.put((topic, payload)))
        spy.start()
        assert spy.wait_connected(10)
        try:
            server_port, *edge_ports = free_ports(1 + len(EDGES))
            (root / "serverd").mkdir()
            config = _serverd(root / "serverd", broker, private, server_port)
            serverd = [sys.executable, "-m", "serverd", "run", "-c", str(config)]
            processes.append(_spawn(serverd, root / "serverd", env))
            urls, edges = {}, {}
            for device, port in zip(EDGES, edge_ports, strict=True):
                tmp = root / device.replace("/", "_")
                tmp.mkdir()
                edged = [sys.executable, "-m", "edged", "run", "-c"]
                edged.append(str(_edged(tmp, broker, device, public, port)))
                processes.append(_spawn(edged, tmp, env))
                edges[device] = (edged, tmp)
                urls[device] = f"http://127.0.0.1:{port}"
            server_url = f"http://127.0.0.1:{server_port}"
            server = (serverd, root / "serverd")
            fleet = Fleet(
                broker,
                digits_data(),
                person_data(),
                root,
                server_url,
                urls,
                seen,
                env,
                processes,
                server,
                edges,
                private,
            )
            for model in ("digits", "person"):
                wait_until(
                    f"every edge on {model} v1",
                    lambda m=model: _quiet(lambda: fleet.versions(m)) == [1, 1, 1],
                    120,
                )
            with ThreadPoolExecutor(3) as pool:  # one edge's samples in one order each run
                labelled = [pool.submit(_label_edge, fleet, i) for i in range(len(EDGES))]
                for done in labelled:
                    done.result()
            yield fleet
        finally:
            for process in reversed(processes):
                process.terminate()
            for process in processes:
                process.wait(30)
            spy.stop()


def _quiet(read: Any) -> Any:
    """``read()``, or None while a daemon is still starting."""
    try:
        return read()
    except (OSError, KeyError, AssertionError, ValueError):
        return None


def _round(fleet: Fleet, number: int, person: bool = False) -> None:
    """Round ``number`` of digits (and of person beside it), until every edge adopted."""
    wait_until("three fresh offers", lambda: len(_allowed(fleet)) == 3, 30)
    if number == 1:  # the first through the command line, the rest through the API
        done = fleet.serverd_cli("start", "digits")
        assert done.returncode == 0, done.stderr
        assert f"round {number} open on v{number}" in done.stdout
    else:
        answer = call(fleet.server_url + "/api/v1/federation/digits/rounds", "POST", b"", AUTH)
        assert answer.status == 201, answer.body
        assert answer.json()["participants"] == EDGES
    if person:
        answer = call(fleet.server_url + "/api/v1/federation/person/rounds", "POST", b"", AUTH)
        assert answer.status == 201, answer.body
    wait_until(f"every edge on v{number + 1}", lambda: fleet.versions() == [number + 1] * 3, 90)
    if person:
        wait_until(
            f"every edge on person v{number + 1}",
            lambda: fleet.versions("person") == [number + 1] * 3,
            120,
        )


def _allowed(fleet: Fleet) -> list[str]:
    return sorted(d for d, offer in fleet.offers().items() if offer["training_allowed"])


def test_daemons_federate_to_centralised_accuracy_and_no_sample_leaves(fleet: Fleet) -> None:
    started = time.monotonic()
    for number in range(1, ROUNDS + 1):
        _round(fleet, number, person=number <= PERSON_ROUNDS)
    history = fleet.serverd_cli("history", "digits", "--json")
    rounds = json.loads(history.stdout)["rounds"]
    assert [r["version"] for r in rounds] == list(range(2, ROUNDS + 2))
    assert all(r["accepted_count"] == len(EDGES) for r in rounds)
    assert all(r["accepted"] == EDGES for r in rounds if r["devices_listed"])  # the latest 20
    adopted = f"{EDGES[0]} v{ROUNDS + 1} adopted"  # the edge's report reaches serverd after
    wait_until(
        "serverd to hear the adoption", lambda: adopted in fleet.serverd_cli("status").stdout, 30
    )
    status = fleet.serverd_cli("status")
    assert status.returncode == 0, status.stderr
    assert f"digits: v{ROUNDS + 1} idle, round {ROUNDS}, {ROUNDS} done, 0 failed" in status.stdout
    assert adopted in status.stdout
    for device in EDGES:  # each offering, dated on serverd's clock
        assert re.search(rf"^edge {device}: digits \d+.*, offered \d+ s ago$", status.stdout, re.M)
    for data, rounds in ((fleet.data, ROUNDS), (fleet.person, PERSON_ROUNDS)):
        params = _published_params(fleet, rounds + 1, data.name)
        federated = accuracy(params, *data.test)
        centralised, best_local = baselines(data, rounds)
        assert federated >= centralised - 0.02, (data.name, federated, centralised)
        assert federated > best_local, (data.name, federated, best_local)
    for device in EDGES:  # each version an image in the edge's A/B slots
        for model, version in (("digits", ROUNDS + 1), ("person", PERSON_ROUNDS + 1)):
            status = fleet.edge_status(device)["models"][model]
            image = fleet.edge_images(device) / model
            assert status["image"] == str(image) and active_slot(image.parent, model)
            assert read_manifest(image).version == str(version)
    for device in EDGES:
        status = fleet.edge_status(device)["models"]["digits"]
        assert status["versions_adopted"] == ROUNDS + 1 and status["rounds_trained"] == ROUNDS
    server_metrics = call(fleet.server_url + "/metrics").body.decode()
    assert f'serverd_federation_version{{model="digits"}} {ROUNDS + 1}.0' in server_metrics
    edge_metrics = call(fleet.edge_urls[EDGES[0]] + "/metrics").body.decode()
    assert f'edged_federation_version{{model="digits"}} {ROUNDS + 1}.0' in edge_metrics
    _no_raw_sample_was_published(fleet)
    assert time.monotonic() - started < 600


def _published_params(fleet: Fleet, version: int, model: str = "digits") -> list[np.ndarray]:
    reader = f"reader-{new_job_id()}"  # a new session: only the retained message comes
    spy = MqttClient(MqttConfig(host=fleet.broker.host, port=fleet.broker.port, client_id=reader))
    got: queue.Queue[bytes] = queue.Queue()
    spy.subscribe(f"edgefed/federation/model/{model}", lambda _t, payload: got.put(payload))
    spy.start()
    try:
        message = decode(got.get(timeout=10), MAX_VERSION_FRAME_BYTES)  # the retained newest
    finally:
        spy.stop()
    assert isinstance(message, ReceivedModel) and message.model.version == version
    return read_head(message.body)


def _no_raw_sample_was_published(fleet: Fleet) -> None:
    messages = []
    while not fleet.seen.empty():
        messages.append(fleet.seen.get_nowait())
    federation = [(t, p) for t, p in messages if FEDERATION_TOPICS in t]
    assert len(federation) > ROUNDS * 3
    assembler = Reassembler()
    heads = {"digits": [(DIGIT_FEATURES, 10), (10,)], "person": [(1280, 2), (2,)]}
    for topic, payload in federation:
        message = decode(payload, MAX_VERSION_FRAME_BYTES)
        if isinstance(message, Received):
            whole = assembler.add(topic, message)
            if whole is not None:  # an update holds the head's tensors and nothing else
                shapes = heads[message.chunk.model]
                assert [p.shape for p in decode_params(whole.data)] == shapes
        elif isinstance(message, ReceivedModel):  # a version: the base and the new head
            assert [p.shape for p in read_head(message.body)] == heads[message.model.model]
    everything = b"".join(p for _, p in messages)  # every message, not only federation's
    for data in (fleet.data, fleet.person):
        for x, _ in data.edges:
            for row in x[:: max(1, len(x) // 40)]:
                assert row.astype("<f4").tobytes() not in everything


def test_the_twin_switch_takes_a_device_out_of_the_rounds(fleet: Fleet) -> None:
    edge = fleet.edge_urls[EDGES[0]]
    off = call(edge + "/api/v1/config", "PUT", b'{"federated_training": false}', AUTH)
    assert off.status == 200 and off.json()["federated_training"] is False
    try:
        wait_until("serverd hears the switch", lambda: _allowed(fleet) == EDGES[1:], 30)
        refused = fleet.serverd_cli("start", "digits")
        assert refused.returncode != 0
        assert "409" in refused.stderr and "need 3" in refused.stderr
        assert fleet.edge_status(EDGES[0])["training_allowed"] is False
    finally:
        on = call(edge + "/api/v1/config", "PUT", b'{"federated_training": true}', AUTH)
        assert on.status == 200
    wait_until("the device offers again", lambda: len(_allowed(fleet)) == 3, 30)


def test_a_restarted_serverd_goes_on_from_its_newest_version(fleet: Fleet) -> None:
    fleet.restart_serverd()
    newest = ROUNDS + 1
    wait_until("serverd back", lambda: _quiet(lambda: fleet.offers()) is not None, 60)
    version = call(fleet.server_url + "/api/v1/federation").json()["models"]["digits"]["version"]
    assert version == newest
    _round(fleet, newest)  # the edges still serve it, so they train from it and adopt the next


def test_a_poisoned_edge_is_neutralised_by_serverds_robust_strategy(fleet: Fleet) -> None:
    """A fourth, hostile edge offers samples and sends its honest update reversed and
    scaled twentyfold every round; serverd's multi-Krum keeps the accuracy."""
    start = fleet.versions()[0]
    assert start is not None
    clean = accuracy(_published_params(fleet, start), *fleet.data.test)
    client = MqttClient(
        MqttConfig(host=fleet.broker.host, port=fleet.broker.port, client_id="poisoner")
    )
    poisoner = Poisoner(client, FederationTopics(), "digits", fleet.data.edges[0])
    poisoner.start()
    client.start()
    try:
        wait_until("four offers", lambda: len(_allowed(fleet)) == 4, 30)
        for version in range(start, start + 5):
            answer = call(fleet.server_url + "/api/v1/federation/digits/rounds", "POST", b"", AUTH)
            assert answer.status == 201 and "poisoner" in answer.json()["participants"]
            wait_until(
                f"every edge on v{version + 1}",
                lambda v=version: fleet.versions() == [v + 1] * 3,
                90,
            )
    finally:
        poisoner.stop()
        client.publish(FederationTopics().samples("poisoner"), b"", retain=True).wait(10)
        client.stop()
    attacked = accuracy(_published_params(fleet, start + 5), *fleet.data.test)
    assert attacked >= clean - 0.02, (attacked, clean)


def test_a_worse_version_is_refused_and_the_served_one_keeps_serving(fleet: Fleet) -> None:
    """A version signed by serverd's key but worse on the edges' held-back slices (an
    all-zero head) is refused by every edge, which says why and keeps its version."""
    served = fleet.versions()
    worse = served[0] + 10
    key = load_private_key(fleet.signing_key)
    zero = [np.zeros((DIGIT_FEATURES, 10), np.float32), np.zeros(10, np.float32)]
    body = VersionImager("digits", digits_base(), list("0123456789"), key).packed(worse, zero)
    digest = sha256_hex(body)
    header = GlobalModel(
        model="digits",
        version=worse,
        round=1,
        sha256=digest,
        signature=sign(key, signed_text("digits", worse, digest)).hex(),
    )
    sender = MqttClient(MqttConfig(host=fleet.broker.host, port=fleet.broker.port, client_id="w"))
    sender.start()
    try:
        assert sender.wait_connected(10)
        sender.publish("edgefed/federation/model/digits", encode(header, body)).wait(10)
    finally:
        sender.stop()

    def refusals() -> dict[str, Any] | None:
        fed = call(fleet.server_url + "/api/v1/federation").json()["models"]["digits"]
        reports = {d: r for d, r in fed["adoptions"].items() if r["version"] == worse}
        return reports if len(reports) == 3 else None

    reports = wait_until("three refusals", refusals, 30)
    assert all(not r["adopted"] and "held-back accuracy" in r["reason"] for r in reports.values())
    assert fleet.versions() == served
    for device in EDGES:
        assert (
            "held-back accuracy"
            in fleet.edge_status(device)["models"]["digits"]["last_version_refusal"]
        )


def test_an_operator_label_for_an_unknown_class_or_model_is_refused(fleet: Fleet) -> None:
    edge = fleet.edge_urls[EDGES[1]]
    before = fleet.edge_status(EDGES[1])["models"]["digits"]["samples"]
    bad = json.dumps({"features": [0.0] * DIGIT_FEATURES, "label": "eleven"}).encode()
    answer = call(edge + "/api/v1/federation/digits/samples", "POST", bad, AUTH)
    assert answer.status == 400 and "unknown class" in answer.json()["reason"]
    short = json.dumps({"features": [0.0] * 3, "label": "1"}).encode()
    answer = call(edge + "/api/v1/federation/digits/samples", "POST", short, AUTH)
    assert answer.status == 400 and f"{DIGIT_FEATURES} features" in answer.json()["reason"]
    answer = call(edge + "/api/v1/federation/other/samples", "POST", bad, AUTH)
    assert answer.status == 404
    assert call(edge + "/api/v1/federation/digits/samples", "POST", bad).status == 401
    assert fleet.edge_status(EDGES[1])["models"]["digits"]["samples"] == before


def test_an_operator_rollback_serves_the_previous_version_and_refuses_the_newer(
    fleet: Fleet,
) -> None:
    """``edged image rollback`` on a stopped edge: it comes back on the previous version
    (from its other slot) and refuses the retained newer one, saying why."""
    device = EDGES[2]
    newest = fleet.versions()[2]
    assert newest is not None

    def rollback() -> None:
        trust = str(fleet.signing_key.with_suffix(".pub"))
        root = str(fleet.edge_images(device))
        cmd = [sys.executable, "-m", "edged", "image", "rollback", "digits"]
        done = subprocess.run(
            [*cmd, "--root", root, "--trust", trust],
            capture_output=True,
            text=True,
            env=fleet.env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert f"rolled back digits to {newest - 1}" in done.stdout

    fleet.restart_edge(device, rollback)
    status = wait_until(
        "the edge back, refusing the newer version",
        lambda: _quiet(
            lambda: (
                s
                if (s := fleet.edge_status(device)["models"]["digits"])["versions_refused"]
                else None
            )
        ),
        120,
    )
    assert status["version"] == newest - 1 and status["rolled_back_from"] == newest
    assert f"rolled back from v{newest}" in status["last_version_refusal"]
    served = read_manifest(fleet.edge_images(device) / "digits")
    assert served.version == str(newest - 1)
