"""Check a JSON body's value types against a published JSON Schema object.

pydantic's lax mode (which the device twin needs: it sends every value as a string)
would accept ``"25"`` for an integer or ``true`` for 1. The HTTP API holds JSON bodies to
the JSON types its OpenAPI document states; ranges, enums and names are left to the
model that validates the change.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

MAX_JSON_INTEGER = 2**53  # the largest integer every JSON reader holds exactly
MAX_LISTED = 10  # errors a reason lists: a body of a million bad items is one short reason


def _is(kind: str, value: Any) -> bool:
    if kind == "integer":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    checks: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "boolean": bool,
        "array": list,
        "object": dict,
        "null": type(None),
    }
    return isinstance(value, checks[kind])


def _kinds(schema: dict[str, Any]) -> set[str]:
    """JSON types a schema allows (empty: unconstrained)."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return set(kind)
    options = [_kinds(option) for option in schema.get("anyOf", [])]
    return set() if not options or not all(options) else set().union(*options)


def _check(where: str, schema: dict[str, Any], value: Any) -> Iterator[str]:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_JSON_INTEGER:
        yield f"{where}: integer out of range (at most {MAX_JSON_INTEGER} in magnitude)"
        return
    kinds = _kinds(schema)
    if kinds and not any(_is(k, value) for k in kinds):
        yield f"{where}: must be JSON {' or '.join(sorted(kinds))}"
        return
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            yield from _check(f"{where}.{i}", schema["items"], v)


def type_errors(schema: dict[str, Any], body: dict[str, Any]) -> list[str]:
    """Type errors of ``body``'s known properties (unknown keys are left to the caller),
    the first ``MAX_LISTED`` of them, and a last line if there are more."""
    props: dict[str, Any] = schema.get("properties", {})
    found = (
        e for key, value in body.items() if key in props for e in _check(key, props[key], value)
    )
    errors = list(islice(found, MAX_LISTED + 1))
    if len(errors) > MAX_LISTED:
        errors[MAX_LISTED:] = ["more errors not listed"]
    return errors
