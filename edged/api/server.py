"""ApiServer: the operator HTTP API on its own event loop in a named thread.

It fits EdgedApp's service list: ``start()`` returns once the port is bound (or raises
``ConfigError`` if it cannot be), ``stop()`` ends open preview streams, closes the
listener and joins the thread. Preview rendering runs on one worker thread owned by
the server, so it never competes with the event loop for more than one core.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from edgefed.errors import StartError
from edgefed.httpapi import middlewares

from .config import ApiConfig, resolve_token
from .metrics import make_registry
from .openapi import build_openapi
from .preview import PreviewRenderer
from .routes import Routes
from .sources import ApiSources
from .status import StatusViews

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


class ApiServer:
    """Serves the API for ``sources`` on ``config.host:config.port`` while started."""

    def __init__(
        self, config: ApiConfig, sources: ApiSources, env: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self._sources = sources
        self._token = resolve_token(config, env)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="api-preview")
        self.renderer = PreviewRenderer(
            sources.preview,
            self._executor,
            fps=config.preview_fps,
            quality=config.jpeg_quality,
            max_width=config.preview_max_width,
            max_viewers=config.preview_max_viewers,
        )
        self.views = StatusViews(sources, self.renderer)
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)
        self._bound = threading.Event()
        self._failure: OSError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.port: int | None = None
        if self._token is None:
            log.warning(
                "no API token configured: mutating calls (PUT /api/v1/config, ...) are refused"
            )

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        if self.port is None:
            raise RuntimeError("the API server is not running")
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._bound.wait(START_TIMEOUT_S):
            raise StartError(f"API did not start within {START_TIMEOUT_S:.0f} s")
        if self._failure is not None or self.port is None:
            self._thread.join(START_TIMEOUT_S)
            where = f"{self.config.host}:{self.config.port}"
            why = self._failure or "start-up failed (see the log)"
            raise StartError(f"API cannot listen on {where}: {why}") from self._failure
        log.info("API listening on %s", self.url)

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread.is_alive():
            self._thread.join(START_TIMEOUT_S)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:
            log.exception("API server failed")
        finally:
            self._bound.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        routes = Routes(
            self._sources,
            self.views,
            self.renderer,
            make_registry(self.views.status),
            lambda: build_openapi(list(self._sources.pipeline.workers)),
            self._token,
        )
        app = web.Application(middlewares=middlewares(self.config.host))
        routes.add_to(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
        except OSError as exc:
            self._failure = exc
            await runner.cleanup()
            return
        self.port = runner.addresses[0][1]
        self._bound.set()
        try:
            await self._stopping.wait()
        finally:
            routes.closing.set()
            await runner.cleanup()
