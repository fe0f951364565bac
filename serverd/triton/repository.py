"""Generate a Triton model repository from a list of model images.

Every model uses a python-based backend (``backends/<name>/model.py``): ``npu`` runs a
signed model image through ``drivers/`` (its image and driver are config
``parameters``), ``echo`` answers without a model and measures the system's own
overhead. Both take ``IMAGE`` (BYTES, one JPEG per batch item) and return ``RESULT``
(BYTES, one JSON document per item), with dynamic batching on.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefed.errors import ConfigError
from serverd.triton.settings import REGIONS_HELP, NpuSettings, Regions

INPUT = "IMAGE"
OUTPUT = "RESULT"
ECHO_MODEL = "echo"


class TritonModelConfig(BaseModel):
    """One model served by serverd's own Triton."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Model name devices ask for (the Triton model name)",
    )
    backend: Literal["npu", "echo"] = Field(
        "npu", description="npu: run a model image through drivers/; echo: no model (overhead)"
    )
    image: Path | None = Field(
        None, description="Model image directory (relative: under images.dir); npu only"
    )
    driver: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Driver config block, e.g. {type: litert, num_threads: 1}; "
        "empty: the image's own driver with defaults",
    )
    device: str | None = Field(None, description="Driver device id; None: the driver's first")
    regions: Regions = Field("full", description=REGIONS_HELP)
    instances: int = Field(1, ge=1, le=64, description="Triton model instances (KIND_CPU count)")
    max_batch_size: int = Field(8, ge=1, le=1024, description="Largest dynamic batch")
    max_queue_delay_us: int = Field(
        0, ge=0, description="How long the dynamic batcher may hold a request to fill a batch"
    )

    @model_validator(mode="after")
    def _image_for_npu(self) -> TritonModelConfig:
        if self.backend == "npu" and self.image is None:
            raise ValueError(f"model {self.name!r}: an npu model needs an image")
        if self.backend == "echo" and self.image is not None:
            raise ValueError(f"model {self.name!r}: an echo model takes no image")
        return self


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def config_pbtxt(model: TritonModelConfig, parameters: dict[str, str]) -> str:
    """The ``config.pbtxt`` text of one model."""
    params = "".join(
        f"parameters {{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}\n"
        for k, v in sorted(parameters.items())
    )
    return (
        f"name: {_quote(model.name)}\n"
        f"backend: {_quote(model.backend)}\n"
        f"max_batch_size: {model.max_batch_size}\n"
        f'input [ {{ name: "{INPUT}" data_type: TYPE_STRING dims: [ 1 ] }} ]\n'
        f'output [ {{ name: "{OUTPUT}" data_type: TYPE_STRING dims: [ 1 ] }} ]\n'
        f"instance_group [ {{ kind: KIND_CPU count: {model.instances} }} ]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {model.max_queue_delay_us} }}\n"
        f"{params}"
    )


def npu_settings(
    model: TritonModelConfig,
    images_dir: Path,
    trusted_keys: Sequence[Path],
    allow_unsigned: bool,
) -> NpuSettings:
    """The backend parameters of an npu model, with the image path made absolute."""
    if model.image is None:
        raise ConfigError(f"model {model.name!r}: an npu model needs an image")
    image = model.image if model.image.is_absolute() else images_dir / model.image
    return NpuSettings(
        image_dir=image.resolve(),
        driver=dict(model.driver),
        device=model.device,
        trusted_keys=[k.resolve() for k in trusted_keys],
        allow_unsigned=allow_unsigned,
        regions=model.regions,
    )


def write_repository(
    root: Path,
    models: Sequence[TritonModelConfig],
    images_dir: Path,
    trusted_keys: Sequence[Path],
    allow_unsigned: bool = False,
) -> Path:
    """(Re)write ``root`` as a model repository holding exactly ``models``."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for model in models:
        parameters: dict[str, str] = {}
        if model.backend == "npu":
            settings = npu_settings(model, images_dir, trusted_keys, allow_unsigned)
            parameters = settings.to_parameters()
        (root / model.name / "1").mkdir(parents=True)
        (root / model.name / "config.pbtxt").write_text(
            config_pbtxt(model, parameters), encoding="utf-8"
        )
    return root
