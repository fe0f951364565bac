"""DmiMapper: edged as the KubeEdge DMI mapper of protocol ``edgefed`` (KubeEdge 1.15+).

From KubeEdge 1.15 (the v1beta1 device API) EdgeCore no longer sends desired twin
values over MQTT: it hands each Device's spec to the mapper of the Device's protocol
over gRPC (``edgefed/dmi/api.proto``). So, with ``dmi.enabled``:

1. edged serves ``DeviceMapperService`` on its own unix socket (``dmi.socket``, mode
   0600: EdgeCore runs as root);
2. it calls ``MapperRegister`` on EdgeCore's socket (``dmi.edgecore_socket``) with that
   socket's path, and receives the Devices of its protocol and their DeviceModels; it
   retries with capped backoff until EdgeCore answers, and registers again after a
   report fails (EdgeCore restarted or was away);
3. ``RegisterDevice`` and ``UpdateDevice`` carry the whole spec: each desired value goes
   through the same door as the MQTT twin and ``PUT /api/v1/config``
   (``edged.twin.desired``: checked against the property table and ``RuntimeConfig``,
   applied together, rolled back on failure, persisted);
4. it reports every property with ``ReportDeviceStatus``: ``reported`` is the value edged
   runs with (or the reading, for ReadOnly ones), ``observedDesired`` the desired value
   last received. A refused value is logged, published as a ``TwinOutcome`` event and
   reported with the old value, so the Device's status shows reported != desired.
   Reports go out after each change and every ``dmi.report_interval_s``.

One edged serves one Device (``device_id``: ``<name>`` or ``<namespace>/<name>``);
Devices of the same protocol with another id are refused with NOT_FOUND. EdgeCore
keeps one mapper per protocol, so a node with two edged daemons gives each its own
``dmi.protocol``.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any

import grpc

from edged.settings import RuntimeConfig
from edged.twin.desired import Rejection, apply_all, check, read_only_values
from edged.twin.dmi_config import DmiConfig, DmiCounters
from edged.twin.properties import PropertyTable
from edged.twin.service import Source, TwinOutcome
from edgefed.clock import now_ms
from edgefed.dmi import stubs
from edgefed.errors import ConfigError

log = logging.getLogger(__name__)

MAPPER_VERSION = "1"


class DmiMapper:
    """Serves DeviceMapperService and keeps EdgeCore's view of this device current."""

    def __init__(
        self,
        config: DmiConfig,
        device_id: str,
        runtime: RuntimeConfig,
        table: PropertyTable,
        on_outcome: Callable[[TwinOutcome], None] | None = None,
        readings: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.api = stubs.load()
        self._config = config
        namespace, _, name = device_id.rpartition("/")
        self._namespace = namespace or None  # None: any namespace
        self._name = name
        self._runtime = runtime
        self._table = table
        self._on_outcome = on_outcome
        self._readings = readings
        self.counters = DmiCounters()
        self.last_error = ""
        self._lock = threading.Lock()
        self._device: Any = None  # the pb Device EdgeCore gave us
        self._models: dict[tuple[str, str], Any] = {}
        self._desired: dict[str, str] = {}
        self._rejected: dict[str, Rejection] = {}
        self._registered = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None
        runtime.on_change(lambda _settings: self._wake.set())

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        path = self._config.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket():
            path.unlink()  # a stale socket of an earlier run
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="dmi-mapper")
        )
        self.api.grpc.add_DeviceMapperServiceServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix:{path}")
        os.chmod(path, 0o600)  # only EdgeCore (root) and edged's user may call the mapper
        server.start()
        self._server = server
        self._channel = grpc.insecure_channel(f"unix:{self._config.edgecore_socket}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dmi-edgecore", daemon=True)
        self._thread.start()
        log.info("DMI mapper %s serving %s on %s", self._config.name, self._config.protocol, path)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self._config.call_timeout_s + 1)
            self._thread = None
        if self._server is not None:
            self._server.stop(grace=1).wait()
            self._server = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._config.socket.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "protocol": self._config.protocol,
                "registered": self._registered,
                "device": self._device.name if self._device is not None else None,
                "models": sorted(f"{ns}/{name}" for ns, name in self._models),
                "desired": dict(self._desired),
                "rejections": {k: v.model_dump() for k, v in self._rejected.items()},
                "last_error": self.last_error,
                "counters": self.counters.as_dict(),
            }

    # -- towards EdgeCore -----------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            if not self._registered:
                if self._register():
                    delay = 0.5
                else:
                    self._stop.wait(delay)
                    delay = min(delay * 2, self._config.retry_max_s)
                    continue
            self._report()
            self._wake.wait(self._config.report_interval_s)
            self._wake.clear()

    def _stub(self) -> Any:
        return self.api.grpc.DeviceManagerServiceStub(self._channel)

    def _register(self) -> bool:
        pb = self.api.pb
        info = pb.MapperInfo(
            name=self._config.name,
            version=MAPPER_VERSION,
            api_version=stubs.API_VERSION,
            protocol=self._config.protocol,
            address=str(self._config.socket).encode(),
            state="ok",
        )
        request = pb.MapperRegisterRequest(withData=True, mapper=info)
        try:
            response = self._stub().MapperRegister(request, timeout=self._config.call_timeout_s)
        except grpc.RpcError as exc:
            self._failed("register_failures", f"MapperRegister: {_describe(exc)}")
            return False
        self.counters.registrations += 1
        self._registered = True
        log.info("DMI: registered with EdgeCore at %s", self._config.edgecore_socket)
        for model in response.modelList:
            self.put_model(model)
        for device in response.deviceList:
            if self.is_ours(device):
                self.take_device(device, "register_device")
        return True

    def _report(self) -> None:
        with self._lock:
            device = self._device
            twins = self._twins() if device is not None else None
        if device is None or twins is None:
            return
        pb = self.api.pb
        status = pb.DeviceStatus(
            twins=twins,
            reportToCloud=True,
            reportCycle=int(self._config.report_interval_s * 1000),
        )
        request = pb.ReportDeviceStatusRequest(
            deviceName=device.name, deviceNamespace=device.namespace, reportedDevice=status
        )
        try:
            self._stub().ReportDeviceStatus(request, timeout=self._config.call_timeout_s)
        except grpc.RpcError as exc:
            self._failed("report_failures", f"ReportDeviceStatus: {_describe(exc)}")
            self._registered = False  # EdgeCore may have restarted: register again
            return
        self.counters.reports += 1

    def _twins(self) -> list[Any]:
        """Every property: reported value and the desired value last received (under lock)."""
        pb = self.api.pb
        current = self._runtime.current()
        values = {n: getattr(current, n) for n in self._table.writable()} | self._read()
        stamp = str(now_ms())
        twins = []
        for name in self._table.names():
            metadata = {"type": self._table.wire_type(name), "timestamp": stamp}
            reported = self._table.format(name, values.get(name))
            twins.append(
                pb.Twin(
                    propertyName=name,
                    reported=pb.TwinProperty(value=reported or "", metadata=metadata),
                    observedDesired=pb.TwinProperty(
                        value=self._desired.get(name, ""), metadata=metadata
                    ),
                )
            )
        return twins

    def _read(self) -> dict[str, Any]:
        return read_only_values(self._readings, self._table, "DMI")

    def _failed(self, counter: str, message: str) -> None:
        """Record a failure; the message is in place before the counter moves, so a reader
        that sees the count (a status poll, a test) also sees why."""
        if message != self.last_error:
            log.warning("DMI: %s", message)
        self.last_error = message
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)

    # -- from EdgeCore --------------------------------------------------------------------
    def is_ours(self, device: Any) -> bool:
        namespace_ok = self._namespace is None or device.namespace == self._namespace
        if device.name == self._name and namespace_ok:
            return True
        self.counters.foreign_devices += 1
        log.warning(
            "DMI: device %s/%s is not this edged's (%s); ignored",
            device.namespace,
            device.name,
            self._name if self._namespace is None else f"{self._namespace}/{self._name}",
        )
        return False

    def put_model(self, model: Any) -> None:
        with self._lock:
            self._models[(model.namespace, model.name)] = model

    def remove_model(self, namespace: str, name: str) -> None:
        with self._lock:
            self._models.pop((namespace, name), None)

    def take_device(self, device: Any, source: Source) -> None:
        """Store the device and apply its desired values (RegisterDevice, UpdateDevice)."""
        desired = {
            p.name: p.desired.value
            for p in device.spec.properties
            if p.HasField("desired") and p.desired.value != ""
        }
        with self._lock:
            self.counters.device_pushes += 1
            self._device = device
            self._desired = desired
            applied, rejected = self._apply(desired)
            self._rejected = rejected
        for name, rejection in rejected.items():
            log.warning("DMI: %s=%r rejected: %s", name, rejection.value, rejection.reason)
        if applied or rejected:
            self._emit(source, applied, rejected)
        self._wake.set()

    def _apply(self, desired: Mapping[str, str]) -> tuple[dict[str, str], dict[str, Rejection]]:
        current = self._runtime.current()
        changes: dict[str, tuple[Any, str]] = {}
        rejected: dict[str, Rejection] = {}
        for name, wire in desired.items():
            try:
                value = check(self._runtime, self._table, name, wire)
            except ConfigError as exc:
                rejected[name] = Rejection(value=wire, reason=str(exc))
                continue
            if value != getattr(current, name):
                changes[name] = (value, wire)
        if changes:
            rejected |= apply_all(self._runtime, changes)
        applied = {n: wire for n, (_, wire) in changes.items() if n not in rejected}
        self.counters.applied += len(applied)
        self.counters.rejected += len(rejected)
        return applied, rejected

    def forget_device(self, namespace: str, name: str) -> bool:
        with self._lock:
            device = self._device
            if device is None or (device.namespace, device.name) != (namespace, name):
                return False
            self._device = None
            self._desired = {}
            self._rejected = {}
        log.info("DMI: device %s/%s removed; the settings applied stay", namespace, name)
        return True

    def _emit(
        self, source: Source, applied: dict[str, str], rejected: dict[str, Rejection]
    ) -> None:
        if self._on_outcome is None:
            return
        outcome = TwinOutcome(
            device_id=f"{self._namespace}/{self._name}" if self._namespace else self._name,
            timestamp=now_ms(),
            source=source,
            event_id=str(uuid.uuid4()),
            applied=applied,
            rejected=rejected,
        )
        try:
            self._on_outcome(outcome)
        except Exception:
            log.exception("DMI: outcome listener failed")

    def device_pb(self, namespace: str, name: str) -> Any:
        """The stored Device with its current twins (GetDevice), or None."""
        with self._lock:
            device = self._device
            if device is None or (device.namespace, device.name) != (namespace, name):
                return None
            copy = self.api.pb.Device()
            copy.CopyFrom(device)
            copy.status.CopyFrom(self.api.pb.DeviceStatus(twins=self._twins(), reportToCloud=True))
            return copy


class _Servicer:
    """DeviceMapperService: the calls EdgeCore makes (gRPC worker threads)."""

    def __init__(self, mapper: DmiMapper) -> None:
        self._m = mapper
        self._pb = mapper.api.pb

    def _device_call(self, request: Any, context: grpc.ServicerContext, source: Source) -> None:
        device = request.device
        if not device.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device without a name")
        if not self._m.is_ours(device):
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"this mapper serves one device, not {device.name}"
            )
        self._m.take_device(device, source)

    def RegisterDevice(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._device_call(request, context, "register_device")
        return self._pb.RegisterDeviceResponse(
            deviceName=request.device.name, deviceNamespace=request.device.namespace
        )

    def UpdateDevice(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._device_call(request, context, "update_device")
        return self._pb.UpdateDeviceResponse()

    def RemoveDevice(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not self._m.forget_device(request.deviceNamespace, request.deviceName):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown device {request.deviceName}")
        return self._pb.RemoveDeviceResponse()

    def CreateDeviceModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._m.put_model(request.model)
        return self._pb.CreateDeviceModelResponse(
            deviceModelName=request.model.name, deviceModelNamespace=request.model.namespace
        )

    def UpdateDeviceModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._m.put_model(request.model)
        return self._pb.UpdateDeviceModelResponse()

    def RemoveDeviceModel(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._m.remove_model(request.modelNamespace, request.modelName)
        return self._pb.RemoveDeviceModelResponse()

    def GetDevice(self, request: Any, context: grpc.ServicerContext) -> Any:
        device = self._m.device_pb(request.deviceNamespace, request.deviceName)
        if device is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown device {request.deviceName}")
        return self._pb.GetDeviceResponse(device=device)


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return f"{code.name if code is not None else 'error'}: {details}"
