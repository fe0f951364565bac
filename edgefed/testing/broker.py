"""A real mosquitto for tests: free port, TCP_NODELAY, optional mutual TLS, stop/restart.

Usage::

    with Broker(tmp_path) as broker:            # plain TCP on 127.0.0.1:<free port>
        ...broker.port...
    with Broker(tmp_path, tls=True) as broker:  # TLS, client certificates required
        ...broker.tls.ca, broker.tls.client_cert, broker.tls.client_key...
    with Broker(tmp_path, identities=["serverd", "edge-01"]) as broker:
        ...broker.client_config("edge-01")...   # the shipped ACL, no anonymous clients

With ``identities`` the broker runs as shipped (docs/security.md): anonymous clients are
refused and ``edgefed.mqtt.acl`` decides who may publish and read what. Each identity
gets a password (plain TCP) or, with ``tls``, a client certificate whose common name the
broker takes as its user name.

``stop()`` and ``start()`` again reuse the same port, so clients can reconnect.
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from edgefed import certs
from edgefed.mqtt import MqttClient, MqttConfig, MqttTls
from edgefed.mqtt.acl import render_acl
from edgefed.ports import free_port
from edgefed.testing.processes import terminate

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away CA, the broker's certificate and one client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


TLS_DAYS = 90  # outlives any run, and clients' expiry warning (30 days)


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate a CA, a server certificate (localhost, 127.0.0.1) and a client certificate."""
    ca = certs.make_ca(directory, "edgefed test CA", days=TLS_DAYS)
    server = certs.issue(directory, "localhost", server=True, days=TLS_DAYS)
    client = certs.issue(directory, "edge-client", days=TLS_DAYS)
    return TlsFiles(ca.cert, server.cert, server.key, client.cert, client.key)


class Broker:
    """One mosquitto process bound to 127.0.0.1 on a port that stays the same across restarts."""

    def __init__(
        self,
        directory: Path,
        tls: bool = False,
        port: int | None = None,
        identities: Sequence[str] = (),
        max_packet_size: int | None = None,
        own_session: bool = False,
    ) -> None:
        self.directory = directory
        # its own session: a Ctrl-C at the terminal is for its owner to act on (the demo);
        # else it dies with the test run's process group
        self.own_session = own_session
        self.max_packet_size = max_packet_size  # bytes; past it mosquitto drops the client
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.tls = make_tls_files(directory / "tls") if tls else None
        self.identities = tuple(identities)
        self._passwords: dict[str, str] = {}
        self._certs: dict[str, certs.Issued] = {}
        if self.identities:
            self._make_identities()
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self.config_path.write_text(self._config())
        self._process: subprocess.Popen[bytes] | None = None

    def _make_identities(self) -> None:
        if self.tls is not None:
            tls_dir = self.tls.ca.parent
            self._certs = {
                name: certs.issue(tls_dir, name, days=TLS_DAYS) for name in self.identities
            }
        else:
            passwd = self.directory / "passwd"
            passwd.write_text("")
            for name in self.identities:
                self._passwords[name] = secrets.token_urlsafe(16)
                subprocess.run(
                    [str(MOSQUITTO_PASSWD), "-b", str(passwd), name, self._passwords[name]],
                    check=True,
                    capture_output=True,
                )
        (self.directory / "edgefed.acl").write_text(render_acl())

    def _config(self) -> str:
        lines = [
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.identities else 'true'}",
            "set_tcp_nodelay true",
            "max_queued_messages 10000",
        ]
        if self.max_packet_size is not None:
            lines.append(f"max_packet_size {self.max_packet_size}")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate true",
            ]
        if self.identities:
            lines.append(f"acl_file {self.directory / 'edgefed.acl'}")
            if self.tls is not None:
                lines.append("use_identity_as_username true")
            else:
                lines.append(f"password_file {self.directory / 'passwd'}")
        return "\n".join(lines) + "\n"

    def client_config(
        self, identity: str, client_id: str | None = None, **extra: Any
    ) -> MqttConfig:
        """An ``MqttConfig`` that connects as ``identity`` (one of ``identities``)."""
        fields: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "client_id": client_id or f"{identity.replace('/', '-')}-{secrets.token_hex(3)}",
            **extra,
        }
        if self.tls is not None:
            issued = self._certs.get(identity)
            cert, key = (
                (issued.cert, issued.key) if issued else (self.tls.client_cert, self.tls.client_key)
            )
            fields["tls"] = MqttTls(ca=self.tls.ca, cert=cert, key=key)
        elif identity in self._passwords:
            fields["username"] = identity
            fields["password"] = self._passwords[identity]
        return MqttConfig.model_validate(fields)

    def started_client(self, identity: str, **extra: Any) -> MqttClient:
        """A client of ``identity`` (its client id too) on its own thread, connected."""
        client = MqttClient(self.client_config(identity, client_id=identity, **extra))
        client.start()
        if not client.wait_connected(10):
            client.stop()
            raise RuntimeError(f"{identity} could not connect to the broker on {self.port}")
        return client

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.own_session,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    @property
    def pid(self) -> int | None:
        """The running mosquitto's process id."""
        return self._process.pid if self.running and self._process is not None else None

    def stop(self) -> None:
        if self._process is None:
            return
        terminate(self._process, 5)
        self._process = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
