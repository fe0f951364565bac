"""The Grafana dashboard's queries on a real Prometheus scraping a real edged (job
``edged``, as docs/alerts.md has it): every query is valid PromQL, and every one whose
metrics this edged exports answers with data (a misspelt label value or metric name
answers with nothing). The serverd panels' queries must parse; their data is serverd's."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from edgefed.testing.wait import wait_until
from tests.support.grafana import queries
from tests.support.metricdocs import metrics_read
from tests.support.prometheus import prometheus

from .conftest import Daemon


def test_every_dashboard_query_answers_on_a_scraped_edged(daemon: Daemon, tmp_path: Path) -> None:
    target = urlsplit(daemon.url).netloc
    with prometheus(tmp_path / "prometheus", {"edged": [target]}) as server:
        wait_until("a scrape", lambda: server.series('up{job="edged"} == 1'), 30)

        def exported(name: str) -> bool:
            return bool(server.series(f'count({{__name__=~"{name}(_bucket)?", job="edged"}})'))

        def empty() -> list[tuple[str, str]]:
            """The queries without an answer that this edged should give one."""
            return [
                (title, expr)
                for title, expr in queries()
                if not server.series(expr)  # a query Prometheus refuses fails here
                and not any(n.startswith("serverd_") for n in metrics_read(expr))
                and all(exported(n) for n in metrics_read(expr))
            ]

        # rates need two scrapes in their window, the people panels a confirmed track
        deadline = time.monotonic() + 60
        while (missing := empty()) and time.monotonic() < deadline:
            time.sleep(1)
        assert missing == []
