"""What one Triton model of the ``npu`` backend runs, as Triton model-config parameters.

Kept apart from ``serverd.triton.npu`` (which decodes JPEGs and runs models, so it needs
OpenCV and the drivers): serverd's own process writes these settings into the generated
model repository without importing the camera stack, which a server install does not
have (docs/install.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefed.errors import ConfigError

_PLAIN = frozenset({"image_dir", "device"})  # plain strings; every other parameter is JSON

Regions = Literal["full", "scan"]
REGIONS_HELP = (
    "Where a detection model looks: full, the whole frame in one run; scan, the whole frame "
    "and overlapping tiles at native resolution and 1.5x (~100 runs on a 768x576 frame: "
    "the people a detector of a small input misses in a whole CCTV frame; "
    "edgefed/models/scan.py)"
)


class NpuSettings(BaseModel):
    """What one Triton model of backend ``npu`` runs; set by the repository generator."""

    model_config = ConfigDict(extra="forbid")

    image_dir: Path = Field(description="Model image directory (manifest.yaml, model, labels)")
    driver: dict[str, Any] = Field(
        default_factory=dict,
        description="Driver config block (with 'type'); empty: the manifest's driver, defaults",
    )
    device: str | None = Field(None, description="Device id for the driver; None: its first")
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Ed25519 public keys that may sign the image"
    )
    allow_unsigned: bool = Field(False, description="Accept an unsigned image (development)")
    regions: Regions = Field("full", description=REGIONS_HELP)

    @classmethod
    def from_parameters(cls, parameters: dict[str, Any]) -> NpuSettings:
        """Settings from a Triton model config's ``parameters`` (paths plain, the rest JSON)."""
        data: dict[str, Any] = {}
        try:
            for key, value in parameters.items():
                text = value.get("string_value", "")
                data[key] = (text or None) if key in _PLAIN else json.loads(text)
            return cls.model_validate(data)
        except (json.JSONDecodeError, ValidationError) as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(f"npu backend parameters are invalid: {reason}") from exc

    def to_parameters(self) -> dict[str, str]:
        """The inverse of ``from_parameters``: one string per field."""
        dumped = self.model_dump(mode="json")
        return {
            key: (value or "") if key in _PLAIN else json.dumps(value)
            for key, value in dumped.items()
        }
