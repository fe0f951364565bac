"""serverd configuration (``serverd.yaml``): pydantic v2, ``extra="forbid"``, no I/O in validators.

``load_config`` turns every problem into one ``ConfigError`` listing each field path.
Relative paths are taken from the working directory serverd starts in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from drivers import registry
from edgefed import paths
from edgefed.config import ImagesConfig, LogLevel, Seconds, Strict, read_yaml_mapping, validate
from edgefed.errors import ConfigError, ProtocolError
from edgefed.mqtt import MqttConfig
from edgefed.wire import DEFAULT_MAX_BYTES, DEFAULT_PREFIX, ID_PATTERN, Topics
from serverd.api.config import ServerdApiConfig
from serverd.federation.config import FederationConfig
from serverd.overload import OverloadConfig
from serverd.triton.repository import TritonModelConfig

ENV_PREFIX = "SERVERD__"
# an update chunk's header, topic and MQTT framing (about 500 bytes), with room to spare
CHUNK_HEADROOM = 4096


class TritonConfig(Strict):
    """serverd's own Triton processes (the binary bundled in nvidia-pytriton)."""

    venv: Path = Field(
        default_factory=lambda: paths.triton_venv(),
        description="Triton's environment (serverd/triton/setup_env.sh; default: edgefed.paths)",
    )
    instances: int = Field(
        1, ge=0, le=16, description="tritonserver processes to supervise (0: external only)"
    )
    base_port: int | None = Field(
        None,
        ge=1,
        le=65000,
        description="Instance i's metrics port on 127.0.0.1 is base+3i+2 (base+3i and "
        "+1 stay free: serverd reaches its Tritons over a private unix socket, "
        "state_dir/triton/sockets); None: a free port",
    )
    ready_timeout_s: Seconds = Field(120.0, description="Wait for Triton's health: ready")
    restarts: int = Field(3, ge=0, description="Restarts allowed within restart_window_s")
    restart_window_s: Seconds = Field(300.0, description="Window of the restart budget")
    log_verbose: int = Field(
        0,
        ge=0,
        le=3,
        description="Triton's --log-verbose level (0: off; its log is kept within 16 MB "
        "plus one old copy, docs/triton.md)",
    )
    models: list[TritonModelConfig] = Field(
        default_factory=list, description="Models of the generated repository"
    )

    @model_validator(mode="after")
    def _check(self) -> TritonConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {', '.join(dupes)}")
        if self.instances and not self.models:
            raise ValueError("triton.instances > 0 needs at least one model")
        for model in self.models:
            if model.driver:
                try:
                    registry.parse_config(dict(model.driver))
                except ConfigError as exc:
                    raise ValueError(f"model {model.name!r}: {exc}") from None
        return self


class EndpointConfig(Strict):
    """An external Triton (e.g. a Kubernetes Service) serving npu/echo models over gRPC."""

    name: str = Field(pattern=ID_PATTERN, description="Instance name in logs and results")
    url: str = Field(
        min_length=3,
        description="gRPC address host:port, or unix:<path> (another serverd's own Triton "
        "of this host: its state_dir/triton/sockets/local-<i>.sock:0, for serverd's user)",
    )
    models: list[str] = Field(
        default_factory=list, description="Models it serves; empty: ask its repository index"
    )
    key_file: Path | None = Field(
        None,
        description="File holding the key of a Triton started with "
        "--grpc-restricted-protocol=<apis>:edgefed-triton-key=<key> (a mounted Secret, "
        "say); read again when it changes",
    )


class SchedulerConfig(Strict):
    capacity: int = Field(4, ge=1, le=1024, description="Jobs in flight per instance at most")
    ema_alpha: float = Field(0.2, gt=0, le=1, description="Weight of a new latency sample")
    prior_ms: float = Field(10.0, gt=0, description="Latency assumed before any measurement")
    max_attempts: int = Field(
        3, ge=0, description="Re-placements of a job after instance failures before it fails"
    )


class ServerdConfig(Strict):
    server_id: str = Field("server-01", pattern=ID_PATTERN, description="This server's id")
    log_level: LogLevel = Field("INFO", description="Log level")
    state_dir: Path = Field(
        default_factory=lambda: paths.state_dir("serverd"),
        description="Writable: job table, model repository, Triton logs (default: edgefed.paths)",
    )
    mqtt: MqttConfig = Field(description="Broker connection (TLS optional)")
    prefix: str = Field(
        DEFAULT_PREFIX,
        description="Topic prefix shared with the edges; a '+' segment subscribes to many",
    )
    share_group: str | None = Field(
        None,
        pattern=ID_PATTERN,
        description="Replicas with the same group split the requests: serverd subscribes "
        "with $share/<group>/<requests filter> and each request goes to one of them",
    )
    availability_prefix: str | None = Field(
        None,
        description="Prefix of this server's retained availability topic; needed when "
        "prefix has a '+' segment (default: prefix)",
    )
    max_message_bytes: int = Field(
        DEFAULT_MAX_BYTES, ge=1024, description="Largest request accepted from the wire"
    )
    images: ImagesConfig = Field(default_factory=ImagesConfig, description="Model images")
    api: ServerdApiConfig = Field(
        default_factory=ServerdApiConfig,
        description="HTTP API: health, readiness, status, edge events, metrics",
    )
    triton: TritonConfig = Field(default_factory=TritonConfig, description="Own Triton")
    endpoints: list[EndpointConfig] = Field(
        default_factory=list, description="External Triton endpoints"
    )
    scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig, description="Dynamic scheduler"
    )
    federation: FederationConfig = Field(
        default_factory=FederationConfig, description="Federated learning rounds (off by default)"
    )
    overload: OverloadConfig = Field(
        default_factory=OverloadConfig, description="Admission control and load shedding"
    )
    send_accepted: bool = Field(
        False,
        description="Also tell the device when a job is queued (its status goes Inferencing); "
        "costs one more message per job",
    )
    max_queue: int = Field(
        1000,
        ge=1,
        description="Jobs held (queued + in flight) at most; past it a job takes the place "
        "of a queued one of lower priority or is shed",
    )
    infer_timeout_s: Seconds = Field(10.0, description="One Triton call, at most")
    health_interval_s: Seconds = Field(1.0, description="Readiness probe period")
    drain_s: float = Field(5.0, ge=0, description="On stop, wait this long for jobs in flight")
    retention_s: Seconds = Field(86400.0, description="Finished jobs kept in the job table")
    job_table_max_mb: int = Field(
        256,
        ge=8,
        description="The job table's pages in use at most (MB); past it the oldest finished "
        "jobs are deleted before retention_s, to 90% of it (open jobs never are)",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _valid_prefix(value):
            raise ValueError(f"invalid topic prefix {value!r}")
        return value

    @field_validator("availability_prefix")
    @classmethod
    def _concrete(cls, value: str | None) -> str | None:
        if value is not None and ("+" in value.split("/") or not _valid_prefix(value)):
            raise ValueError(f"availability_prefix {value!r} must be a concrete topic prefix")
        return value

    @model_validator(mode="after")
    def _instances(self) -> ServerdConfig:
        if "+" in self.prefix.split("/") and self.availability_prefix is None:
            raise ValueError("prefix has a '+' segment: set availability_prefix")
        if self.triton.instances == 0 and not self.endpoints:
            raise ValueError("no Triton: set triton.instances > 0 or list endpoints")
        names = [e.name for e in self.endpoints]
        if len(set(names)) != len(names):
            raise ValueError("endpoint names must be unique")
        return self

    @model_validator(mode="after")
    def _chunks_fit(self) -> ServerdConfig:
        """The edges' update chunks must fit the broker's packet limit: the edge's adapter
        would refuse every one (or, not told of the limit, wedge its link on it)."""
        limit, fed = self.mqtt.max_packet_bytes, self.federation
        if fed.enabled and limit is not None and fed.max_chunk_bytes + CHUNK_HEADROOM > limit:
            raise ValueError(
                f"federation.max_chunk_bytes ({fed.max_chunk_bytes}) and a chunk's header "
                f"({CHUNK_HEADROOM} bytes at most) exceed mqtt.max_packet_bytes ({limit}): "
                f"set max_chunk_bytes to at most {limit - CHUNK_HEADROOM}"
            )
        return self

    @property
    def jobs_path(self) -> Path:
        return self.state_dir / "jobs.sqlite"


def _valid_prefix(prefix: str) -> bool:
    try:
        Topics(prefix)
    except ProtocolError:
        return False
    return True


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> ServerdConfig:
    """Validate a config mapping after ``SERVERD__SECTION__FIELD`` overrides, or ConfigError."""
    return validate(ServerdConfig, raw, env, ENV_PREFIX)


def load_config(path: Path, env: Mapping[str, str] | None = None) -> ServerdConfig:
    """Read, override and validate a serverd YAML file."""
    return parse_config(read_yaml_mapping(path), env)


def dump_config(config: ServerdConfig) -> str:
    """The resolved config as YAML (what ``serverd check-config`` prints)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
