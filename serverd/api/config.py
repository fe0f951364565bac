"""Settings of serverd's HTTP API (``api:`` in serverd.yaml); conventions as edged's."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from edgefed import httpapi
from edgefed.httpapi import ListenConfig

TOKEN_ENV = "SERVERD_API_TOKEN"


class ServerdApiConfig(ListenConfig):
    """Where the API listens and who may post edge events."""

    port: int = Field(
        8081, ge=0, le=65535, description="TCP port (edged's API uses 8080; 0: any free port)"
    )
    open_edge_events: bool = Field(
        False,
        description="Accept POST /api/v1/edge-events/* without the bearer token. KubeEdge's "
        "rest RuleEndpoint cannot send a header: set it only where a NetworkPolicy admits "
        "CloudCore alone",
    )
    max_event_bytes: int = Field(
        262_144, ge=1024, description="Largest edge event body accepted (bytes)"
    )
    max_devices: int = Field(
        10_000, ge=1, description="Devices remembered from edge events (oldest forgotten)"
    )


def resolve_token(config: ServerdApiConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The token from config, else token_file, else ``SERVERD_API_TOKEN``; None if none."""
    return httpapi.resolve_token(config, TOKEN_ENV, env)
