"""The device plugin daemon: one gRPC server per resource, kept registered with the kubelet.

``DevicePlugin.run`` polls the driver's ``devices()`` (in a worker thread: vendor SDKs
block), groups them by hardware model into resources, serves each resource on its own
unix socket in the kubelet's device-plugin directory and registers it. A changed
``kubelet.sock`` (the kubelet restarted and wiped the directory) or a missing socket of
ours makes it restart the affected servers and register again.

Under systemd (``Type=notify``, edgefed-deviceplugin.service) the poll loop itself says
READY after its first round, pets the watchdog after every round and STOPPING on the way
out: a driver call that hangs (a wedged vendor SDK or sysfs read) stops the WATCHDOG
messages and systemd restarts the plugin. STATUS tells the resources and registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import grpc

from edgefed.driver import DeviceInfo, Driver, one_line
from edgefed.errors import DriverError
from edgefed.outage import Outage
from edgefed.sdnotify import Notifier

from . import core
from .config import DevicePluginConfig
from .service import DevicePluginService, DeviceTable
from .stubs import API_VERSION, KUBELET_SOCKET, Api

log = logging.getLogger(__name__)

STOP_GRACE_S = 0.5


class ResourceServer:
    """The gRPC server of one resource on ``<socket_dir>/<endpoint>``, and its registration."""

    def __init__(
        self, api: Api, resource: str, table: DeviceTable, config: DevicePluginConfig
    ) -> None:
        self.api = api
        self.resource = resource
        self.table = table
        self.config = config
        self.endpoint = core.endpoint_name(resource)
        self.socket = config.socket_dir / self.endpoint
        self._service = DevicePluginService(api, resource, table, config)
        self._server: grpc.aio.Server | None = None

    def socket_present(self) -> bool:
        return self.socket.is_socket()

    async def start(self) -> None:
        if len(str(self.socket)) > core.MAX_SOCKET_PATH:
            raise DriverError(f"socket path too long for a unix socket: {self.socket}")
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # a stale socket of a previous run
        server = grpc.aio.server()
        self.api.grpc.add_DevicePluginServicer_to_server(self._service, server)
        try:
            server.add_insecure_port(f"unix:{self.socket}")
        except RuntimeError as exc:
            raise DriverError(f"{self.resource}: cannot listen on {self.socket}: {exc}") from exc
        await server.start()
        self._server = server
        log.info("%s: serving on %s", self.resource, self.socket)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(STOP_GRACE_S)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def register(self, kubelet_socket: Path) -> None:
        """Register with the kubelet; DriverError names why it refused or was unreachable."""
        pb = self.api.pb
        request = pb.RegisterRequest(
            version=API_VERSION,
            endpoint=self.endpoint,
            resource_name=self.resource,
            options=self._service.options(),
        )
        async with grpc.aio.insecure_channel(f"unix:{kubelet_socket}") as channel:
            stub = self.api.grpc.RegistrationStub(channel)
            try:
                await stub.Register(request, timeout=self.config.register_timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise DriverError(
                    f"{self.resource}: kubelet registration failed: "
                    f"{exc.code().name}: {exc.details()}"
                ) from exc
        log.info("%s: registered with the kubelet as %s", self.resource, self.endpoint)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


class DevicePlugin:
    """Polls one driver and keeps its resources served and registered."""

    def __init__(
        self, driver: Driver, config: DevicePluginConfig, api: Api, notifier: Notifier
    ) -> None:
        self.driver = driver
        self.config = config
        self.api = api
        self.notifier = notifier
        self.kubelet_socket = config.socket_dir / KUBELET_SOCKET
        self.servers: dict[str, ResourceServer] = {}
        self._registered_with: tuple[int, int] | None = None
        self._last_problem = ""
        self._status = ""
        self._listing = Outage(log, f"{driver.type}: listing devices")

    def _problem(self, text: str) -> None:
        """Log a problem once until it changes, so a poll loop does not flood the log."""
        if text != self._last_problem:
            log.warning("%s", text)
            self._last_problem = text

    async def _devices(self) -> list[DeviceInfo]:
        known = [d for s in self.servers.values() for d in s.table.devices]
        try:
            devices = await asyncio.to_thread(self.driver.devices)
        except Exception as exc:  # whatever it raised, the driver cannot say: what we knew
            self._listing.failed(exc)  # is reported unhealthy, and the plugin keeps serving
            return [DeviceInfo(d.id, d.model, False, one_line(exc)) for d in known]
        self._listing.ok()
        return devices

    async def _update_tables(self) -> None:
        grouping = core.group(await self._devices(), self.config)
        for reason in grouping.rejected:
            self._problem(f"{self.driver.type}: {reason}")
        for resource, devices in grouping.resources.items():
            if resource not in self.servers:
                server = ResourceServer(self.api, resource, DeviceTable(), self.config)
                try:
                    await server.start()
                except DriverError as exc:  # retried on the next poll
                    self._problem(str(exc))
                    continue
                self.servers[resource] = server
                self._registered_with = None  # a new resource must be registered
            if await self.servers[resource].table.update(devices):
                log.info("%s: %s", resource, core.describe(devices))
        for resource, server in self.servers.items():
            if resource not in grouping.resources:  # every device of this model went away
                await server.table.update(())

    async def _keep_registered(self) -> None:
        identity = _identity(self.kubelet_socket)
        if identity is None:
            self._problem(f"waiting for the kubelet: {self.kubelet_socket} does not exist")
            self._registered_with = None
            return
        missing = [s for s in self.servers.values() if not s.socket_present()]
        if identity == self._registered_with and not missing:
            return
        try:
            for server in missing:  # the kubelet wipes the directory when it restarts
                log.info("%s: socket %s is gone, restarting", server.resource, server.socket)
                await server.restart()
            for server in self.servers.values():
                await server.register(self.kubelet_socket)
        except DriverError as exc:
            self._problem(str(exc))
            return
        self._registered_with = identity
        self._last_problem = ""

    async def poll_once(self) -> None:
        """One round: refresh device health, then (re-)register if the kubelet changed."""
        await self._update_tables()
        await self._keep_registered()

    def _notify(self) -> None:
        """After a round: READY the first time, then WATCHDOG; STATUS when it changes."""
        status = core.status_line(
            {r: s.table.devices for r, s in self.servers.items()},
            self._registered_with is not None,
        )
        if not self._status:
            self.notifier.ready(status)
        elif status != self._status:
            self.notifier.status(status)
        self._status = status
        self.notifier.watchdog()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; then stop every server and remove its socket."""
        try:
            while not stop.is_set():
                await self.poll_once()
                self._notify()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.poll_interval_s)
        finally:
            self.notifier.stopping("stopping: removing the plugin sockets")
            for server in reversed(list(self.servers.values())):
                await server.stop()
            log.info("device plugin stopped (pid %d)", os.getpid())
