"""What the daemons' HTTP APIs share: where they listen, the bearer token, JSON errors.

Both edged's operator API and serverd's API follow the same conventions: loopback by
default, mutating calls behind ``Authorization: Bearer <token>`` (from config, a file or
an environment variable; at least ``MIN_TOKEN_CHARS`` characters; with none, mutating
calls are refused), and every error as JSON ``{"error", "reason"}``. An API bound to
loopback answers only requests addressed to loopback (``middlewares``): a web page in
the operator's browser whose name was rebound to 127.0.0.1 (DNS rebinding) cannot read it
through the ssh tunnel the docs open to the dashboard.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from edgefed.errors import ConfigError

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
JSON = "application/json"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ListenConfig(BaseModel):
    """Where an API listens and its token for mutating calls (subclassed per daemon)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve the HTTP API")
    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address to bind (loopback unless exposed on purpose)",
    )
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port, for tests)")
    token: SecretStr | None = Field(
        None,
        description=f"Bearer token for mutating calls; at least {MIN_TOKEN_CHARS} characters. "
        "Else token_file, else the daemon's token environment variable; with none of them "
        "mutating calls are refused",
    )
    token_file: Path | None = Field(
        None, description="File holding the bearer token (first line); read at start"
    )

    @model_validator(mode="after")
    def _one_token_source(self) -> ListenConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give either token or token_file, not both")
        if self.token is not None and len(self.token.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"token must have at least {MIN_TOKEN_CHARS} characters")
        return self


def resolve_token(
    config: ListenConfig, env_var: str, env: Mapping[str, str] | None = None
) -> str | None:
    """The token from config, else token_file, else ``env_var``; None if none is set."""
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
        token = (os.environ if env is None else env).get(env_var, "").strip()
        if not token:
            return None
        where = env_var
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{where}: the token must have at least {MIN_TOKEN_CHARS} characters")
    return token


def reject(status: int, error: str, reason: str, **headers: str) -> web.HTTPException:
    """An HTTP error with the API's JSON body, to raise from a handler."""
    body = json.dumps({"error": error, "reason": reason})
    exc = web.HTTPException(text=body, content_type=JSON, headers=headers or None)
    exc.set_status(status)
    return exc


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turns aiohttp's own errors (404, 405, ...) and unexpected failures into JSON."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == JSON:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow",)}
        error = (exc.reason or "error").lower().replace(" ", "_")
        raise reject(exc.status, error, exc.text or exc.reason, **headers) from None
    except Exception:
        log.exception("API handler for %s %s failed", request.method, request.path)
        raise reject(500, "internal", "unexpected failure; see the daemon log") from None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.1``, ``::1``, with or without [])."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@web.middleware
async def loopback_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """421 for a request whose ``Host`` names anything but loopback (the port aside)."""
    host = request.headers.get("Host")
    if host is not None:
        name = host.rpartition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
        if not is_loopback(name):
            raise reject(
                421, "misdirected", f"this API answers requests to localhost only, not {name!r}"
            )
    return await handler(request)


def middlewares(bind_host: str) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    """The middlewares of an API bound to ``bind_host``: JSON errors, and on loopback
    the ``Host`` check (an API exposed on purpose is reached by other names)."""
    return [json_errors, loopback_only] if is_loopback(bind_host) else [json_errors]


def check_bearer(header: str | None, token: str | None) -> None:
    """Raise 401/403 unless ``header`` is ``Bearer <token>`` (constant-time comparison)."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise reject(401, "unauthorized", "send 'Authorization: Bearer <token>'", **_CHALLENGE)
    if token is None:
        raise reject(403, "forbidden", "no API token is configured")
    # aiohttp gives a header's bytes that are not UTF-8 as surrogates: kept, never matching
    if not hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), token.encode()):
        raise reject(403, "forbidden", "wrong token")
