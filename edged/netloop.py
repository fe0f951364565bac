"""edged's network thread: one asyncio loop that drives the MQTT connection.

The MQTT client runs in loop mode on it (see ``edgefed.mqtt``), so message handlers and
PUBACK callbacks run on this thread, and so does the offload client's work: a request
leaves, and a reply is matched and stored, without handing each message from paho's
thread to another. Handlers of other services (EventBus, device twin) run here too and
must stay quick; publishing from any thread is safe.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from edgefed.mqtt import MqttClient

log = logging.getLogger(__name__)


class NetLoop:
    """``start``/``stop`` service: the loop's thread and the MQTT connection it drives."""

    def __init__(self, mqtt: MqttClient, name: str = "edged-net") -> None:
        self.mqtt = mqtt
        self.loop = asyncio.new_event_loop()
        self._name = name
        self._thread: threading.Thread | None = None

    def start(self, connect: bool = True) -> None:
        """Run the loop's thread; and connect, unless ``connect`` is False (see ``connect``)."""
        if self._thread is None:
            if self.loop.is_closed():  # started again after a stop
                self.loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        if connect:
            self.connect()

    def connect(self) -> None:
        """Bring up the MQTT connection (and keep it up) on the running loop."""
        self.mqtt.start(self.loop)

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (presence ``offline``), then end the thread; not from the loop."""
        if self._thread is None:
            return
        self.mqtt.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("network loop did not stop within %.1f s", timeout)
            return
        self._thread = None
        self.loop.close()

    def on_loop(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # what was still scheduled (the MQTT driver, cancelled by stop) ends here
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
