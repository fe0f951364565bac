"""Config dicts for tests: the demo models on the real video, with a per-test state dir."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from tests.support.paths import IMAGES_DIR, REPO, TRUST_DIR, VTEST

DEMO_YAML = REPO / "packaging" / "dev" / "demo-edged.yaml"


def demo_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """The demo edged config with absolute paths, results and state under ``tmp_path``.

    Keyword arguments replace whole top-level sections (``models=[...]``) or, for dicts,
    update them (``output={"max_results": 10}``).
    """
    raw: dict[str, Any] = yaml.safe_load(DEMO_YAML.read_text())
    raw["cameras"][0]["source"] = str(VTEST)
    raw["images"] = {"dir": str(IMAGES_DIR), "trusted_keys": [str(TRUST_DIR / "dev-signing.pub")]}
    raw["state_dir"] = str(tmp_path / "state")
    raw["output"]["results"] = str(tmp_path / "results.jsonl")
    raw["output"]["summary_interval_s"] = 60
    raw["api"] = {"port": 0}  # an ephemeral port: tests never collide with a running edged
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **copy.deepcopy(value)}
        else:
            raw[key] = copy.deepcopy(value)
    return raw


def write_config(tmp_path: Path, raw: dict[str, Any]) -> Path:
    path = tmp_path / "edged.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
