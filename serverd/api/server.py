"""ServerdApi: serverd's HTTP API on serverd's own event loop (aiohttp).

Conventions as edged's API (``edgefed.httpapi``): loopback by default, JSON errors,
mutating calls (the edge events) behind the bearer token unless
``api.open_edge_events`` admits KubeEdge's rest RuleEndpoint, which cannot send one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from edgefed.errors import ProtocolError, StartError
from edgefed.httpapi import JSON, check_bearer, middlewares, reject
from serverd.api.config import ServerdApiConfig
from serverd.api.devices import EVENT_KINDS, EdgeDevices, EventKind
from serverd.api.federation import Federation, FederationRoutes
from serverd.api.metrics import ServerdMetrics
from serverd.api.openapi import build_openapi

log = logging.getLogger(__name__)


class ServerdApi:
    """Serves the API while started; every handler runs on serverd's loop."""

    def __init__(
        self,
        config: ServerdApiConfig,
        token: str | None,
        status: Callable[[], dict[str, Any]],
        ready: Callable[[], bool],
        triton_metrics: Callable[[], Mapping[str, str]],
        metrics: ServerdMetrics,
        devices: EdgeDevices,
        federation: Federation = lambda: None,
    ) -> None:
        self.config = config
        self._token = token
        self._status = status
        self._ready = ready
        self._triton_metrics = triton_metrics
        self._metrics = metrics
        self._devices = devices
        self._federation = FederationRoutes(federation, lambda: self._token)
        self._openapi = json.dumps(build_openapi())
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port: int | None = None
        if token is None:
            log.warning("no API token configured: edge events need api.open_edge_events")

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the API is not running")
        host = self.config.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(
            middlewares=middlewares(self.config.host), client_max_size=self.config.max_event_bytes
        )
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.get("/api/v1/status", self.status),
                web.post("/api/v1/edge-events/{kind}", self.edge_event),
                web.get("/api/v1/openapi.json", self.openapi),
                *self._federation.routes(),
            ]
        )
        self._session = aiohttp.ClientSession()
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.config.host, self.config.port).start()
        except OSError as exc:
            await runner.cleanup()
            await self._session.close()
            where = f"{self.config.host}:{self.config.port}"
            raise StartError(f"API cannot listen on {where}: {exc}") from exc
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("API listening on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- handlers -------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self._status()), content_type=JSON)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=self._openapi, content_type=JSON)

    async def metrics(self, request: web.Request) -> web.Response:
        body = self._metrics.own()
        if self._session is not None:
            body += await self._metrics.tritons(self._session, self._triton_metrics())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def edge_event(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in EVENT_KINDS:
            raise reject(
                404, "not_found", f"unknown event kind {kind!r} ({', '.join(EVENT_KINDS)})"
            )
        if not self.config.open_edge_events:
            check_bearer(request.headers.get("Authorization"), self._token)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise reject(413, "too_large", f"at most {self.config.max_event_bytes} bytes") from None
        try:
            device = self._devices.record(_kind(kind), body)
        except ProtocolError as exc:
            raise reject(400, "bad_event", str(exc)) from None
        return web.json_response({"device_id": device}, status=202)


def _kind(name: str) -> EventKind:
    for kind in EVENT_KINDS:
        if kind == name:
            return kind
    raise ProtocolError(f"unknown event kind {name!r}")
