"""The base of every counter record the daemons expose (status API, metrics, summaries).

A component declares its counters as a dataclass deriving from ``Counters`` (int fields,
plus the odd "last ..." string) and increments them from the one thread or lock that owns
it; ``as_dict`` is what the status API and the final summaries print.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class Counters:
    def as_dict(self) -> dict[str, Any]:
        """A copy of every field, by name."""
        return dataclasses.asdict(self)
