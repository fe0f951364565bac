"""ApiConfig validation and where the bearer token comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edged.api.config import TOKEN_ENV, ApiConfig, resolve_token
from edgefed.errors import ConfigError

TOKEN = "a-long-enough-token-123"


def test_defaults_bind_loopback_8080_without_token() -> None:
    cfg = ApiConfig()
    assert (cfg.host, cfg.port, cfg.enabled) == ("127.0.0.1", 8080, True)
    assert resolve_token(cfg, env={}) is None


def test_token_from_config_file_or_environment(tmp_path: Path) -> None:
    assert resolve_token(ApiConfig(token=TOKEN), env={TOKEN_ENV: "other-token-xxxxxxxx"}) == TOKEN
    path = tmp_path / "token"
    path.write_text(f"{TOKEN}\n")
    assert resolve_token(ApiConfig(token_file=path), env={}) == TOKEN
    assert resolve_token(ApiConfig(), env={TOKEN_ENV: f" {TOKEN} "}) == TOKEN


def test_token_is_not_shown_in_dumps() -> None:
    cfg = ApiConfig(token=TOKEN)
    assert TOKEN not in repr(cfg) and TOKEN not in cfg.model_dump_json()


@pytest.mark.parametrize(
    "fields",
    [
        {"token": "short"},
        {"token": TOKEN, "token_file": "/x"},
        {"port": 70000},
        {"preview_fps": 0},
        {"jpeg_quality": 101},
        {"unknown": 1},
    ],
)
def test_invalid_settings_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ApiConfig.model_validate(fields)


def test_bad_token_sources_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="token_file"):
        resolve_token(ApiConfig(token_file=tmp_path / "missing"), env={})
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 16"):
        resolve_token(ApiConfig(token_file=short), env={})
    with pytest.raises(ConfigError, match=TOKEN_ENV):
        resolve_token(ApiConfig(), env={TOKEN_ENV: "abc"})
