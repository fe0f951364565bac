"""A three-node NATS cluster with JetStream and MQTT, on free ports of 127.0.0.1.

For tests and benches of serverd on a clustered broker: each node is its own
``nats-server`` process (Debian's, 2.9) with its own JetStream store, routes to the
others, and an MQTT listener (MQTT 3.1.1 over JetStream: QoS 1 sessions and messages are
JetStream streams, replicated across the cluster). ``kill(i)`` SIGKILLs one node.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from edgefed.ports import free_ports

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"


class NatsCluster:
    """``nodes`` nats-server processes forming one cluster named ``edgefed``."""

    def __init__(self, directory: Path, nodes: int = 3) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3 * nodes)
        self.client_ports = ports[:nodes]
        self.route_ports = ports[nodes : 2 * nodes]
        self.mqtt_ports = ports[2 * nodes :]
        self._processes: list[subprocess.Popen[bytes] | None] = [None] * nodes

    def _config(self, i: int) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.route_ports)
        return (
            f"server_name: node-{i}\n"
            f"listen: 127.0.0.1:{self.client_ports[i]}\n"
            f'jetstream {{ store_dir: "{self.directory / f"js-{i}"}" }}\n'
            f"cluster {{ name: edgefed, listen: 127.0.0.1:{self.route_ports[i]}, "
            f"routes: [{routes}] }}\n"
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_ports[i]} }}\n"
        )

    def start(self, timeout: float = 30.0) -> None:
        for i in range(len(self._processes)):
            config = self.directory / f"node-{i}.conf"
            config.write_text(self._config(i))
            log = (self.directory / f"node-{i}.log").open("ab")
            self._processes[i] = subprocess.Popen(
                [NATS_SERVER, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        for port in self.mqtt_ports:
            while not _listening(port):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"NATS cluster not up; see {self.directory}/node-*.log")
                time.sleep(0.1)

    def pids(self) -> list[int]:
        """The running nodes' process ids."""
        return [p.pid for p in self._processes if p is not None]

    def kill(self, i: int) -> None:
        process = self._processes[i]
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            self._processes[i] = None

    def stop(self) -> None:
        for process in self._processes:
            if process is not None and process.poll() is None:
                process.terminate()
        for i, process in enumerate(self._processes):
            if process is not None:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
                self._processes[i] = None

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
