"""JSON bodies are held to the JSON types of the published schema."""

from __future__ import annotations

from typing import Any

import pytest

from edged.api.jsontypes import type_errors
from edged.api.openapi import build_openapi

SCHEMA = build_openapi(["person", "pose"])["components"]["schemas"]["ConfigChange"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"motion_threshold": 30},
        {"motion_threshold": 30.0},
        {"target_fps": None},
        {"target_fps": 2.5},
        {"target_fps": 3},
        {"enabled_models": ["person"]},
        {"log_level": "DEBUG", "offload_policy": "never"},
        {"not_a_setting": "left to RuntimeConfig"},
    ],
)
def test_json_types_that_match_are_accepted(body: dict[str, Any]) -> None:
    assert type_errors(SCHEMA, body) == []


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"motion_threshold": "25"}, "motion_threshold: must be JSON integer"),
        ({"motion_threshold": True}, "motion_threshold: must be JSON integer"),
        ({"motion_threshold": 2.5}, "motion_threshold: must be JSON integer"),
        ({"motion_min_pixels": False}, "motion_min_pixels: must be JSON integer"),
        ({"target_fps": "5"}, "target_fps: must be JSON null or number"),
        ({"enabled_models": "person"}, "enabled_models: must be JSON array"),
        ({"enabled_models": ["person", 3]}, "enabled_models.1: must be JSON string"),
        ({"log_level": 10}, "log_level: must be JSON string"),
    ],
)
def test_wrong_json_types_are_named(body: dict[str, Any], error: str) -> None:
    assert type_errors(SCHEMA, body) == [error]


def test_a_body_of_many_wrong_items_gets_a_short_reason() -> None:
    """A 1 MiB body of numbers where names go built a 23 MB reason on the event loop."""
    errors = type_errors(SCHEMA, {"enabled_models": [0] * 500_000, "log_level": 10})
    assert errors == [f"enabled_models.{i}: must be JSON string" for i in range(10)] + [
        "more errors not listed"
    ]
