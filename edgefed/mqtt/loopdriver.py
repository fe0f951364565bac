"""The loop drive mode of the MQTT adapter: an asyncio loop runs paho's connection.

The socket's reads and writes are the loop's readers and writers (``add_reader`` /
``add_writer``), so handlers and PUBACK callbacks run on the loop's thread with no hand-off
per message. A publish on the loop's thread (outside a read) is written to the socket at
once, rather than on the loop's next turn after whatever its caller does next (a commit,
say). A task on the loop reconnects with capped backoff (the blocking socket connect and
TLS handshake on the loop's executor) and runs paho's keep-alive once a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

from edgefed.mqtt.config import MqttConfig
from edgefed.outage import Repeats

log = logging.getLogger("edgefed.mqtt")
SANE_YEAR = 2025  # a clock before this year is unset (no real-time clock, no NTP yet)


class LoopDriver:
    """Drives one paho client from an asyncio loop once ``start`` has been called.

    ``connect_failed`` is called on every connection attempt that fails before the broker
    answers; ``connected`` must be called on every accepted connection (it resets the
    backoff). The backoff state lasts across ``stop`` and ``start``.
    """

    def __init__(
        self, client: paho.Client, config: MqttConfig, connect_failed: Callable[[], None]
    ) -> None:
        self._client = client
        self._config = config
        self._connect_failed = connect_failed
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: concurrent.futures.Future[None] | None = None
        self._socket_closed = threading.Event()
        self._reading = False  # in paho's loop_read (its handlers and callbacks run there)
        self._retry_delay = float(config.reconnect_min_s)
        self._last_attempt_failed = False
        self._failures = Repeats(log)  # the first at once, then one line a minute

    @property
    def started(self) -> bool:
        """Whether ``start`` has ever been called (the client is in loop mode)."""
        return self._task is not None

    def on_loop_thread(self) -> bool:
        return self.loop is not None and running_loop() is self.loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take over paho's socket callbacks and start the connecting task on ``loop``."""
        self.loop = loop
        client = self._client
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._task = asyncio.run_coroutine_threadsafe(self._drive(), loop)

    def stop(self, timeout: float) -> None:
        """Stop reconnecting; disconnect and wait (from another thread) for the socket to
        close."""
        assert self._task is not None
        self._task.cancel()
        if self._client.socket() is not None:
            self._client.disconnect()  # the loop sends it and closes the socket
            self._socket_closed.wait(timeout)

    def connected(self) -> None:
        """The broker accepted a connection: the next failure starts the backoff over."""
        self._last_attempt_failed = False
        self._retry_delay = float(self._config.reconnect_min_s)

    def socket_opened(self, sock: Any) -> None:
        """paho opened ``sock`` (on the loop or the connecting thread): read it on the loop."""
        assert self.loop is not None
        self._socket_closed.clear()
        self._in_loop(self.loop.add_reader, sock.fileno(), self._read)

    # --- paho's external-loop callbacks, from the loop or the connecting thread

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self.loop is not None
        fd = sock.fileno()  # still open: paho closes it after this callback
        self._in_loop(self.loop.remove_reader, fd)
        self._in_loop(self.loop.remove_writer, fd)
        self._socket_closed.set()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self.loop is not None
        if not self._reading and running_loop() is self.loop:
            # Write now rather than on the loop's next turn, after whatever its caller does
            # next (a commit, say). Not inside a read: paho is mid-packet there.
            client.loop_write()
            if not client.want_write():
                return  # all sent (paho has called on_socket_unregister_write)
        self._in_loop(self.loop.add_writer, sock.fileno(), client.loop_write)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        assert self.loop is not None
        self._in_loop(self.loop.remove_writer, sock.fileno())

    def _read(self) -> None:
        self._reading = True
        try:
            self._client.loop_read()
        finally:
            self._reading = False

    def _in_loop(self, call: Callable[..., object], *args: Any) -> None:
        """Run ``call`` on the loop: now if this is its thread, else as soon as it can."""
        assert self.loop is not None
        if running_loop() is self.loop:
            call(*args)
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nothing to register with
            self.loop.call_soon_threadsafe(call, *args)

    async def _drive(self) -> None:
        """(Re)connect with capped backoff and keep the connection alive, once a second."""
        loop = asyncio.get_running_loop()
        cfg = self._config
        cap = float(max(cfg.reconnect_min_s, cfg.reconnect_max_s))
        while True:
            if self._client.socket() is None:
                if self._last_attempt_failed:
                    await asyncio.sleep(self._retry_delay)
                    self._retry_delay = min(self._retry_delay * 2, cap)
                self._last_attempt_failed = True  # until the broker's CONNACK (connected)
                try:  # socket connect and TLS handshake block: off the loop
                    await loop.run_in_executor(None, self._client.reconnect)
                except Exception as exc:  # refused, unreachable, TLS: retried, never fatal
                    self._connect_failed()
                    self._failures(
                        "connect",
                        f"mqtt: cannot connect to {cfg.host}:{cfg.port}: {exc}"
                        f"{_clock_hint(exc)} (retrying)",
                    )
                    continue
            else:
                try:
                    self._client.loop_misc()  # keep-alive; a dead link closes the socket
                except Exception:
                    log.exception("mqtt: keep-alive check failed")
            await asyncio.sleep(1.0)


def _clock_hint(exc: BaseException) -> str:
    """Why a certificate may look invalid when nothing is wrong with it: the clock."""
    year = time.gmtime().tm_year
    if isinstance(exc, ssl.SSLCertVerificationError) and year < SANE_YEAR:
        return f" (this device's clock says {year}: set it or let NTP do so)"
    return ""


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
