"""Stand-ins for KubeEdge on a real mosquitto: EdgeCore's DeviceTwin and a subscriber.

It plays EdgeCore up to KubeEdge 1.14, whose twin messages carry ``expected`` values;
from 1.15 desired values go to the DMI mapper instead (``edgefed/testing/dmi.py``).

It keeps one device's twin (expected, actual and type of each property) and behaves
as EdgeCore does towards a device: ``twin/get`` is answered on ``twin/get/result``;
a ``twin/update`` is checked (key and value patterns, value against the twin's type,
as EdgeCore's ValidateValue does), answered on ``twin/update/result`` (the stored
twin, or ``{"code": 400, "reason"}``), and followed by a ``twin/update/delta`` whenever
some expected value still differs from the actual one. ``set_desired`` plays the
cloud changing a Device's desired value. ``Subscriber`` collects JSON messages, as a
cloud-side consumer of EventBus topics would.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgefed.clock import now_ms
from edgefed.testing import wait as support_wait
from edgefed.testing.broker import Broker

KEY = re.compile(r"^[a-zA-Z0-9\-_.,:/@#]{1,128}\Z")
VALUE = re.compile(r"^[a-zA-Z0-9\-_.,:/@#]{1,512}\Z")
MAX_DELTAS = 50  # far more than a converging exchange needs: past it we call it a loop


def _valid(value_type: str, value: str) -> bool:
    try:
        if value_type == "int":
            int(value)
        elif value_type == "float":
            float(value)
        elif value_type == "boolean":
            return value in ("true", "false")
    except ValueError:
        return False
    return value_type in ("int", "float", "string", "boolean")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll until ``predicate()`` is truthy; its value, or AssertionError on timeout."""
    return support_wait.wait_until("a condition of the twin", predicate, timeout)


class EdgeCoreTwin:
    """One device's twin as EdgeCore holds it (see module docstring)."""

    def __init__(self, broker: Broker, device_id: str) -> None:
        self.device_id = device_id
        self.base = f"$hw/events/device/{device_id}/twin"
        self.twin: dict[str, dict[str, Any]] = {}
        self.updates: list[dict[str, Any]] = []
        self.update_errors: list[str] = []
        self.gets = 0
        self.deltas_sent = 0
        self._lock = threading.Lock()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"edgecore-{uuid.uuid4()}"
        )
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.subscribe([(f"{self.base}/update", 1), (f"{self.base}/get", 1)])
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # -- the cloud side --------------------------------------------------------------------
    def set_desired(self, name: str, value: str, value_type: str = "string") -> None:
        """Like a change of ``spec.properties[].desired.value`` synced down to the edge."""
        with self._lock:
            prop = self.twin.setdefault(name, {"type": value_type, "actual": None})
            prop["expected"] = value
        self.send_delta()

    def seed(self, name: str, value_type: str, expected: str | None, actual: str | None) -> None:
        """Set a property as EdgeCore had stored it (no message is sent)."""
        with self._lock:
            self.twin[name] = {"type": value_type, "expected": expected, "actual": actual}

    def publish(self, suffix: str, payload: bytes) -> None:
        """Publish anything on ``{base}/{suffix}`` (malformed messages, error results)."""
        self._client.publish(f"{self.base}/{suffix}", payload, qos=1).wait_for_publish(5)

    def actual(self, name: str) -> str | None:
        with self._lock:
            prop = self.twin.get(name)
            return None if prop is None else prop.get("actual")

    def last_update_of(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            for update in reversed(self.updates):
                if name in update["twin"]:
                    entry: dict[str, Any] = update["twin"][name]
                    return entry
        return None

    def reports_of(self, name: str) -> int:
        with self._lock:
            return sum(1 for u in self.updates if name in u["twin"])

    # -- EdgeCore's behaviour --------------------------------------------------------------
    def _message(self, **fields: Any) -> bytes:
        base = {"event_id": str(uuid.uuid4()), "timestamp": now_ms()}
        return json.dumps(base | fields).encode()

    def _twin_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, prop in self.twin.items():
            entry: dict[str, Any] = {"metadata": {"type": prop["type"]}, "optional": True}
            for side in ("expected", "actual"):
                if prop.get(side) is not None:
                    entry[side] = {"value": prop[side], "metadata": {"timestamp": 1}}
            out[name] = entry
        return out

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.topic.endswith("/get"):
            event_id = json.loads(message.payload).get("event_id", "")
            with self._lock:
                self.gets += 1
                payload = self._message(event_id=event_id, twin=self._twin_json())
            client.publish(f"{self.base}/get/result", payload, qos=1)
            return
        self._on_update(json.loads(message.payload))

    def _on_update(self, update: dict[str, Any]) -> None:
        reason = ""
        with self._lock:
            self.updates.append(update)
            for name, prop in update["twin"].items():
                value = prop["actual"]["value"]
                value_type = prop.get("metadata", {}).get("type", "string")
                known = self.twin.get(name, {}).get("type", value_type)
                if not KEY.match(name) or (value and not VALUE.match(value)):
                    reason = f"invalid key or value: {name}={value!r}"
                elif not _valid(known, value):
                    reason = f"the value is not {known}: {name}={value!r}"
            if reason:
                self.update_errors.append(reason)
                result = self._message(code=400, reason=reason)
            else:
                for name, prop in update["twin"].items():
                    entry = self.twin.setdefault(name, {"expected": None})
                    entry["actual"] = prop["actual"]["value"]
                    entry["type"] = prop.get("metadata", {}).get("type", "string")
                result = self._message(twin=self._twin_json())
        self._client.publish(f"{self.base}/update/result", result, qos=1)
        self.send_delta()

    def send_delta(self) -> None:
        with self._lock:
            delta = {
                name: prop["expected"]
                for name, prop in self.twin.items()
                if prop.get("expected") and prop["expected"] != prop.get("actual")
            }
            if not delta or self.deltas_sent >= MAX_DELTAS:
                return
            self.deltas_sent += 1
            payload = self._message(twin=self._twin_json(), delta=delta)
        self._client.publish(f"{self.base}/update/delta", payload, qos=1)


class Subscriber:
    """Collects the JSON messages published on ``topic_filter``."""

    def __init__(self, broker: Broker, topic_filter: str) -> None:
        """Returns once the broker has acknowledged the subscription (SUBACK), so that a
        message published after it is received."""
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        subscribed = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4()}")
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect(broker.host, broker.port)
        self._client.subscribe(topic_filter, qos=1)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError(f"no SUBACK for {topic_filter} within 10 s")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages.put((message.topic, json.loads(message.payload)))

    def get(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
