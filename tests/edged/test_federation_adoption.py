"""A federated version adopted on the real pipeline: edged serves a federated
person/background classifier (EfficientNet-Lite0's frozen features and a federated head,
installed as a signed image in A/B slots) on every frame of vtest.avi while a new version
arrives on a real broker; it is swapped in between two frames with no frame dropped, and
a worse version after it is refused while the adopted one keeps serving. A model whose
first version arrives while edged runs starts serving from then on."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.federated import person_base, trust
from edged.app import EdgedApp
from edged.config import parse_config
from edged.federation.features import FeatureExtractor
from edged.federation.versions import INCOMING, VersionImages
from edged.framejob import FrameJob
from edged.wiring import RUNTIME_STATE
from edgefed.errors import FederationError
from edgefed.federation_wire import (
    FederationTopics,
    GlobalModel,
    encode,
    init_head,
    sha256_hex,
    signed_text,
)
from edgefed.images.federated import unpack
from edgefed.images.install import install_image
from edgefed.images.signing import sign
from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from serverd.federation.images import VersionImager
from tests.edged.test_pipeline import run_app
from tests.support.configs import demo_config
from tests.support.paths import IMAGES_DIR, TRUST_DIR, VTEST

MODEL = "people"
CLASSES = ["background", "person"]
FRAMES = 150


def _teacher(features: np.ndarray) -> list[np.ndarray]:
    """A fixed head whose answers on real features are the labels of the held-back slice
    (its bias splits them about in half): the version that *is* it judges perfectly, its
    negation judges worst."""
    rng = np.random.default_rng(7)
    weight = rng.normal(0, 0.05, (1280, 2)).astype(np.float32)
    margin = features @ weight
    split = float(np.median(margin[:, 1] - margin[:, 0]))
    return [weight, np.array([split / 2, -split / 2], np.float32)]


def _features() -> np.ndarray:
    """EfficientNet-Lite0 features of crops of real vtest.avi frames."""
    extractor = FeatureExtractor.of_image(
        IMAGES_DIR / "efficientnet_lite0", [TRUST_DIR / "dev-signing.pub"]
    )
    capture = cv2.VideoCapture(str(VTEST))
    rows = []
    for _ in range(12):
        ok, frame = capture.read()
        assert ok
        for _ in range(5):
            capture.read()
        for x in (0, 180, 360, 540):
            rows.append(extractor(frame, (x, 100.0, x + 200.0, 400.0)))
    return np.stack(rows)


def _publish(client: MqttClient, imager: VersionImager, version: int, params: list) -> None:
    body = imager.packed(version, params)
    digest = sha256_hex(body)
    header = GlobalModel(
        model=MODEL,
        version=version,
        round=max(1, version - 1),
        sha256=digest,
        signature=sign(imager.key, signed_text(MODEL, version, digest)).hex(),
    )
    client.publish(FederationTopics().model(MODEL), encode(header, body), retain=True).wait(10)


def _edge(tmp_path: Path, broker: Broker, key: Ed25519PrivateKey, models: list) -> EdgedApp:
    """edged on vtest.avi (fast, lossless) serving ``models``, federating ``MODEL``."""
    root = tmp_path / "federated-images"
    raw = demo_config(
        tmp_path,
        device_id="demo/edge-adopt",
        mqtt={"host": broker.host, "port": broker.port, "client_id": "edge-adopt"},
        models=models,
        pipeline={"lossless": True},
        output={"max_results": FRAMES},
        federation={
            "enabled": True,
            "models": [{"name": MODEL, "classes": CLASSES}],
            "images_dir": str(root),
            "holdout_every": 2,
            "margin": 0.05,
        },
    )
    raw["images"]["trusted_keys"] = [str(k) for k in _keys(tmp_path, key)]
    raw["cameras"][0] |= {"pace": "fast", "loop": False}
    return EdgedApp(parse_config(raw, env={}))


def _keys(tmp_path: Path, key: Ed25519PrivateKey) -> list[Path]:
    return [TRUST_DIR / "dev-signing.pub", trust(key, tmp_path / "keys")]


def test_a_new_version_is_swapped_in_with_no_frame_dropped_and_a_worse_one_refused(
    tmp_path: Path, broker: Broker
) -> None:
    key = Ed25519PrivateKey.generate()
    imager = VersionImager(MODEL, person_base(), CLASSES, key)
    root = tmp_path / "federated-images"
    first = tmp_path / "v1"
    first.mkdir()
    unpack(imager.packed(1, init_head(1280, 2)), first)
    install_image(first, root, _keys(tmp_path, key))  # v1, adopted before this start
    app = _edge(tmp_path, broker, key, [{"name": MODEL, "image": str(root / MODEL)}])
    assert app.federation is not None
    features = _features()
    teacher = _teacher(features)
    labels = np.argmax(features @ teacher[0] + teacher[1], axis=1)
    assert 0 < labels.mean() < 1
    for row, label in zip(features, labels, strict=True):
        app.federation.add(MODEL, row, int(label), "operator")  # half held back

    sender = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="server"))
    sender.start()
    assert sender.wait_connected(10)
    participant = app.federation.participants[MODEL]
    sent: set[int] = set()

    def server_side(job: FrameJob) -> None:
        """v2 at frame 10; v3 (worse) once v2 serves; near the end, v3's verdict."""
        served = participant.slot.current
        version = served.version if served else 0
        if job.frame.index >= 10 and 2 not in sent:
            sent.add(2)
            threading.Thread(target=_publish, args=(sender, imager, 2, teacher)).start()
        elif version == 2 and 3 not in sent:
            sent.add(3)
            worse = [-teacher[0], -teacher[1]]
            threading.Thread(target=_publish, args=(sender, imager, 3, worse)).start()
        elif job.frame.index >= FRAMES - 10:
            wait_until("v3 judged", lambda: participant.counters.versions_refused == 1, 60)

    app.pipeline.add_sink(server_side)
    try:
        records = run_app(tmp_path, app)
    finally:
        sender.stop()
    assert participant.counters.versions_adopted == 1
    assert "held-back accuracy" in participant.counters.last_version_refusal
    assert participant.slot.current is not None and participant.slot.current.version == 2

    assert len(records) >= FRAMES  # every gated frame has the model's result
    scores = [r["models"][MODEL][0]["top"][0][1] for r in records]
    v1 = [s == 0.5 for s in scores]  # the zero head of v1 says 0.5 for both classes
    swap = v1.index(False)
    assert 10 <= swap < FRAMES - 5 and not any(v1[swap:]), "v2 serves from one frame on"
    status = app.final_summary()["models"][MODEL]
    assert status["runner_swaps"] == 1 and status["version"] == "2"
    assert status["dropped"] == 0 and status["errors"] == 0


def test_a_model_whose_first_version_arrives_while_running_starts_serving(
    tmp_path: Path, broker: Broker
) -> None:
    key = Ed25519PrivateKey.generate()
    imager = VersionImager(MODEL, person_base(), CLASSES, key)
    models = [
        {"name": "person", "image": "pose_detector"},
        {"name": MODEL, "image": str(tmp_path / "federated-images" / MODEL)},
    ]
    app = _edge(tmp_path, broker, key, models)
    assert MODEL in app.models.failures and MODEL not in app.pipeline.workers
    sender = MqttClient(MqttConfig(host=broker.host, port=broker.port, client_id="server"))
    sender.start()
    assert sender.wait_connected(10)
    sent = threading.Event()

    def server_side(job: FrameJob) -> None:
        if job.frame.index >= 5 and not sent.is_set():
            sent.set()
            threading.Thread(target=_publish, args=(sender, imager, 1, init_head(1280, 2))).start()

    app.pipeline.add_sink(server_side)
    try:
        records = run_app(tmp_path, app)
    finally:
        sender.stop()
    served = [MODEL in r["models"] for r in records]
    assert any(served) and not served[0], "served from the first version's arrival on"
    first = served.index(True)
    assert all(served[first:])
    assert all(r["models"][MODEL][0]["top"][0][1] == 0.5 for r in records[first:])
    summary = app.final_summary()
    assert summary["model_failures"] == {}
    assert summary["models"][MODEL]["version"] == "1"
    # known as a model loaded at start would be: the API and the twin may turn it off and
    # on again, and the saved settings keep it on at the next start (before, naming it was
    # refused as unknown, and the next change of any setting saved a list without it)
    assert MODEL in app.runtime.current().enabled_models
    saved = json.loads((app.config.state_dir / RUNTIME_STATE).read_text())
    assert MODEL in saved["enabled_models"]
    app.runtime.apply({"enabled_models": ["person"]})
    assert app.pipeline.enabled == {"person"}
    app.runtime.apply({"enabled_models": ["person", MODEL]})
    assert app.pipeline.enabled == {"person", MODEL}


def test_a_version_with_no_room_to_unpack_is_refused_with_the_reason(tmp_path: Path) -> None:
    """A full disk (here a file where the unpacking directory goes): a FederationError,
    which the participant reports to serverd as the refusal's reason, not a traceback."""
    root = tmp_path / "federated"
    root.mkdir()
    (root / INCOMING).write_text("not a directory")
    images = VersionImages(root, [])
    refused = pytest.raises(FederationError, match=r"person v2: cannot unpack in .*\.incoming")
    with refused, images.unpacked("person", 2, b"any body"):
        pass


def test_what_a_crash_left_unpacking_is_swept_at_start(tmp_path: Path) -> None:
    """edged killed while it unpacked or judged a version left a whole image under
    ``.incoming`` for ever (nothing else ever looked there)."""
    left = tmp_path / "federated" / INCOMING / "person-x1y2" / "person"
    left.mkdir(parents=True)
    (left / "model.onnx").write_bytes(b"\0" * 4096)
    VersionImages(tmp_path / "federated", [])
    assert list((tmp_path / "federated" / INCOMING).iterdir()) == []


def test_slots_edged_cannot_write_refuse_the_version_with_the_reason(tmp_path: Path) -> None:
    """``edged image install`` run by another user (root) made slot directories edged
    cannot write: the install raised a bare OSError out of the participant, so the version
    was neither adopted nor reported refused. Here a file stands where the slots go."""
    root = tmp_path / "federated"
    root.mkdir()
    (root / "slots").write_text("not a directory")
    images = VersionImages(root, [TRUST_DIR / "dev-signing.pub"])
    with pytest.raises(FederationError, match=r"install failed: .*cannot use the slots in"):
        images.install(IMAGES_DIR / "pose_detector")
