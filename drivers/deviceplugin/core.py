"""Sans-io core of the device plugin: resource names, grouping, allocation decisions.

Everything here is pure: the gRPC adapters (``service.py``, ``plugin.py``) turn these
results into v1beta1 messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from edgefed.driver import DeviceInfo
from edgefed.errors import DriverError

from .config import DevicePluginConfig, MountSpec
from .stubs import HEALTHY, UNHEALTHY

MAX_DEVICE_ID = 63  # the v1beta1 Device.ID limit
MAX_SOCKET_PATH = 107  # sun_path of a unix socket, less the terminating NUL
_VALID_ID = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_NOT_NAME = re.compile(r"[^a-z0-9-]+")
_DIGITS = re.compile(r"(\d+)")


def resource_name(domain: str, prefix: str, model: str) -> str:
    """``edgefed.io`` + ``npu`` + ``X220 Pro`` -> ``edgefed.io/npu-x220-pro``."""
    slug = _NOT_NAME.sub("-", model.lower()).strip("-") or "unknown"
    return f"{domain}/{prefix}-{slug}"[: len(domain) + 1 + 63].rstrip("-")


def resource_for(model: str, config: DevicePluginConfig) -> str:
    """The resource a device of ``model`` is advertised as: named in config, else derived."""
    named = config.resources.get(model)
    return named or resource_name(config.resource_domain, config.resource_prefix, model)


def endpoint_name(resource: str) -> str:
    """Socket file name for a resource: ``edgefed.io/npu-x220`` -> ``edgefed.io_npu-x220.sock``."""
    return resource.replace("/", "_") + ".sock"


def health(device: DeviceInfo) -> str:
    return HEALTHY if device.healthy else UNHEALTHY


def describe(devices: Sequence[DeviceInfo]) -> str:
    """``npu0=Healthy, npu1=Unhealthy (fault: ecc)`` for the log."""
    parts = [
        f"{d.id}={health(d)}" + (f" ({d.detail})" if not d.healthy and d.detail else "")
        for d in devices
    ]
    return ", ".join(parts) or "no devices"


def status_line(resources: Mapping[str, Sequence[DeviceInfo]], registered: bool) -> str:
    """``edgefed.io/npu-x220 2/2 healthy; registered`` for systemd's STATUS."""
    parts = [
        f"{name} {sum(d.healthy for d in devices)}/{len(devices)} healthy"
        for name, devices in resources.items()
    ]
    kubelet = "registered with the kubelet" if registered else "not registered with the kubelet"
    return f"{', '.join(parts) or 'no devices'}; {kubelet}"


def natural_key(device_id: str) -> tuple[tuple[int, int | str], ...]:
    """Sort ``npu2`` before ``npu10``."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _DIGITS.split(device_id) if p)


@dataclass
class Grouping:
    """Devices per resource name, and the devices that cannot be advertised (with why)."""

    resources: dict[str, tuple[DeviceInfo, ...]] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)


def group(devices: Iterable[DeviceInfo], config: DevicePluginConfig) -> Grouping:
    """Group devices into resources by hardware model; invalid ids are rejected, not fatal."""
    out = Grouping()
    buckets: dict[str, list[DeviceInfo]] = {}
    for dev in devices:
        if len(dev.id) > MAX_DEVICE_ID or not _VALID_ID.match(dev.id):
            out.rejected.append(f"device id {dev.id[:80]!r} is not a valid v1beta1 Device.ID")
            continue
        buckets.setdefault(resource_for(dev.model, config), []).append(dev)
    for name, devs in sorted(buckets.items()):
        out.resources[name] = tuple(sorted(devs, key=lambda d: natural_key(d.id)))
    return out


def health_snapshot(devices: Sequence[DeviceInfo]) -> tuple[tuple[str, bool], ...]:
    """What ListAndWatch reports: a change here means a new list must be sent."""
    return tuple((d.id, d.healthy) for d in devices)


def preferred(available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]:
    """Must-include devices first, then the lowest-numbered available ones, ``size`` in all."""
    chosen = list(dict.fromkeys(must_include))
    rest = sorted((d for d in available if d not in chosen), key=natural_key)
    return (chosen + rest)[: max(size, len(chosen))]


@dataclass(frozen=True)
class DeviceNode:
    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True)
class Allocation:
    """What the kubelet injects into one container for the devices it was given."""

    envs: dict[str, str]
    devices: tuple[DeviceNode, ...]
    mounts: tuple[MountSpec, ...]
    annotations: dict[str, str]


def allocate(
    resource: str,
    device_ids: Sequence[str],
    known: Mapping[str, DeviceInfo],
    config: DevicePluginConfig,
) -> Allocation:
    """Allocation for one container; DriverError if a device is unknown or unhealthy."""
    if not device_ids:
        raise DriverError(f"{resource}: allocation request names no device")
    for device_id in device_ids:
        dev = known.get(device_id)
        if dev is None:
            raise DriverError(f"{resource}: unknown device {device_id!r}")
        if not dev.healthy:
            raise DriverError(f"{resource}: device {device_id} is unhealthy: {dev.detail}")
    ids = sorted(dict.fromkeys(device_ids), key=natural_key)
    joined = ",".join(ids)
    nodes = tuple(
        DeviceNode(path, path)
        for device_id in ids
        for path in (t.format(id=device_id) for t in config.device_nodes)
    )
    return Allocation(
        envs={config.env_name: joined, "EDGEFED_NPU_RESOURCE": resource},
        devices=nodes,
        mounts=config.mounts,
        annotations={f"{config.resource_domain}/npu-devices": joined},
    )
