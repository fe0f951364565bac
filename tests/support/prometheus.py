"""A real Prometheus server for tests (Debian's ``prometheus``, which setup installs for
promtool): a free port, a throw-away database, the given scrape targets every second."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefed.ports import free_port
from edgefed.testing.processes import terminate
from edgefed.testing.wait import wait_until


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> dict[str, Any]:
        """The instant query's answer: ``status`` and ``data`` (or ``error``)."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(address, timeout=10) as answer:
                body: dict[str, Any] = json.load(answer)
        except urllib.error.HTTPError as exc:  # a bad query: 400 with the error in JSON
            body = json.load(exc)
        return body

    def series(self, expr: str) -> list[dict[str, Any]]:
        answer = self.query(expr)
        assert answer["status"] == "success", (expr, answer.get("error"))
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


@contextmanager
def prometheus(directory: Path, jobs: Mapping[str, list[str]]) -> Iterator[Prometheus]:
    """Prometheus scraping ``jobs`` (name -> host:port targets) every second, until exit."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: run bash packaging/dev/setup.sh", pytrace=False)
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    scrape = [{"job_name": n, "static_configs": [{"targets": t}]} for n, t in jobs.items()]
    config.write_text(
        yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": scrape})
    )
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_until("prometheus ready", lambda: _ready(server, process), 30)
        yield server
    finally:
        terminate(process, 10)
        log.close()


def _ready(server: Prometheus, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"prometheus exited with {process.returncode}")
    try:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False
