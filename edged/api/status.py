"""Build the API's views (status, models, readiness, outbox) from the daemon's sources."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from edged import __version__
from edgefed.lifecycle import OPEN, Status

from .preview import PreviewRenderer
from .schemas import (
    Check,
    ModelInfo,
    ModelStatus,
    OffloadResultsSummary,
    OutboxPage,
    OutboxQuery,
    OutboxSummary,
    PreviewStatus,
    Readiness,
    StatusBody,
)
from .sources import ApiSources

VERSIONED_PACKAGES = (
    "aiohttp",
    "numpy",
    "opencv-python-headless",
    "onnxruntime",
    "ai-edge-litert",
    "paho-mqtt",
    "pydantic",
)


def versions() -> dict[str, str]:
    """edged, Python and the installed versions of the packages that matter on site."""
    out = {"edged": __version__, "python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _capture(camera: dict[str, Any]) -> str:
    """A camera's readiness detail: its state, and why while it is not running (an
    unreachable stream says ``connecting: cannot open stream rtsp://...``)."""
    state, error = camera["state"], camera.get("last_error")
    return state if state == "running" or not error else f"{state}: {error}"


class StatusViews:
    """Read-only views over ``ApiSources``; every call reads the live state."""

    def __init__(self, sources: ApiSources, renderer: PreviewRenderer) -> None:
        self._src = sources
        self._renderer = renderer
        self._versions = versions()

    def status(self) -> StatusBody:
        raw = self._src.pipeline.status()
        return StatusBody.model_validate(
            {
                **raw,
                "device_id": self._src.device_id,
                "versions": self._versions,
                "models": [m.model_dump() for m in self._model_status(raw["models"])],
                "outbox": self.outbox_summary(),
                "offload_results": self.offload_results(),
                "links": [
                    {"name": name, "connected": link.connected, "cert_expires": link.cert_expires}
                    for name, link in self._src.links.items()
                ],
                "preview": PreviewStatus(
                    viewers=self._renderer.viewers,
                    renders=self._renderer.renders,
                    frames=self._src.preview.frames,
                ),
                "events_last_seq": self._src.events.last_seq,
                "object_events": self._src.objects.recent(20) if self._src.objects else [],
                "object_event_counts": self._src.objects.totals() if self._src.objects else {},
                "federation": fed.status() if (fed := self._src.federation) else {"enabled": False},
                "twin": {name: way.status() for name, way in self._src.twins.items()},
            }
        )

    def _model_status(self, live: dict[str, dict[str, Any]]) -> list[ModelStatus]:
        out = []
        for m in self._src.pipeline.config.models:
            if m.name in live:
                out.append(
                    ModelStatus.model_validate({"name": m.name, "loaded": True, **live[m.name]})
                )
            else:
                reason = self._src.model_failures.get(m.name, "not loaded")
                out.append(
                    ModelStatus(
                        name=m.name, loaded=False, error=reason, driver=m.driver, device=m.device
                    )
                )
        return out

    def models(self) -> list[ModelInfo]:
        live = self._src.pipeline.status()["models"]
        status = {s.name: s for s in self._model_status(live)}
        return [
            ModelInfo.model_validate(
                {
                    **live.get(m.name, {}),
                    **status[m.name].model_dump(exclude_none=True),
                    "cascade_on": m.cascade_on,
                    "regions": m.regions,
                    "every_n": m.every_n,
                }
            )
            for m in self._src.pipeline.config.models
        ]

    def readiness(self) -> Readiness:
        checks = [
            Check(name=f"capture:{c['name']}", ok=c["state"] == "running", detail=_capture(c))
            for c in self._src.pipeline.status()["cameras"]
        ]
        loaded = set(self._src.pipeline.workers)
        failed = sorted(self._src.model_failures)
        detail = f"{len(loaded)} loaded" + (f"; not loaded: {', '.join(failed)}" if failed else "")
        checks.append(Check(name="models", ok=bool(loaded), detail=detail))
        for name, link in self._src.links.items():
            up = link.connected
            checks.append(Check(name=f"link:{name}", ok=up, detail="connected" if up else "down"))
        return Readiness(ready=all(c.ok for c in checks), checks=checks)

    def offload_results(self) -> OffloadResultsSummary:
        results = self._src.offload_results
        if results is None:
            return OffloadResultsSummary(available=False, counts={}, recent=[])
        return OffloadResultsSummary.model_validate({"available": True, **results.status()})

    def outbox_summary(self) -> OutboxSummary:
        outbox = self._src.outbox
        if outbox is None:
            return OutboxSummary(available=False, depth=0, counts={})
        counts = outbox.counts()
        depth = sum(n for status, n in counts.items() if status in OPEN)
        return OutboxSummary(
            available=True, depth=depth, counts=counts, clock_offset_ms=outbox.clock_offset_ms
        )

    def outbox_page(self, query: OutboxQuery) -> OutboxPage:
        outbox = self._src.outbox
        if outbox is None:
            return OutboxPage(
                available=False, counts={}, jobs=[], limit=query.limit, offset=query.offset
            )
        statuses: list[Status] | None = None if query.status is None else [query.status]
        jobs = outbox.page(statuses, limit=query.limit, offset=query.offset)
        return OutboxPage.model_validate(
            {
                "available": True,
                "counts": outbox.counts(),
                "jobs": [job.as_dict() for job in jobs],
                "limit": query.limit,
                "offset": query.offset,
            }
        )
