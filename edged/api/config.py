"""Settings of the operator HTTP API (``api:`` in edged.yaml) and its bearer token."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, SecretStr

from edgefed import httpapi
from edgefed.httpapi import MIN_TOKEN_CHARS, ListenConfig

TOKEN_ENV = "EDGED_API_TOKEN"


class ApiConfig(ListenConfig):
    """Where the status API listens, its mutating-call token and the live preview's cost."""

    enabled: bool = Field(True, description="Serve the HTTP API, metrics, preview and dashboard")
    token: SecretStr | None = Field(
        None,
        description=f"Bearer token for mutating calls (PUT /api/v1/config, POST "
        f"/api/v1/federation/<model>/samples); at least {MIN_TOKEN_CHARS} characters. Or "
        f"token_file (not both); with neither, the {TOKEN_ENV} environment variable; with "
        "none of them mutating calls are refused",
    )
    preview_fps: float = Field(
        5.0, gt=0, le=30, description="Most preview frames rendered per second (all viewers share)"
    )
    preview_max_viewers: int = Field(
        8,
        ge=1,
        le=256,
        description="Preview streams open at once; one more is answered 503 (each holds a "
        "connection and ~240 KB, and a page can open many)",
    )
    preview_max_width: int = Field(
        960, ge=64, le=4096, description="Preview frames wider than this are scaled down"
    )
    jpeg_quality: int = Field(70, ge=10, le=100, description="JPEG quality of preview frames")


def resolve_token(config: ApiConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The token from config, else token_file, else ``EDGED_API_TOKEN``; None if none is set."""
    return httpapi.resolve_token(config, TOKEN_ENV, env)
