"""serverd's federation endpoints: state, one model's history, opening a round.

``GET /api/v1/federation`` and ``GET /api/v1/federation/{model}/history`` read;
``POST /api/v1/federation/{model}/rounds`` opens a round behind the bearer token. With
federation off (or not started yet) the reads say ``enabled: false`` and a round is
refused with 404.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

from edgefed.errors import FederationError
from edgefed.httpapi import JSON, check_bearer, reject
from serverd.federation.service import FederationService

Federation = Callable[[], FederationService | None]


class FederationRoutes:
    def __init__(self, federation: Federation, token: Callable[[], str | None]) -> None:
        self._federation = federation
        self._token = token

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/federation", self.status),
            web.get("/api/v1/federation/{model}/history", self.history),
            web.post("/api/v1/federation/{model}/rounds", self.start_round),
        ]

    async def status(self, request: web.Request) -> web.Response:
        service = self._federation()
        body = service.status() if service is not None else {"enabled": False}
        return web.Response(text=json.dumps(body), content_type=JSON)

    async def history(self, request: web.Request) -> web.Response:
        service = self._running()
        try:
            rounds = service.history(request.match_info["model"])
        except FederationError as exc:
            raise reject(404, "not_found", str(exc)) from None
        return web.Response(text=json.dumps({"rounds": rounds}), content_type=JSON)

    async def start_round(self, request: web.Request) -> web.Response:
        check_bearer(request.headers.get("Authorization"), self._token())
        service = self._running()
        model = request.match_info["model"]
        try:
            service.coordinator(model)
        except FederationError as exc:
            raise reject(404, "not_found", str(exc)) from None
        try:
            opened = service.start_round(model)
        except FederationError as exc:
            raise reject(409, "not_opened", str(exc)) from None
        return web.Response(
            text=opened.model_dump_json(exclude={"type"}), content_type=JSON, status=201
        )

    def _running(self) -> FederationService:
        service = self._federation()
        if service is None:
            raise reject(404, "not_found", "federation is not enabled or not started")
        return service
