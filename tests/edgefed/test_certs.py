"""``edged certs``: a CA and per-identity certificates that a real mosquitto accepts, the
common name being the identity its ACL knows."""

from __future__ import annotations

import queue
import stat
import time
from pathlib import Path

import pytest

from edged.cli import main
from edgefed import certs
from edgefed.errors import EXIT_CONFIG, EXIT_OK, ConfigError
from edgefed.mqtt import MqttClient, MqttConfig, MqttTls
from edgefed.testing.broker import Broker
from edgefed.wire import Topics


def test_init_and_issue_make_keys_only_their_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["certs", "init", str(tmp_path / "pki")]) == EXIT_OK
    assert main(["certs", "issue", str(tmp_path / "pki"), "demo/edge-01"]) == EXIT_OK
    cert, key = tmp_path / "pki" / "demo_edge-01.pem", tmp_path / "pki" / "demo_edge-01.key"
    assert certs.common_name(cert) == "demo/edge-01"
    for private in (key, tmp_path / "pki" / "ca.key", tmp_path / "pki" / "broker.key"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert "demo/edge-01" in capsys.readouterr().out


def test_a_second_ca_and_a_bad_identity_are_refused(tmp_path: Path) -> None:
    assert main(["certs", "init", str(tmp_path)]) == EXIT_OK
    assert main(["certs", "init", str(tmp_path)]) == EXIT_CONFIG
    assert main(["certs", "issue", str(tmp_path), "edgefed/#"]) == EXIT_CONFIG
    assert main(["certs", "issue", str(tmp_path / "nowhere"), "edge-01"]) == EXIT_CONFIG


def test_issue_never_replaces_the_ca_the_broker_or_another_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On main 'certs issue DIR ca' overwrote the CA's key and certificate, 'broker' the
    broker's, and demo_edge-01 the files of demo/edge-01."""
    assert main(["certs", "init", str(tmp_path)]) == EXIT_OK
    assert main(["certs", "issue", str(tmp_path), "demo/edge-01"]) == EXIT_OK
    files = ("ca", "broker", "demo_edge-01")
    before = {p: p.read_bytes() for f in files for p in tmp_path.glob(f"{f}.*")}
    assert len(before) == 6
    capsys.readouterr()
    for identity in ("ca", "broker", "CA", "demo_edge-01"):
        assert main(["certs", "issue", str(tmp_path), identity]) == EXIT_CONFIG
    assert {p: p.read_bytes() for p in before} == before
    err = [
        line.removeprefix("edged: invalid configuration: ")
        for line in capsys.readouterr().err.splitlines()
    ]
    assert err[0] == "identity 'ca' is refused: ca.pem/.key are the CA's"
    assert err[1] == "identity 'broker' is refused: broker.pem/.key are the broker's"
    pem = tmp_path / "demo_edge-01.pem"
    assert err[3] == f"identity 'demo_edge-01': {pem} is the certificate of 'demo/edge-01'"
    assert main(["certs", "issue", str(tmp_path), "demo/edge-01"]) == EXIT_OK  # rotation
    assert pem.read_bytes() != before[pem]
    node_broker = certs.issue(tmp_path, "node-broker-a", server=True, name="node-broker-a")
    kept = node_broker.cert.read_bytes()
    assert main(["certs", "issue", str(tmp_path), "node-broker-a"]) == EXIT_CONFIG
    assert node_broker.cert.read_bytes() == kept  # an edge node's broker keeps its own
    assert "is a broker's certificate" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="cannot be named 'ca'"):
        certs.issue(tmp_path, "ca", server=True, name="ca")


def test_a_rotated_certificate_connects_with_the_same_identity(tmp_path: Path) -> None:
    """Issue, connect; issue again (rotation), connect with the new files, same ACL grants."""
    with Broker(tmp_path / "broker", tls=True, identities=["serverd", "edge-01"]) as broker:
        assert broker.tls is not None
        pki = broker.tls.ca.parent
        server = MqttClient(broker.client_config("serverd"))
        got: queue.Queue[bytes] = queue.Queue()
        server.subscribe(Topics().requests_filter(), lambda t, p: got.put(p))
        server.start()
        assert server.wait_connected(10)
        try:
            for attempt in (b"first", b"rotated"):
                issued = certs.issue(pki, "edge-01", days=1)
                tls = MqttTls(ca=broker.tls.ca, cert=issued.cert, key=issued.key)
                edge = MqttClient(
                    MqttConfig(host=broker.host, port=broker.port, client_id="e1", tls=tls)
                )
                edge.start()
                assert edge.wait_connected(10)
                time.sleep(0.1)
                edge.publish(Topics().request("edge-01"), attempt).wait(5)
                assert got.get(timeout=5) == attempt
                edge.stop()
        finally:
            server.stop()
