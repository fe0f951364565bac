"""Watch a daemon's retained availability topic (``online`` / ``offline``)."""

from __future__ import annotations

import queue

from edgefed.mqtt import MqttClient, MqttConfig
from edgefed.wire import Availability, decode_availability


class Presence:
    """Collects the availability messages on ``topic``; ``stop`` when done."""

    def __init__(
        self, port: int, topic: str, host: str = "127.0.0.1", config: MqttConfig | None = None
    ) -> None:
        """``config`` (an identity on a broker with an ACL) replaces ``host`` and ``port``."""
        self.seen: queue.Queue[Availability] = queue.Queue()
        config = config or MqttConfig(
            host=host, port=port, client_id=f"watch-{port}", clean_session=True
        )
        self.mqtt = MqttClient(config)
        self.mqtt.subscribe(topic, lambda _t, data: self.seen.put(decode_availability(data)))
        self.mqtt.start()

    def next(self, state: str, timeout: float = 60.0) -> Availability:
        """The next message in ``state``; ``queue.Empty`` if none comes within ``timeout``."""
        while True:
            message = self.seen.get(timeout=timeout)
            if message.state == state:
                return message

    def stop(self) -> None:
        self.mqtt.stop()
