"""The serverd commands that talk to a running serverd (``status``, ``federation``): its
API's JSON over HTTP and the options every such command takes."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edgefed.errors import EdgeFedError
from serverd.api.config import TOKEN_ENV

DEFAULT_URL = "http://127.0.0.1:8081"


def call(url: str, path: str, method: str = "GET", token: str | None = None) -> Any:
    """The API's JSON answer; ``EdgeFedError`` with the API's reason otherwise."""
    request = urllib.request.Request(url.rstrip("/") + path, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("reason", exc.reason)
        except (ValueError, AttributeError):
            reason = exc.reason
        raise EdgeFedError(f"{method} {path}: HTTP {exc.code}: {reason}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise EdgeFedError(f"cannot reach serverd at {url}: {getattr(exc, 'reason', exc)}") from exc


def token(args: argparse.Namespace) -> str | None:
    """The API token from ``--token-file``, else ``$SERVERD_API_TOKEN``; None without."""
    if args.token_file is not None:
        try:
            return args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EdgeFedError(f"--token-file {args.token_file}: {exc.strerror}") from exc
    return os.environ.get(TOKEN_ENV) or None


def add_api_options(parser: argparse.ArgumentParser, token: bool = True) -> None:
    """``--url``, ``--token-file`` (for a command that changes something) and ``--json``."""
    parser.add_argument("--url", default=DEFAULT_URL, help=f"serverd API (default {DEFAULT_URL})")
    if token:
        parser.add_argument(
            "--token-file", type=Path, help=f"file holding the API token (default: ${TOKEN_ENV})"
        )
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")
