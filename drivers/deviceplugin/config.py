"""Settings of the device plugin (built from the command line, validated here, no I/O)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .stubs import DEFAULT_SOCKET_DIR

_DNS_SUBDOMAIN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
_SUBDOMAIN = re.compile(_DNS_SUBDOMAIN)
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_QUOTA_PREFIX = "requests."  # the kubelet checks "requests.<name>" too (resource quotas)
MAX_DOMAIN = 253 - len(_QUOTA_PREFIX)


def check_resource_name(name: str) -> str:
    """``name`` if the kubelet accepts it as an extended resource, else ValueError saying why.

    The kubelet's Register refuses a name that is not ``IsExtendedResourceName`` (Kubernetes
    pkg/apis/core/v1/helper): ``<domain>/<name>`` outside ``kubernetes.io``, not starting
    with ``requests.``, and ``requests.<domain>/<name>`` a qualified name: the domain a
    lowercase DNS-1123 subdomain, the name at most 63 letters, digits, ``-``, ``_``, ``.``.
    """
    domain, slash, short = name.partition("/")
    if not slash:
        raise ValueError(f"resource {name!r} must be <domain>/<name>, e.g. skt.com/aix_v1")
    if "kubernetes.io/" in name:
        raise ValueError(f"resource {name!r}: the kubernetes.io domains are for native resources")
    if name.startswith(_QUOTA_PREFIX):
        raise ValueError(f"resource {name!r}: {_QUOTA_PREFIX!r} is the resource-quota prefix")
    if len(domain) > MAX_DOMAIN or not _SUBDOMAIN.fullmatch(domain):
        raise ValueError(
            f"resource {name!r}: domain {domain!r} must be a lowercase DNS-1123 subdomain "
            f"(a-z, 0-9, '-' and '.', at most {MAX_DOMAIN} characters)"
        )
    if len(short) > 63 or not _QUALIFIED_NAME.fullmatch(short):
        raise ValueError(
            f"resource {name!r}: name {short!r} must be 1-63 characters of A-Z, a-z, 0-9, "
            "'-', '_' or '.', beginning and ending with a letter or digit"
        )
    return name


def parse_resources(options: Sequence[str]) -> dict[str, str]:
    """``RESOURCE=MODEL`` options (``skt.com/aix_v1=fake-x220``) as {device model: resource}."""
    out: dict[str, str] = {}
    for text in options:
        resource, equals, model = text.partition("=")
        if not equals or not resource or not model:
            raise ValueError(f"resource {text!r} is not RESOURCE=MODEL, e.g. skt.com/aix_v1=x220")
        if model in out and out[model] != resource:
            raise ValueError(f"device model {model!r} is given two resources")
        out[model] = resource
    return out


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
        max_length=MAX_DOMAIN,
        pattern=_DNS_SUBDOMAIN,
        description="Vendor domain of the extended resources (the part before '/')",
    )
    resource_prefix: str = Field(
        default="npu",
        pattern=r"^[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?$",
        description="Resource name = <domain>/<prefix>-<device model>, e.g. edgefed.io/npu-x220, "
        "for a device model that 'resources' does not name",
    )
    resources: dict[str, str] = Field(
        default_factory=dict,
        description="Explicit resource name per device model (DeviceInfo.model), e.g. "
        "{'x220': 'skt.com/aix_v1'}; several models may share one resource",
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

    @field_validator("resources")
    @classmethod
    def _resource_names(cls, value: dict[str, str]) -> dict[str, str]:
        for model, name in value.items():
            if not model:
                raise ValueError(f"{name}: the device model is empty")
            check_resource_name(name)
        return value

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
