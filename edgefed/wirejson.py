"""JSON objects from the wire (MQTT payloads, HTTP bodies), parsed with clear errors."""

from __future__ import annotations

import json
from typing import Any

from edgefed.errors import ProtocolError


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object from the wire; ``ProtocolError`` says why not (not UTF-8, not JSON,
    an integer of over 4300 digits, nested too deep for the parser, not an object)."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError(f"{what} is not JSON: nested too deep") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value
