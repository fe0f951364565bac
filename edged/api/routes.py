"""aiohttp handlers of the operator API. Every error is JSON ``{"error", "reason"}``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from importlib.resources import files
from typing import Any, TypeVar

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel, ValidationError

from edged.federation.samples import SampleStoreError
from edged.settings import RuntimeConfig
from edgefed.errors import ConfigError, FederationError, ProtocolError
from edgefed.httpapi import JSON, Handler, check_bearer, reject
from edgefed.wirejson import json_object

from . import mjpeg
from .jsontypes import type_errors
from .preview import PreviewRenderer
from .schemas import (
    EventPage,
    EventsQuery,
    Health,
    OutboxQuery,
    PreviewQuery,
    SampleIn,
    SampleStored,
)
from .sources import ApiSources
from .status import StatusViews

log = logging.getLogger(__name__)

STATIC = files(__package__ or "edged.api") / "static"  # package data: the dashboard
Q = TypeVar("Q", bound=BaseModel)


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def parse_query(model: type[Q], request: web.Request) -> Q:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise reject(400, "bad_request", _reasons(exc)) from None


def _ok(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), content_type=JSON, status=status)


PREVIEW_WRITE_TIMEOUT_S = 10.0
"""A preview viewer that takes in no frame for this long is let go of."""


class Routes:
    """The handlers, bound to one server's sources (create on the API's event loop)."""

    def __init__(
        self,
        sources: ApiSources,
        views: StatusViews,
        renderer: PreviewRenderer,
        registry: CollectorRegistry,
        openapi: Callable[[], dict[str, Any]],
        token: str | None,
    ) -> None:
        self._src = sources
        self._views = views
        self._renderer = renderer
        self._registry = registry
        self._openapi = openapi  # its model names grow when a federated model starts
        self._config_schema: dict[str, Any] = openapi()["components"]["schemas"]["ConfigChange"]
        self._token = token
        self._static = {name: STATIC.joinpath(name).read_bytes() for name in _STATIC_TYPES}
        self.closing = asyncio.Event()

    def add_to(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self._page("index.html"))
        r.add_get("/dashboard.js", self._page("dashboard.js"))
        r.add_get("/dashboard.css", self._page("dashboard.css"))
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/v1/openapi.json", self.openapi)
        r.add_get("/api/v1/status", self.status)
        r.add_get("/api/v1/models", self.models)
        r.add_get("/api/v1/events", self.events)
        r.add_get("/api/v1/outbox", self.outbox)
        r.add_get("/api/v1/config", self.get_config)
        r.add_put("/api/v1/config", self.put_config)
        r.add_post("/api/v1/federation/{model}/samples", self.post_sample)
        r.add_get("/api/v1/preview.jpg", self.preview_jpg)
        r.add_get("/api/v1/preview.mjpg", self.preview_mjpg)

    def _page(self, name: str) -> Handler:
        body, kind = self._static[name], _STATIC_TYPES[name]

        async def page(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type=kind, charset="utf-8")

        return page

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: 503 while a pipeline thread is stuck, the condition that withholds
        systemd's watchdog, so a pod's liveness probe (or a container's HEALTHCHECK)
        restarts a hung edged as systemd does."""
        stalled = self._src.stalled()
        if stalled:
            raise reject(503, "stalled", f"pipeline stalled: {', '.join(stalled)}")
        return _ok(Health(status="ok"))

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self._views.readiness()
        return _ok(ready, 200 if ready.ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        try:
            encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        except (TypeError, ValueError):  # an Accept prometheus_client cannot read: the text
            encode, content_type = generate_latest, CONTENT_TYPE_LATEST
        body = await asyncio.get_running_loop().run_in_executor(None, encode, self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(self._openapi()), content_type=JSON)

    async def status(self, request: web.Request) -> web.Response:
        # off the loop: the outbox counts are a SQLite query
        return _ok(await asyncio.get_running_loop().run_in_executor(None, self._views.status))

    async def models(self, request: web.Request) -> web.Response:
        body = "[" + ",".join(m.model_dump_json() for m in self._views.models()) + "]"
        return web.Response(text=body, content_type=JSON)

    async def events(self, request: web.Request) -> web.Response:
        q = parse_query(EventsQuery, request)
        events = self._src.events
        page = events.page(q.after, q.limit)
        next_after = page[-1]["seq"] if page else q.after
        body = {"events": page, "last_seq": events.last_seq, "next_after": next_after}
        return _ok(EventPage.model_validate(body))

    async def outbox(self, request: web.Request) -> web.Response:
        q = parse_query(OutboxQuery, request)
        page = await asyncio.get_running_loop().run_in_executor(None, self._views.outbox_page, q)
        return _ok(page)

    def _runtime(self) -> RuntimeConfig:
        if self._src.runtime is None:
            raise reject(503, "unavailable", "runtime configuration is not wired in this daemon")
        return self._src.runtime

    async def get_config(self, request: web.Request) -> web.Response:
        return _ok(self._runtime().current())

    async def put_config(self, request: web.Request) -> web.Response:
        check_bearer(request.headers.get("Authorization"), self._token)
        runtime = self._runtime()
        try:
            changes = json_object(await request.read(), "the body (settings)")
        except ProtocolError as exc:
            raise reject(400, "bad_request", str(exc)) from None
        errors = type_errors(self._config_schema, changes)
        if errors:
            raise reject(400, "invalid", "; ".join(errors))
        try:
            runtime.validate(changes)
        except ConfigError as exc:
            raise reject(400, "invalid", str(exc)) from None
        try:
            settings = await asyncio.to_thread(runtime.apply, changes)  # setters and fsync
        except ConfigError as exc:
            raise reject(409, "not_applied", str(exc)) from None
        return _ok(settings)

    async def post_sample(self, request: web.Request) -> web.Response:
        """An operator's labelled sample for a federated model; it never leaves the device."""
        check_bearer(request.headers.get("Authorization"), self._token)
        federation = self._src.federation
        if federation is None:
            raise reject(404, "not_found", "federated learning is not enabled on this device")
        try:
            sample = SampleIn.model_validate_json(await request.read())
        except ValidationError as exc:
            raise reject(400, "invalid", _reasons(exc)) from None
        model = request.match_info["model"]
        if model not in federation.models():
            known = ", ".join(federation.models())
            raise reject(404, "not_found", f"model {model!r} is not federated here ({known})")
        features = np.asarray(sample.features, dtype=np.float32)
        try:
            stored = await asyncio.to_thread(federation.add_label, model, features, sample.label)
        except SampleStoreError as exc:  # a good sample: the client may send it again
            raise reject(503, "unavailable", str(exc)) from None
        except FederationError as exc:
            raise reject(400, "invalid", str(exc)) from None
        try:
            count = await asyncio.to_thread(federation.samples, model)
        except SampleStoreError:  # stored all the same: a 503 would have it sent twice
            count = 0
        return _ok(SampleStored(id=stored, model=model, samples=count), status=201)

    def _camera(self, q: PreviewQuery) -> str:
        names = [c.name for c in self._src.pipeline.config.cameras]
        if q.camera is None:
            return names[0]
        if q.camera not in names:
            raise reject(404, "not_found", f"no camera {q.camera!r}; cameras: {', '.join(names)}")
        return q.camera

    async def preview_jpg(self, request: web.Request) -> web.Response:
        q = parse_query(PreviewQuery, request)
        rendered = await self._renderer.frame(self._camera(q), q.mask)
        if rendered is None:
            raise reject(503, "no_frame", "no frame has completed yet")
        return web.Response(
            body=rendered.jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-store"}
        )

    async def preview_mjpg(self, request: web.Request) -> web.StreamResponse:
        q = parse_query(PreviewQuery, request)
        camera = self._camera(q)
        renderer = self._renderer
        if renderer.viewers >= renderer.max_viewers:
            raise reject(
                503,
                "busy",
                f"{renderer.viewers} preview streams are open, at most "
                f"{renderer.max_viewers} (api.preview_max_viewers)",
            )
        headers = {"Content-Type": mjpeg.CONTENT_TYPE, "Cache-Control": "no-store"}
        resp = web.StreamResponse(headers=headers)
        with renderer.watching(), contextlib.suppress(ConnectionError):
            await resp.prepare(request)
            try:
                await self._send(resp, mjpeg.OPENING)
                last = -1
                while not self.closing.is_set():
                    rendered = await renderer.frame(camera, q.mask)
                    if rendered is not None and rendered.seq != last:
                        last = rendered.seq
                        await self._send(resp, mjpeg.part(rendered.jpeg))
                    await self._pause(renderer.interval)
            except TimeoutError:  # a viewer that stopped reading: its connection goes
                if request.transport is not None:
                    request.transport.abort()
        return resp

    @staticmethod
    async def _send(resp: web.StreamResponse, data: bytes) -> None:
        """Write to a preview viewer, or TimeoutError if it takes in nothing for a while."""
        await asyncio.wait_for(resp.write(data), PREVIEW_WRITE_TIMEOUT_S)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), seconds)


_STATIC_TYPES = {
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
