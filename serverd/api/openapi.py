"""The OpenAPI 3.1 document of serverd's API (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from edgefed.wire import DEVICE_ID_PATTERN, MODEL_PATTERN
from serverd.api.devices import EVENT_KINDS

_ERROR = {
    "type": "object",
    "required": ["error", "reason"],
    "properties": {"error": {"type": "string"}, "reason": {"type": "string"}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


_STATUS = {
    "type": "object",
    "required": ["server_id", "ready", "instances", "scheduler", "jobs", "counters", "devices"],
    "properties": {
        "server_id": {"type": "string"},
        "ready": {"type": "boolean"},
        "instances": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["healthy", "in_flight", "completed", "models"],
                "properties": {
                    "healthy": {"type": "boolean"},
                    "in_flight": {"type": "integer"},
                    "completed": {"type": "integer"},
                    "models": {"type": "array", "items": {"type": "string"}},
                    "ema_ms": {"type": "object", "additionalProperties": {"type": "number"}},
                },
            },
        },
        "scheduler": {
            "type": "object",
            "required": ["queued", "in_flight"],
            "properties": {"queued": {"type": "integer"}, "in_flight": {"type": "integer"}},
        },
        "jobs": {"type": "object", "additionalProperties": {"type": "integer"}},
        "counters": {"type": "object"},
        "federation": {"$ref": "#/components/schemas/Federation"},
        "devices": {
            "type": "object",
            "required": ["count", "events", "devices"],
            "properties": {
                "count": {"type": "integer"},
                "events": {"type": "object", "additionalProperties": {"type": "integer"}},
                "devices": {"type": "object"},
            },
        },
    },
}


_FEDERATION = {
    "type": "object",
    "required": ["enabled"],
    "properties": {
        "enabled": {"type": "boolean"},
        "models": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["model", "phase", "version", "round"],
                "properties": {
                    "model": {"type": "string"},
                    "phase": {"type": "string", "enum": ["idle", "collecting"]},
                    "version": {"type": "integer"},
                    "round": {"type": "integer"},
                    "participants": {"type": "array", "items": {"type": "string"}},
                    "adoptions": {"type": "object"},
                    "counters": {"type": "object"},
                },
            },
        },
        "edges": {"type": "object"},
        "counters": {"type": "object"},
    },
}
_MODEL_PARAM = {
    "name": "model",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": MODEL_PATTERN},
}


def _federation_paths() -> dict[str, Any]:
    history = {
        "type": "object",
        "required": ["rounds"],
        "properties": {"rounds": {"type": "array", "items": {"type": "object"}}},
    }
    opened = {
        "type": "object",
        "required": ["model", "round", "base_version", "participants", "deadline_ms"],
        "properties": {
            "model": {"type": "string"},
            "round": {"type": "integer"},
            "base_version": {"type": "integer"},
            "participants": {"type": "array", "items": {"type": "string"}},
            "deadline_ms": {"type": "integer"},
            "train": {"type": "object"},
            "max_chunk_bytes": {"type": "integer"},
        },
    }
    return {
        "/api/v1/federation": {
            "get": {
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Federation"}, "federation state")
                }
            }
        },
        "/api/v1/federation/{model}/history": {
            "get": {
                "parameters": [_MODEL_PARAM],
                "responses": {
                    "200": _json(history, "closed rounds, oldest first"),
                    "404": _error("model not federated here, or federation not enabled"),
                },
            }
        },
        "/api/v1/federation/{model}/rounds": {
            "post": {
                "security": [{"bearer": []}],
                "parameters": [_MODEL_PARAM],
                "responses": {
                    "201": _json(opened, "the round opened (as published to the edges)"),
                    "401": _error("no bearer token"),
                    "403": _error("wrong token, or none configured"),
                    "404": _error("model not federated here, or federation not enabled"),
                    "409": _error("a round is open, or too few devices offer samples"),
                },
            }
        },
    }


def build_openapi() -> dict[str, Any]:
    text = {"text/plain": {"schema": {"type": "string"}}}
    health = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    }
    event_body = {
        "type": "object",
        "required": ["device_id"],
        "properties": {
            "device_id": {"type": "string", "pattern": DEVICE_ID_PATTERN},
            "type": {"type": "string", "enum": list(EVENT_KINDS)},
            "timestamp": {"type": "integer"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "serverd API", "version": "1"},
        "components": {
            "schemas": {"Error": _ERROR, "Status": _STATUS, "Federation": _FEDERATION},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/healthz": {"get": {"responses": {"200": _json(health, "the process is alive")}}},
            "/readyz": {
                "get": {
                    "responses": {
                        "200": _json(health, "serving: a healthy Triton instance and MQTT"),
                        "503": _json(health, "not serving yet or any more"),
                    }
                }
            },
            "/metrics": {
                "get": {"responses": {"200": {"description": "Prometheus text", "content": text}}}
            },
            "/api/v1/status": {
                "get": {
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Status"}, "serverd's status")
                    }
                }
            },
            "/api/v1/edge-events/{kind}": {
                "post": {
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": "kind",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": list(EVENT_KINDS)},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": event_body}},
                    },
                    "responses": {
                        "202": _json(
                            {"type": "object", "properties": {"device_id": {"type": "string"}}},
                            "recorded",
                        ),
                        "400": _error("not an edge event"),
                        "401": _error("no bearer token"),
                        "403": _error("wrong token, or none configured"),
                        "404": _error("unknown event kind"),
                        "413": _error("body too large"),
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {"responses": {"200": _json({"type": "object"}, "this document")}}
            },
            **_federation_paths(),
        },
    }
