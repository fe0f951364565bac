"""The OpenAPI 3.1 document of the HTTP API, generated from the models the handlers use."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from edged import __version__
from edged.settings import RuntimeSettings

from .schemas import (
    ErrorBody,
    EventPage,
    EventsQuery,
    Health,
    ModelInfo,
    OutboxPage,
    OutboxQuery,
    PreviewQuery,
    Readiness,
    SampleIn,
    SampleStored,
    StatusBody,
)

REF = "#/components/schemas/{model}"
_BODIES: tuple[type[BaseModel], ...] = (
    ErrorBody,
    Health,
    Readiness,
    StatusBody,
    ModelInfo,
    EventPage,
    OutboxPage,
    SampleStored,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref(ErrorBody), description)


def _media(kind: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {kind: {"schema": schema or {"type": "string"}}}}


def _query(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    """Query parameters from a query model (optional values lose their null branch)."""
    schema = model.model_json_schema(ref_template=REF)
    defs.update(schema.get("$defs", {}))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            prop.update(options[0])
        if prop.get("default") is None:
            prop.pop("default", None)
        params.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": prop.pop("description", ""),
                "schema": prop,
            }
        )
    return params


def _get(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": responses, **extra}}


def _settings(settings: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """RuntimeSettings with enabled_models limited to the models this daemon loaded."""
    props = dict(settings["properties"])
    props["enabled_models"] = {
        **props["enabled_models"],
        "items": {"type": "string", "enum": models},
    }
    return {**settings, "properties": props}


def _config_change(settings: dict[str, Any]) -> dict[str, Any]:
    change = {k: v for k, v in settings.items() if k != "required"}
    change["title"] = "ConfigChange"
    change["description"] = "Any subset of the runtime settings; the rest keep their values"
    return change


def build_openapi(models: list[str]) -> dict[str, Any]:
    """The whole document for a daemon that loaded ``models`` (built on each request: a
    federated model that starts while edged runs joins them)."""
    _, top = models_json_schema(
        [(m, "serialization") for m in _BODIES]
        + [(RuntimeSettings, "validation"), (SampleIn, "validation")],
        ref_template=REF,
    )
    defs: dict[str, Any] = dict(top["$defs"])
    defs["RuntimeSettings"] = _settings(defs["RuntimeSettings"], sorted(models))
    defs["ConfigChange"] = _config_change(defs["RuntimeSettings"])
    bad_query = _error("Invalid query parameter")
    preview_params = _query(PreviewQuery, defs)
    no_camera = _error("Unknown camera")
    config_ops = {
        "get": {
            "summary": "Current runtime settings",
            "responses": {
                "200": _json(_ref(RuntimeSettings), "The settings in force"),
                "503": _error("Runtime configuration is not available"),
            },
        },
        "put": {
            "summary": "Change runtime settings (validated, applied, rolled back on failure)",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": REF.format(model="ConfigChange")}}
                },
            },
            "responses": {
                "200": _json(_ref(RuntimeSettings), "The settings now in force"),
                "400": _error("Body is not a JSON object or a value is invalid"),
                "401": _error("No bearer token"),
                "403": _error("Wrong token, or no token configured on the device"),
                "409": _error("Applying failed; every setting was rolled back"),
                "503": _error("Runtime configuration is not available"),
            },
        },
    }
    paths: dict[str, Any] = {
        "/healthz": _get(
            "Liveness: the process serves HTTP and its pipeline moves",
            {
                "200": _json(_ref(Health), "Alive"),
                "503": _error(
                    "The pipeline is stalled (a model run or a camera's dispatcher made no "
                    "progress; the reason names them): systemd's watchdog is withheld too"
                ),
            },
        ),
        "/readyz": _get(
            "Readiness: capture running, models loaded, links up",
            {"200": _json(_ref(Readiness), "Ready"), "503": _json(_ref(Readiness), "Not ready")},
        ),
        "/api/v1/status": _get("Daemon status", {"200": _json(_ref(StatusBody), "Status")}),
        "/api/v1/models": _get(
            "Configured models",
            {"200": _json({"type": "array", "items": _ref(ModelInfo)}, "Models")},
        ),
        "/api/v1/events": _get(
            "Recent frame results, paged by sequence number",
            {"200": _json(_ref(EventPage), "A page of events"), "400": bad_query},
            parameters=_query(EventsQuery, defs),
        ),
        "/api/v1/outbox": _get(
            "Offload outbox jobs, newest first",
            {"200": _json(_ref(OutboxPage), "A page of jobs"), "400": bad_query},
            parameters=_query(OutboxQuery, defs),
        ),
        "/api/v1/config": config_ops,
        "/api/v1/federation/{model}/samples": {
            "post": {
                "summary": "Store an operator's labelled sample (it never leaves the device)",
                "security": [{"bearer": []}],
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(SampleIn)}},
                },
                "responses": {
                    "201": _json(_ref(SampleStored), "Stored"),
                    "400": _error("Not a sample, an unknown class, or features of another length"),
                    "401": _error("No bearer token"),
                    "403": _error("Wrong token, or no token configured on the device"),
                    "404": _error("The model is not federated here, or federation is off"),
                    "503": _error("The sample store failed to write it (a full disk): send again"),
                },
            }
        },
        "/api/v1/preview.jpg": _get(
            "The newest annotated frame",
            {
                "200": _media("image/jpeg", "JPEG", {"type": "string", "format": "binary"}),
                "400": bad_query,
                "404": no_camera,
                "503": _error("No frame has completed yet"),
            },
            parameters=preview_params,
        ),
        "/api/v1/preview.mjpg": _get(
            "Live annotated MJPEG stream (never ends while the client reads)",
            {
                "200": _media("multipart/x-mixed-replace", "JPEG parts, boundary 'frame'"),
                "400": bad_query,
                "404": no_camera,
            },
            parameters=preview_params,
        ),
        "/metrics": _get(
            "Prometheus metrics (text format 0.0.4, or OpenMetrics if the Accept header asks)",
            {
                "200": {
                    "description": "Metrics",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/openmetrics-text": {"schema": {"type": "string"}},
                    },
                }
            },
        ),
        "/api/v1/openapi.json": _get(
            "This document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}
        ),
        "/": _get("Dashboard page", {"200": _media("text/html", "HTML")}),
        "/dashboard.js": _get("Dashboard script", {"200": _media("text/javascript", "JS")}),
        "/dashboard.css": _get("Dashboard style", {"200": _media("text/css", "CSS")}),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edged operator API",
            "version": __version__,
            "description": "Status, metrics, live preview and runtime settings of one edge device",
        },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
