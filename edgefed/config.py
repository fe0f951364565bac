"""Config helpers both daemons share: strict models, environment overlays, one error shape.

A daemon's config is a pydantic v2 model (``extra="forbid"``, a description on every
field, validators without I/O) read from YAML, overlaid with ``<PREFIX>SECTION__FIELD``
environment variables, and validated; every problem becomes one ``ConfigError`` whose
message lists each error with its field path; a value that is not a finite number
(YAML's ``.inf`` and ``.nan``) is refused wherever it stands. ``check_config_command`` is
the ``check-config`` sub-command of both CLIs.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefed import paths
from edgefed.errors import EXIT_CONFIG, EXIT_OK, ConfigError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
Model = TypeVar("Model", bound=BaseModel)

MAX_WAIT_S = 30 * 86400.0
"""The longest duration a setting takes (30 days): past it a value is a slip of the
keyboard, and the timers, the SQLite millisecond columns and the OS calls it feeds
overflow."""
Seconds = Annotated[float, Field(gt=0, le=MAX_WAIT_S)]
"""A duration setting in seconds: more than 0, at most ``MAX_WAIT_S``."""


class Strict(BaseModel):
    """Base of config sections: an unknown key is an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid")


class ImagesConfig(Strict):
    dir: Path = Field(
        default_factory=lambda: paths.images_dir(),
        description="Directory holding installed model images (one sub-directory per image); "
        "default: edgefed.paths (a checkout's firmware-images/build, else /var/lib/edgefed/images)",
    )
    trusted_keys: list[Path] = Field(
        default_factory=lambda: paths.trusted_keys(),
        description="Ed25519 public keys; an image must be signed by one of them; default: "
        "edgefed.paths (a checkout's dev key, else /etc/edgefed/keys/image-signing.pub)",
    )
    allow_unsigned: bool = Field(
        False, description="Accept images without a valid signature (development only)"
    )


def _child(node: Any, key: str, where: str) -> Any:
    if isinstance(node, list):
        if not (key.isdigit() and int(key) < len(node)):
            raise ConfigError(f"environment override {where}: no list item {key}")
        return node[int(key)]
    if not isinstance(node.get(key), dict | list):
        node[key] = {}
    return node[key]


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    where = ".".join(path)
    node: Any = tree
    for key in path[:-1]:
        node = _child(node, key, where)
    last = path[-1]
    if isinstance(node, list):
        _child(node, last, where)  # validates the index
        node[int(last)] = value
    else:
        node[last] = value


def apply_env(raw: dict[str, Any], env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """Overlay ``<PREFIX>SECTION__FIELD=value`` variables (values parsed as YAML scalars).

    List items are addressed by index: ``EDGED__CAMERAS__0__SOURCE=rtsp://...``.
    """
    for key in sorted(env):
        if not key.startswith(prefix):
            continue
        path = [p.lower() for p in key[len(prefix) :].split("__") if p]
        if not path:
            continue
        try:
            value = yaml.safe_load(env[key])
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: not a valid YAML value: {_one_line(exc)}") from None
        _set_path(raw, path, value)
    return raw


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "\n".join(lines)


def validate(
    model: type[Model], raw: Any, env: Mapping[str, str] | None = None, prefix: str = ""
) -> Model:
    """``raw`` overlaid with the environment (``os.environ`` when ``env`` is None; no
    overlay without a ``prefix``) and validated as ``model``, or ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a YAML mapping at the top level")
    if prefix:
        raw = apply_env(raw, os.environ if env is None else env, prefix)
    if bad := _non_finite(raw):
        raise ConfigError("\n".join(f"{loc}: must be a finite number, not {v}" for loc, v in bad))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def _non_finite(node: Any, loc: str = "") -> list[tuple[str, float]]:
    """The (path, value) of every infinite or NaN number in a parsed config."""
    if isinstance(node, float) and not math.isfinite(node):
        return [(loc or "(top level)", node)]
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return []
    return [bad for k, v in items for bad in _non_finite(v, f"{loc}.{k}" if loc else str(k))]


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, or ConfigError naming the file and the cause."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config must be a YAML mapping at the top level")
    return raw


def check_config_command(
    path: Path,
    load: Callable[[Path], Any],
    dump: Callable[[Any], str],
    check: Callable[[Any], list[str]] = lambda config: [],
) -> int:
    """``check-config`` of either daemon: print the resolved config, or each error with its
    path; ``check`` finds what a valid config names that a start would stop at (files)."""
    try:
        config = load(path)
        problems = check(config)
    except ConfigError as exc:
        problems = str(exc).splitlines()
    if problems:
        print(f"{path}: invalid configuration", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_CONFIG
    print(dump(config), end="")
    return EXIT_OK
