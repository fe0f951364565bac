"""FakeEdgeCoreDmi: a fake of EdgeCore's DMI side (KubeEdge 1.15+), real gRPC on a unix socket.

It plays what EdgeCore's ``dmiserver`` and ``dmiclient`` do towards a mapper, in
upstream's order: it serves ``DeviceManagerService`` on its socket; ``MapperRegister``
refuses an empty protocol, remembers the mapper and, with ``withData``, answers with the
Devices of the mapper's protocol and their models, then dials the mapper's socket (the
``address`` it sent); only after that can the cloud side (``register_device``,
``update_device``, ``remove_device``, ``create_device_model``) push changes to the
mapper, as EdgeCore's DMI worker does on CloudCore's messages ("fail to get dmi client"
before). ``ReportDeviceStatus`` refuses a request without twins, and a twin without
``reported`` or ``observedDesired`` (EdgeCore would dereference them), and records the
rest; ``ReportDeviceStates`` records states. It keeps no database and sends nothing to
a cloud: tests read what it recorded.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from edgefed.dmi import stubs
from edgefed.testing import wait as support_wait


@dataclass(frozen=True)
class Report:
    """One ReportDeviceStatus: {property: (reported, observedDesired)}."""

    namespace: str
    name: str
    twins: dict[str, tuple[str, str]]


class FakeEdgeCoreDmi:
    """EdgeCore's DMI side for one node (see module docstring)."""

    def __init__(
        self, socket: Path, devices: Sequence[Any] = (), models: Sequence[Any] = ()
    ) -> None:
        self.api = stubs.load()
        self.socket = socket
        self.devices: dict[tuple[str, str], Any] = {(d.namespace, d.name): d for d in devices}
        self.models: dict[tuple[str, str], Any] = {(m.namespace, m.name): m for m in models}
        self.mappers: list[Any] = []  # MapperInfo of every MapperRegister, in order
        self.reports: list[Report] = []
        self.states: list[tuple[str, str, str]] = []
        self.calls: list[str] = []  # every call in both directions, in order
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.api.grpc.add_DeviceManagerServiceServicer_to_server(_Manager(self), self._server)
        self._server.add_insecure_port(f"unix:{socket}")
        self._server.start()

    def close(self) -> None:
        self._server.stop(grace=0).wait()
        if self._channel is not None:
            self._channel.close()
        self.socket.unlink(missing_ok=True)

    # -- the cloud's side: what CloudCore's messages make EdgeCore call ----------------------
    def _mapper(self) -> Any:
        with self._lock:
            if self._channel is None:
                raise RuntimeError("fail to get dmi client: no mapper registered yet")
            return self.api.grpc.DeviceMapperServiceStub(self._channel)

    def register_device(self, device: Any) -> Any:
        self._record("RegisterDevice", device)
        return self._mapper().RegisterDevice(self.api.pb.RegisterDeviceRequest(device=device))

    def update_device(self, device: Any) -> Any:
        self._record("UpdateDevice", device)
        return self._mapper().UpdateDevice(self.api.pb.UpdateDeviceRequest(device=device))

    def remove_device(self, namespace: str, name: str) -> Any:
        with self._lock:
            self.devices.pop((namespace, name), None)
            self.calls.append("RemoveDevice")
        request = self.api.pb.RemoveDeviceRequest(deviceName=name, deviceNamespace=namespace)
        return self._mapper().RemoveDevice(request)

    def create_device_model(self, model: Any) -> Any:
        with self._lock:
            self.models[(model.namespace, model.name)] = model
            self.calls.append("CreateDeviceModel")
        return self._mapper().CreateDeviceModel(self.api.pb.CreateDeviceModelRequest(model=model))

    def get_device(self, namespace: str, name: str) -> Any:
        request = self.api.pb.GetDeviceRequest(deviceName=name, deviceNamespace=namespace)
        return self._mapper().GetDevice(request).device

    def _record(self, call: str, device: Any) -> None:
        with self._lock:
            self.devices[(device.namespace, device.name)] = device
            self.calls.append(call)

    # -- reading what the mapper reported -------------------------------------------------
    def last_twins(self, namespace: str, name: str) -> dict[str, tuple[str, str]] | None:
        with self._lock:
            for report in reversed(self.reports):
                if (report.namespace, report.name) == (namespace, name):
                    return report.twins
        return None

    def wait_reported(
        self, namespace: str, name: str, prop: str, reported: str, observed: str | None = None
    ) -> dict[str, tuple[str, str]]:
        """Wait for a report with ``prop`` reported (and observedDesired, if given) so."""

        def match() -> dict[str, tuple[str, str]] | None:
            twins = self.last_twins(namespace, name)
            if twins is None or prop not in twins:
                return None
            got_reported, got_observed = twins[prop]
            if got_reported != reported or (observed is not None and got_observed != observed):
                return None
            return twins

        what = f"a report of {namespace}/{name} with {prop}={reported}"
        result: dict[str, tuple[str, str]] = support_wait.wait_until(what, match, 10.0)
        return result

    # -- helpers to build the messages CloudCore's conversion produces --------------------
    def device(
        self,
        name: str,
        namespace: str,
        protocol: str,
        model: str,
        desired: Mapping[str, str],
    ) -> Any:
        """A Device as EdgeCore converts it (dtcommon.ConvertDevice): desired per property."""
        pb = self.api.pb
        properties = [
            pb.DeviceProperty(name=prop, desired=pb.TwinProperty(value=value), reportToCloud=True)
            for prop, value in desired.items()
        ]
        spec = pb.DeviceSpec(
            deviceModelReference=model,
            protocol=pb.ProtocolConfig(protocolName=protocol),
            properties=properties,
        )
        return pb.Device(name=name, namespace=namespace, spec=spec)


class _Manager:
    """DeviceManagerService as EdgeCore serves it (gRPC worker threads)."""

    def __init__(self, fake: FakeEdgeCoreDmi) -> None:
        self._f = fake
        self._pb = fake.api.pb

    def MapperRegister(self, request: Any, context: grpc.ServicerContext) -> Any:
        mapper = request.mapper
        if not mapper.protocol:
            context.abort(
                grpc.StatusCode.UNKNOWN,
                f"fail to register mapper {mapper.name} because the protocol is nil",
            )
        f = self._f
        with f._lock:
            f.mappers.append(mapper)
            f.calls.append("MapperRegister")
            if f._channel is not None:
                f._channel.close()
            f._channel = grpc.insecure_channel(f"unix:{mapper.address.decode()}")
            if not request.withData:
                return self._pb.MapperRegisterResponse()
            devices = [
                d for d in f.devices.values() if d.spec.protocol.protocolName == mapper.protocol
            ]
            models = [
                f.models[(d.namespace, d.spec.deviceModelReference)]
                for d in devices
                if (d.namespace, d.spec.deviceModelReference) in f.models
            ]
        return self._pb.MapperRegisterResponse(deviceList=devices, modelList=models)

    def ReportDeviceStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        device = request.reportedDevice
        if not request.HasField("reportedDevice") or not device.twins:
            context.abort(
                grpc.StatusCode.UNKNOWN, "ReportDeviceStatusRequest does not have twin data"
            )
        for twin in device.twins:
            if not twin.HasField("reported") or not twin.HasField("observedDesired"):
                context.abort(
                    grpc.StatusCode.INTERNAL,
                    f"twin {twin.propertyName} lacks reported or observedDesired "
                    "(EdgeCore would crash on it)",
                )
        twins = {t.propertyName: (t.reported.value, t.observedDesired.value) for t in device.twins}
        with self._f._lock:
            self._f.calls.append("ReportDeviceStatus")
            self._f.reports.append(Report(request.deviceNamespace, request.deviceName, twins))
        return self._pb.ReportDeviceStatusResponse()

    def ReportDeviceStates(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.state or not request.deviceName:
            context.abort(grpc.StatusCode.UNKNOWN, "ReportDeviceStatesRequest is invalid data")
        with self._f._lock:
            self._f.calls.append("ReportDeviceStates")
            self._f.states.append((request.deviceNamespace, request.deviceName, request.state))
        return self._pb.ReportDeviceStatesResponse()
