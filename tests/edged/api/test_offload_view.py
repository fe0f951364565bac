"""The API over the offload path's real parts: a SQLite outbox and an MQTT link."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.api.config import ApiConfig
from edged.api.server import ApiServer
from edged.api.sources import ApiSources
from edged.offload.outbox import Outbox
from edged.offload.records import NewJob, OutboxConfig
from edgefed.mqtt import MqttClient
from edgefed.testing.broker import Broker
from edgefed.testing.wait import wait_until
from edgefed.wire import OffloadRequest

from .conftest import Daemon
from .httpclient import call

NOW_MS = 1_800_000_000_000


def new_job(n: int) -> NewJob:
    request = OffloadRequest(
        job_id=f"job-{n:08d}",
        device_id="edge-01",
        model="person",
        deadline=NOW_MS + 60_000,
        created=NOW_MS + n,
        payload_kind="jpeg",
    )
    return NewJob(request, b"\xff\xd8" + bytes(98), "vtest", "hard_example")


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(OutboxConfig(path=tmp_path / "outbox.sqlite"), clock=lambda: NOW_MS)
    for n in range(3):
        box.enqueue(new_job(n))
    box.claim(1)
    try:
        yield box
    finally:
        box.close()


def test_outbox_and_link_show_in_status_readiness_metrics(
    daemon: Daemon, outbox: Outbox, tmp_path: Path
) -> None:
    with Broker(tmp_path / "broker", tls=True) as broker:  # as shipped: a client certificate
        mqtt = MqttClient(broker.client_config("api-test", clean_session=True))
        mqtt.start()
        expires = mqtt.cert_expires
        assert expires is not None and expires > time.time() + 30 * 86400
        sources = ApiSources(
            pipeline=daemon.app.pipeline,
            events=daemon.app.events,
            preview=daemon.preview,
            device_id="edge-01",
            outbox=outbox,
            links={"mqtt": mqtt},
        )
        server = ApiServer(ApiConfig(port=0), sources, env={})
        server.start()
        try:
            assert mqtt.wait_connected(10)
            wait_until("readiness", lambda: call(server.url + "/readyz").status == 200)
            st = call(server.url + "/api/v1/status").json()
            assert st["links"] == [{"name": "mqtt", "connected": True, "cert_expires": expires}]
            assert st["outbox"]["available"] and st["outbox"]["depth"] == 3
            assert st["outbox"]["counts"]["Enqueue"] == 2
            assert st["outbox"]["counts"]["Preprocessing"] == 1

            page = call(server.url + "/api/v1/outbox?limit=2").json()
            assert [j["id"] for j in page["jobs"]] == ["job-00000002", "job-00000001"]
            assert page["jobs"][0]["status"] == "Enqueue" and page["jobs"][0]["model"] == "person"
            claimed = call(server.url + "/api/v1/outbox?status=Preprocessing").json()["jobs"]
            assert [j["id"] for j in claimed] == ["job-00000000"]
            assert claimed[0]["started"] == NOW_MS and claimed[0]["ended"] is None
            assert call(server.url + "/api/v1/outbox?offset=3").json()["jobs"] == []

            unwired = call(server.url + "/api/v1/config")
            assert (unwired.status, unwired.json()["error"]) == (503, "unavailable")

            metrics = call(server.url + "/metrics").body.decode()
            assert 'edged_outbox_jobs{status="Enqueue"} 2.0' in metrics
            assert 'edged_link_up{link="mqtt"} 1.0' in metrics
            expiry = 'edged_link_cert_expiry_timestamp_seconds{link="mqtt"} '
            (line,) = [ln for ln in metrics.splitlines() if ln.startswith(expiry)]
            assert float(line.removeprefix(expiry)) == pytest.approx(expires)

            broker.stop()
            wait_until("the link to drop", lambda: not mqtt.connected)
            ready = call(server.url + "/readyz")
            assert ready.status == 503
            checks = {c["name"]: c for c in ready.json()["checks"]}
            assert checks["link:mqtt"] == {"name": "link:mqtt", "ok": False, "detail": "down"}
            assert 'edged_link_up{link="mqtt"} 0.0' in call(server.url + "/metrics").body.decode()
        finally:
            server.stop()
            mqtt.stop()
