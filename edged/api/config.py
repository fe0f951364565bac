"""Settings of the operator HTTP API (``api:`` in edged.yaml) and its bearer token."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from edgefed.errors import ConfigError

TOKEN_ENV = "EDGED_API_TOKEN"
MIN_TOKEN_CHARS = 16


class ApiConfig(BaseModel):
    """Where the status API listens, its mutating-call token and the live preview's cost."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve the HTTP API, metrics, preview and dashboard")
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to bind (loopback unless exposed on purpose)",
    )
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port, for tests)")
    token: SecretStr | None = Field(
        None,
        description=f"Bearer token for mutating calls (PUT /api/v1/config); at least "
        f"{MIN_TOKEN_CHARS} characters. Else token_file, else the {TOKEN_ENV} environment "
        "variable; with none of them mutating calls are refused",
    )
    token_file: Path | None = Field(
        None, description="File holding the bearer token (first line); read at start"
    )
    preview_fps: float = Field(
        5.0, gt=0, le=30, description="Most preview frames rendered per second (all viewers share)"
    )
    preview_max_width: int = Field(
        960, ge=64, le=4096, description="Preview frames wider than this are scaled down"
    )
    jpeg_quality: int = Field(70, ge=10, le=100, description="JPEG quality of preview frames")

    @model_validator(mode="after")
    def _one_token_source(self) -> ApiConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give either token or token_file, not both")
        if self.token is not None and len(self.token.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"token must have at least {MIN_TOKEN_CHARS} characters")
        return self


def resolve_token(config: ApiConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The token from config, else token_file, else ``EDGED_API_TOKEN``; None if none is set."""
    if config.token is not None:
        return config.token.get_secret_value()
    if config.token_file is not None:
        try:
            lines = config.token_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"api.token_file {config.token_file}: {exc.strerror}") from exc
        token = lines[0].strip() if lines else ""
        where = f"api.token_file {config.token_file}"
    else:
        token = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
        if not token:
            return None
        where = TOKEN_ENV
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{where}: the token must have at least {MIN_TOKEN_CHARS} characters")
    return token
