"""edged configuration: YAML file < environment (``EDGED__A__B=value``) < device twin.

Every section is a pydantic v2 model with ``extra="forbid"`` and a description on
each field; validators do no I/O. ``load_config`` turns every validation problem
into one ``ConfigError`` whose message lists each error with its field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from drivers import registry
from drivers.fallback import ChainEntry
from edged.api.config import ApiConfig
from edged.cameraconfig import CameraConfig
from edged.eventbus import EventBusConfig
from edged.federation.config import EdgeFederationConfig
from edged.motion import MotionConfig
from edged.offload.config import OffloadConfig
from edged.offload.records import OUTBOX_FILE
from edged.perception import PerceptionConfig
from edged.twin.dmi_config import DmiConfig
from edged.twin.service import TwinConfig
from edgefed import paths
from edgefed.config import ImagesConfig, LogLevel, Seconds, Strict, read_yaml_mapping, validate
from edgefed.driver import DriverConfig
from edgefed.errors import ConfigError
from edgefed.mqtt import MqttConfig

ENV_PREFIX = "EDGED__"


class ModelConfig(Strict):
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Name of this model in results"
    )
    image: str = Field(description="Model image name under images.dir, or a path to one")
    driver: str | None = Field(None, description="Driver type; default: the image's driver")
    device: str | None = Field(None, description="Device id on the driver; default: first healthy")
    fallback: list[str] | None = Field(
        None,
        min_length=1,
        description="Fallback chain instead of driver/device: devices as <driver>:<device> in "
        "order of preference (e.g. [openvino:NPU, onnxruntime:cpu]); the model runs on the "
        "first that works and moves back when a preferred one recovers",
    )
    fallback_after: int = Field(
        3, ge=1, description="Failed runs in a row that move the model down its chain"
    )
    fallback_probe_s: Seconds = Field(
        30, description="Seconds between probes of the chain's more preferred devices"
    )
    enabled: bool = Field(
        True,
        description="Run this model from start (a disabled one is loaded and verified all the "
        "same; enabled_models turns it on at run time)",
    )
    cascade_on: str | None = Field(
        None,
        description="Cascade: run on each detection of this other model (e.g. pose landmarks "
        "on each person) instead of on gated frames",
    )
    regions: Literal["motion", "full", "motion+full", "planned"] = Field(
        "motion",
        description="Where a frame model runs: square crops around motion, the whole frame, "
        "or both (CCTV people are small: crops find them, the whole frame gives context); "
        "'planned': the region planner's regions, and its detections are tracked (one "
        "person detector per config, see perception)",
    )
    recheck_ties: bool = Field(
        True,
        description="An INT8 classifier image (NAME_int8) whose top two classes tie on an "
        "input runs that input on the fp32 image it was made from, when that image is next "
        "to it (3-6% of inputs; the fp32 model's memory); false: INT8 alone",
    )
    every_n: int = Field(1, ge=1, description="Run on every n-th gated frame only")
    workers: int = Field(1, ge=1, le=8, description="Inference threads for this model")
    queue_size: int = Field(
        2, ge=1, le=64, description="Pending frames per model; past it the oldest is dropped"
    )

    @model_validator(mode="after")
    def _check_fallback(self) -> ModelConfig:
        if self.fallback is not None:
            if self.driver is not None or self.device is not None:
                raise ValueError(f"model {self.name!r}: give fallback or driver/device, not both")
            for text in self.fallback:
                ChainEntry.parse(text)
        return self


class PipelineConfig(Strict):
    target_fps: float | None = Field(
        None,
        ge=0.01,
        le=1000,
        description="Upper bound on frames/s taken from each camera, 0.01 to 1000 (None: all)",
    )
    lossless: bool = Field(
        False,
        description="Block instead of dropping when a queue is full (benchmarks, file replay)",
    )


class OutputConfig(Strict):
    results: Path | None = Field(
        default_factory=lambda: paths.state_dir("edged") / "results.jsonl",
        description="JSON-lines file of results (None: off; default: edgefed.paths' state root)",
    )
    results_max_mb: int | None = Field(
        64,
        ge=1,
        description="Rotate the results file before it passes this many MiB (None: never; "
        "the demo's lines grow it ~3.2 GB a day at 10 frames/s)",
    )
    results_keep: int = Field(
        4, ge=1, le=100, description="Rotated results files kept: results.jsonl.1 (newest) .. .N"
    )
    summary_interval_s: Seconds = Field(10.0, description="Seconds between summary log lines")
    max_results: int | None = Field(
        None, ge=1, description="Stop after this many frames with results (None: run forever)"
    )


class EdgedConfig(Strict):
    device_id: str = Field(
        "edge-01",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,62})?$",
        description="Device id: <name> or <namespace>/<name> as in KubeEdge",
    )
    log_level: LogLevel = Field("INFO", description="Log level")
    state_dir: Path = Field(
        default_factory=lambda: paths.state_dir("edged"),
        description="Writable directory for the outbox database, the results file (unless "
        "set on their own) and twin-applied settings (default: var/edged in a checkout, else "
        "/var/lib/edgefed/edged; edgefed.paths)",
    )
    cameras: list[CameraConfig] = Field(min_length=1, description="Camera sources")
    motion: MotionConfig = Field(
        default_factory=MotionConfig, description="Three-frame motion gate"
    )
    drivers: list[DriverConfig] = Field(
        default_factory=lambda: [
            registry.parse_config({"type": "onnxruntime"}),
            registry.parse_config({"type": "litert"}),
        ],
        description="Driver configs, each validated by its driver's own model (key 'type')",
    )
    images: ImagesConfig = Field(default_factory=ImagesConfig, description="Model images")
    models: list[ModelConfig] = Field(min_length=1, description="Models to run")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Pipeline")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Results output")
    api: ApiConfig = Field(
        default_factory=ApiConfig,
        description="Operator HTTP API: status, metrics, live preview, dashboard",
    )
    mqtt: MqttConfig | None = Field(
        None,
        description="Node broker (shared with KubeEdge's EventBus, or bridged to serverd); "
        "None: no twin, no events, no offload",
    )
    twin: TwinConfig = Field(
        default_factory=TwinConfig,
        description="KubeEdge device twin over MQTT: desired values on KubeEdge <= 1.14, "
        "reports only on 1.15+ (use dmi there)",
    )
    dmi: DmiConfig = Field(
        default_factory=DmiConfig,
        description="KubeEdge DMI mapper: the way desired values arrive on KubeEdge 1.15+",
    )
    eventbus: EventBusConfig = Field(
        default_factory=EventBusConfig,
        description="Events and stats forwarded to the cloud by KubeEdge's EventBus",
    )
    offload: OffloadConfig = Field(
        default_factory=OffloadConfig, description="Offload to serverd through the outbox"
    )
    perception: PerceptionConfig = Field(
        default_factory=PerceptionConfig,
        description="Region planning and tracking for the model with regions: planned",
    )
    federation: EdgeFederationConfig = Field(
        default_factory=EdgeFederationConfig,
        description="Federated learning: train on this device's samples, adopt new versions",
    )

    @field_validator("drivers", mode="before")
    @classmethod
    def _parse_drivers(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            if isinstance(item, DriverConfig):
                out.append(item)
            elif isinstance(item, dict):
                try:
                    out.append(registry.parse_config(item))
                except ConfigError as exc:
                    raise ValueError(str(exc)) from None
            else:
                raise ValueError("each driver config must be a mapping with a 'type'")
        return out

    @model_validator(mode="after")
    def _state_under_state_dir(self) -> EdgedConfig:
        """A ``state_dir`` set (a bigger disk, say) holds the outbox and the results file
        too, unless they are set on their own."""
        if "state_dir" in self.model_fields_set:
            if "path" not in self.offload.outbox.model_fields_set:
                self.offload.outbox.path = self.state_dir / OUTBOX_FILE
            if "results" not in self.output.model_fields_set:
                self.output.results = self.state_dir / "results.jsonl"
        return self

    @model_validator(mode="after")
    def _check_references(self) -> EdgedConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names: {', '.join(dupes)}")
        for m in self.models:
            if m.cascade_on is not None and m.cascade_on not in names:
                raise ValueError(
                    f"model {m.name!r}: cascade_on names unknown model {m.cascade_on!r}"
                )
            if m.cascade_on == m.name:
                raise ValueError(f"model {m.name!r}: cascade_on cannot name itself")
        planned = [m.name for m in self.models if m.regions == "planned"]
        if len(planned) > 1:
            raise ValueError(f"only one model may use regions: planned, got {planned}")
        types = [d.type for d in self.drivers]
        if len(set(types)) != len(types):
            raise ValueError("each driver type may be configured once")
        if self.federation.enabled and self.mqtt is None:
            raise ValueError("federation.enabled needs an mqtt section (the broker to serverd)")
        if self.offload.enabled and self.mqtt is None:
            raise ValueError("offload.enabled needs an mqtt section (the broker to serverd)")
        if self.dmi.enabled and self.mqtt is not None and self.twin.enabled:
            raise ValueError(
                "dmi.enabled and twin.enabled both take desired values: use dmi on "
                "KubeEdge 1.15+ and set twin.enabled: false, or the MQTT twin on <= 1.14"
            )
        cams = [c.name for c in self.cameras]
        if len(set(cams)) != len(cams):
            raise ValueError("camera names must be unique")
        masked = [c.name for c in self.cameras if c.object_masks]
        if masked and not planned:
            raise ValueError(
                f"object_masks (camera {', '.join(masked)}) apply to the detector with "
                "regions: planned, and no model has it"
            )
        return self

    @property
    def planned_model(self) -> str | None:
        """The model with ``regions: planned`` (at most one: validated), if any."""
        return next((m.name for m in self.models if m.regions == "planned"), None)

    def driver_config(self, type_name: str) -> DriverConfig:
        """The configured driver of ``type_name``, or its defaults if not configured."""
        for d in self.drivers:
            if d.type == type_name:
                return d
        return registry.parse_config({"type": type_name})


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> EdgedConfig:
    """Validate a config mapping (after environment overrides) or raise ConfigError."""
    return validate(EdgedConfig, raw, env, ENV_PREFIX)


def load_config(path: Path, env: Mapping[str, str] | None = None) -> EdgedConfig:
    """Read, override and validate an edged YAML config file."""
    return parse_config(read_yaml_mapping(path), env)


def dump_config(config: EdgedConfig) -> str:
    """The resolved config as YAML (what ``edged check-config`` prints)."""
    data = config.model_dump(mode="json")
    data["drivers"] = [d.model_dump(mode="json") for d in config.drivers]
    return yaml.safe_dump(data, sort_keys=False)
