"""The ``offload:`` section of edged's config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from edged.offload.client import OffloadClientConfig
from edged.offload.policy import OffloadPolicyConfig
from edged.offload.records import OutboxConfig
from edgefed.config import Seconds
from edgefed.wire import MODEL_PATTERN


class RemoteModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=MODEL_PATTERN,
        description="Model name served by serverd (not registered on this device)",
    )
    every_n: int = Field(10, ge=1, description="Offload every n-th completed frame")
    priority: int = Field(0, ge=0, le=255, description="Priority of these jobs")


class OffloadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Offload work to serverd (needs the mqtt section)")
    policy: OffloadPolicyConfig = Field(
        default_factory=OffloadPolicyConfig, description="When a local result goes to the server"
    )
    models: list[str] | None = Field(
        None, description="Local models whose results the policy checks (None: all)"
    )
    remote_models: list[RemoteModel] = Field(
        default_factory=list, description="Models that run only on the server"
    )
    priority: int = Field(0, ge=0, le=255, description="Priority of policy-offloaded jobs")
    ttl_s: Seconds = Field(
        5.0, description="Deadline: past it the local result stands and the job expires"
    )
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of offloaded frames")
    client: OffloadClientConfig = Field(
        default_factory=OffloadClientConfig, description="Wire settings shared with serverd"
    )
    outbox: OutboxConfig = Field(
        default_factory=OutboxConfig, description="The persistent outbox (SQLite)"
    )
