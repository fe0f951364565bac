"""Edge events posted by KubeEdge Rules, and the devices they show to be connected."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from edgefed.clock import now_ms
from edgefed.errors import ProtocolError
from edgefed.wire import DEVICE_ID_PATTERN
from edgefed.wirejson import json_object

EventKind = Literal["frame", "stats", "twin"]
EVENT_KINDS: tuple[EventKind, ...] = ("frame", "stats", "twin")
"""What edged publishes on ``<ns>/user/edgefed/events/<kind>/<id>`` (edged/eventbus.py)."""
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


@dataclass
class DeviceSeen:
    last_seen_ms: int
    events: dict[str, int] = field(default_factory=dict)


class EdgeDevices:
    """Counts edge events by kind and remembers the last event of each device (bounded)."""

    def __init__(self, max_devices: int) -> None:
        self._max = max_devices
        self._devices: OrderedDict[str, DeviceSeen] = OrderedDict()
        self.counts: dict[str, int] = dict.fromkeys(EVENT_KINDS, 0)

    def record(self, kind: EventKind, body: bytes) -> str:
        """Check one event (a JSON object whose ``device_id`` is a device id); its device id.

        It is counted under the kind of the path it was posted to (the Rule's target).
        """
        event = json_object(body, "an edge event")
        device = event.get("device_id")
        if not isinstance(device, str) or not _DEVICE_ID.fullmatch(device):
            raise ProtocolError(f"device_id must match {DEVICE_ID_PATTERN}")
        stamp = event.get("timestamp", 0)
        if not isinstance(stamp, int) or isinstance(stamp, bool):
            raise ProtocolError("timestamp must be an integer (ms since the epoch)")
        if event.get("type", kind) not in EVENT_KINDS:
            raise ProtocolError(f"unknown event type {event.get('type')!r}")
        seen = self._devices.pop(device, None) or DeviceSeen(0)
        seen.last_seen_ms = now_ms()
        seen.events[kind] = seen.events.get(kind, 0) + 1
        self._devices[device] = seen
        while len(self._devices) > self._max:
            self._devices.popitem(last=False)
        self.counts[kind] += 1
        return device

    def status(self) -> dict[str, Any]:
        return {
            "count": len(self._devices),
            "events": dict(self.counts),
            "devices": {
                name: {"last_seen_ms": d.last_seen_ms, "events": dict(d.events)}
                for name, d in self._devices.items()
            },
        }
