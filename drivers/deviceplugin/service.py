"""The v1beta1 ``DevicePlugin`` gRPC service for one resource (grpc.aio adapter)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from edgefed.driver import DeviceInfo
from edgefed.errors import DriverError

from . import core
from .config import DevicePluginConfig
from .stubs import Api

log = logging.getLogger(__name__)


class DeviceTable:
    """The current devices of one resource; ListAndWatch streams wait on its changes."""

    def __init__(self) -> None:
        self._devices: tuple[DeviceInfo, ...] = ()
        self._version = 0
        self._changed = asyncio.Condition()

    @property
    def devices(self) -> tuple[DeviceInfo, ...]:
        return self._devices

    async def update(self, devices: Sequence[DeviceInfo]) -> bool:
        """Store the devices; wake the streams if an id or a health changed."""
        changed = core.health_snapshot(devices) != core.health_snapshot(self._devices)
        self._devices = tuple(devices)
        if changed:
            async with self._changed:
                self._version += 1
                self._changed.notify_all()
        return changed

    async def newer(self, version: int) -> tuple[int, tuple[DeviceInfo, ...]]:
        """Wait until the table is newer than ``version`` (-1: return the current state)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._version != version)
            return self._version, self._devices


class DevicePluginService:
    """Answers the kubelet for one resource. Methods are named as the proto's RPCs."""

    def __init__(
        self, api: Api, resource: str, table: DeviceTable, config: DevicePluginConfig
    ) -> None:
        self._pb = api.pb
        self._resource = resource
        self._table = table
        self._config = config

    def options(self) -> Any:
        return self._pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def _response(self, devices: Sequence[DeviceInfo]) -> Any:
        return self._pb.ListAndWatchResponse(
            devices=[self._pb.Device(ID=d.id, health=core.health(d)) for d in devices]
        )

    async def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return self.options()

    async def ListAndWatch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        version = -1
        while True:
            version, devices = await self._table.newer(version)
            log.info("%s: ListAndWatch sends %s", self._resource, core.describe(devices))
            yield self._response(devices)

    async def GetPreferredAllocation(self, request: Any, context: Any) -> Any:
        return self._pb.PreferredAllocationResponse(
            container_responses=[
                self._pb.ContainerPreferredAllocationResponse(
                    deviceIDs=core.preferred(
                        list(r.available_deviceIDs),
                        list(r.must_include_deviceIDs),
                        r.allocation_size,
                    )
                )
                for r in request.container_requests
            ]
        )

    async def Allocate(self, request: Any, context: Any) -> Any:
        known = {d.id: d for d in self._table.devices}
        try:
            allocations = [
                core.allocate(self._resource, list(c.devices_ids), known, self._config)
                for c in request.container_requests
            ]
        except DriverError as exc:
            log.warning("Allocate refused: %s", exc)
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(str(exc))
            return self._pb.AllocateResponse()
        for a in allocations:
            log.info("%s: allocated %s", self._resource, a.envs[self._config.env_name])
        return self._pb.AllocateResponse(
            container_responses=[self._container_response(a) for a in allocations]
        )

    def _container_response(self, a: core.Allocation) -> Any:
        pb = self._pb
        return pb.ContainerAllocateResponse(
            envs=a.envs,
            annotations=a.annotations,
            devices=[
                pb.DeviceSpec(
                    container_path=n.container_path,
                    host_path=n.host_path,
                    permissions=n.permissions,
                )
                for n in a.devices
            ],
            mounts=[
                pb.Mount(
                    container_path=str(m.container_path),
                    host_path=str(m.host_path),
                    read_only=m.read_only,
                )
                for m in a.mounts
            ],
        )

    async def PreStartContainer(self, request: Any, context: Any) -> Any:
        known = {d.id: d for d in self._table.devices}
        bad = [i for i in request.devices_ids if i not in known or not known[i].healthy]
        if bad:
            context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
            context.set_details(f"{self._resource}: devices not ready: {', '.join(bad)}")
        return self._pb.PreStartContainerResponse()
