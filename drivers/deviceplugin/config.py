"""Settings of the device plugin (built from the command line, validated here, no I/O)."""

from __future__ import annotations

import string
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .stubs import DEFAULT_SOCKET_DIR

_DNS_SUBDOMAIN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"


class MountSpec(BaseModel):
    """A host path the kubelet mounts into every container that gets a device."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    host_path: Path = Field(description="Absolute path on the node")
    container_path: Path = Field(description="Absolute path inside the container")
    read_only: bool = Field(default=True, description="Mount read-only")

    @field_validator("host_path", "container_path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{value} must be an absolute path")
        return value

    @classmethod
    def parse(cls, text: str) -> MountSpec:
        """``HOST:CONTAINER[:ro|rw]`` as given on the command line."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ValueError(f"mount {text!r} is not HOST:CONTAINER[:ro|rw]")
        read_only = len(parts) == 2 or parts[2] == "ro"
        return cls(host_path=Path(parts[0]), container_path=Path(parts[1]), read_only=read_only)


class DevicePluginConfig(BaseModel):
    """What the plugin advertises and how it answers Allocate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resource_domain: str = Field(
        default="edgefed.io",
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description="Vendor domain of the extended resources (the part before '/')",
    )
    resource_prefix: str = Field(
        default="npu",
        pattern=r"^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$",
        description="Resource name = <domain>/<prefix>-<device model>, e.g. edgefed.io/npu-x220",
    )
    socket_dir: Path = Field(
        default=Path(DEFAULT_SOCKET_DIR),
        description="The kubelet's device-plugin directory: kubelet.sock and our sockets",
    )
    poll_interval_s: float = Field(
        default=1.0, gt=0, le=60, description="How often device health and kubelet.sock are checked"
    )
    register_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Deadline of one Register call to the kubelet"
    )
    env_name: str = Field(
        default="EDGEFED_NPU_DEVICES",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable that lists the allocated device ids, comma-separated",
    )
    device_nodes: tuple[str, ...] = Field(
        default=(),
        description="Host device node templates passed into the container for each allocated "
        "device; '{id}' is replaced by the device id, e.g. /dev/x220_{id}",
    )
    mounts: tuple[MountSpec, ...] = Field(
        default=(), description="Host paths mounted into every container that gets a device"
    )

    @field_validator("device_nodes")
    @classmethod
    def _templates(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for template in value:
            if not template.startswith("/"):
                raise ValueError(f"device node {template!r} must be an absolute path")
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as exc:
                raise ValueError(f"device node {template!r}: {exc}") from exc
            if fields - {"id"}:
                raise ValueError(f"device node {template!r}: only the {{id}} placeholder exists")
        return value
