"""The DMI mapper's config (``dmi:`` in edged's config) and counters; see ``dmi.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefed.config import Seconds
from edgefed.counters import Counters
from edgefed.dmi import stubs


class DmiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=False,
        description="Be the DMI mapper of 'protocol' (KubeEdge 1.15+: desired values arrive "
        "only this way); KubeEdge <= 1.14 uses the MQTT twin (twin.enabled) instead",
    )
    protocol: str = Field(
        default="edgefed",
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="Device.spec.protocol.protocolName this mapper serves",
    )
    name: str = Field(default="edgefed-edged", min_length=1, description="Mapper name")
    socket: Path = Field(
        default=Path(stubs.SOCKET_DIR) / "edgefed.sock",
        description="The mapper's own unix socket, dialled by EdgeCore (absolute path)",
    )
    edgecore_socket: Path = Field(
        default=Path(stubs.EDGECORE_SOCKET),
        description="EdgeCore's DMI socket (edgecore.yaml deviceTwin.dmiSockPath)",
    )
    report_interval_s: Seconds = Field(
        default=10.0, description="Seconds between reports of every property"
    )
    retry_max_s: Seconds = Field(
        default=30.0, description="Longest wait between MapperRegister attempts"
    )
    call_timeout_s: Seconds = Field(default=10.0, description="Deadline of each call to EdgeCore")

    @field_validator("socket", "edgecore_socket")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, not {value}")
        return value


@dataclass
class DmiCounters(Counters):
    registrations: int = 0
    register_failures: int = 0
    device_pushes: int = 0
    foreign_devices: int = 0
    applied: int = 0
    rejected: int = 0
    reports: int = 0
    report_failures: int = 0
