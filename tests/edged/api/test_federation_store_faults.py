"""The API over a federation whose sample store fails for real: a file damaged on disk,
a full disk (SQLite's page limit). The status and the metrics keep answering; a posted
sample the store could not write is a 503 to send again, not a 400."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edged.api.config import ApiConfig
from edged.api.server import ApiServer
from edged.federation.adoption import HeadSlot
from edged.federation.participant import Participant
from edged.federation.samples import SampleStore
from edged.federation.service import EdgeFederation
from edged.federation.versions import VersionImages
from edgefed.federation_wire import FederationTopics
from edgefed.mqtt import MqttClient, MqttConfig
from tests.edged.test_federation_samples import corrupt_samples

from .conftest import TOKEN, Daemon
from .httpclient import Answer, call

DIM = 512
Serve = Callable[[EdgeFederation], str]


def _federation(store: SampleStore, tmp_path: Path) -> EdgeFederation:
    mqtt = MqttClient(MqttConfig(client_id="edge-0"))  # never started: no round here
    topics = FederationTopics()
    images = VersionImages(tmp_path / "images", [])
    digits = Participant(mqtt, topics, "edge-0", "digits", store, HeadSlot(), images)
    return EdgeFederation(
        mqtt, topics, "edge-0", store, [digits], {"digits": ["a", "b"]}, threading.Event()
    )


@pytest.fixture
def serve(daemon: Daemon) -> Iterator[Serve]:
    """Starts an API over the daemon's pipeline and the given federation; stops them all."""
    servers: list[ApiServer] = []

    def start(federation: EdgeFederation) -> str:
        sources = dataclasses.replace(daemon.sources, device_id="edge-0", federation=federation)
        server = ApiServer(ApiConfig(port=0, token=TOKEN), sources, env={})
        server.start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


def _post(url: str, features: list[float]) -> Answer:
    body = json.dumps({"features": features, "label": "a"}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    return call(url + "/api/v1/federation/digits/samples", "POST", body, headers)


def test_a_corrupt_sample_store_leaves_status_and_metrics_answering(
    serve: Serve, tmp_path: Path
) -> None:
    """The damaged file opens, so edged starts; its reads then raised a raw
    ``sqlite3.DatabaseError`` into the status: ``/api/v1/status`` answered 500 and
    ``/metrics`` (read from the same status) went dark. Now the model shows 0 samples,
    the store's ``read_failures`` say why, a posted sample is a 503, and the sample offer
    says 0 (before, no offer could be made: serverd kept the last one until it aged out)."""
    path = tmp_path / "federation.sqlite"
    store = SampleStore(path)
    for i in range(50):
        store.add("digits", np.full(DIM, i, np.float32), 0, "operator")
    store.close()
    corrupt_samples(path)
    store = SampleStore(path)
    try:
        url = serve(_federation(store, tmp_path))
        answer = call(url + "/api/v1/status")
        assert answer.status == 200
        federation = answer.json()["federation"]
        assert federation["models"]["digits"]["samples"] == 0
        assert federation["samples"]["read_failures"] >= 1
        metrics = call(url + "/metrics")
        assert metrics.status == 200
        assert 'edged_federation_samples{model="digits"} 0.0' in metrics.body.decode()
        posted = _post(url, [1.0] * DIM)
        assert (posted.status, posted.json()["error"]) == (503, "unavailable")
        assert "malformed" in posted.json()["reason"]
        federation = _federation(store, tmp_path)
        federation.set_allowed(True)
        assert federation.offer().samples == {"digits": 0}  # serverd will not pick it
    finally:
        store.close()


def test_a_sample_posted_to_a_full_store_is_a_503_and_stored_when_sent_again(
    serve: Serve, tmp_path: Path
) -> None:
    """A full disk (a real SQLITE_FULL) answered ``400 invalid``: a client does not send
    a 400 again, so the good sample was lost, and nothing counted it. Now it is a 503
    (the store's ``write_failures`` count it) and the same sample is stored once there
    is room."""
    store = SampleStore(tmp_path / "federation.sqlite", holdout_every=1000)
    try:
        url = serve(_federation(store, tmp_path))
        big = [0.5] * 40_000  # 160 KB: needs pages the file may not grow
        assert _post(url, big).status == 201
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count={pages}")
        refused = _post(url, big)
        assert (refused.status, refused.json()["error"]) == (503, "unavailable")
        assert "database or disk is full" in refused.json()["reason"]
        samples = call(url + "/api/v1/status").json()["federation"]["samples"]
        assert (samples["write_failures"], samples["refused"], samples["added"]) == (1, 0, 1)
        store._db.execute(f"PRAGMA max_page_count={pages * 100}")
        again = _post(url, big)
        assert again.status == 201 and again.json()["samples"] == 2
    finally:
        store.close()
