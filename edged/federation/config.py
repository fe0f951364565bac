"""edged's ``federation:`` config section (off by default): which models this device
trains, its sample store and how it judges new versions (docs/federated.md)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from edgefed.config import Seconds, Strict
from edgefed.wire import MODEL_PATTERN


class FederatedModelConfig(Strict):
    """A federated model as this device knows it: its name and its classes, in order."""

    name: str = Field(pattern=MODEL_PATTERN, description="Model name (as serverd federates it)")
    classes: list[str] = Field(
        min_length=2, max_length=10000, description="Class names, in the head's order"
    )
    hard_examples: HardExampleConfig | None = Field(
        None, description="Store serverd's answers to offloaded frames as samples"
    )


class HardExampleConfig(Strict):
    """The joint-inference loop feeding a federated model: frames offloaded for
    ``offload_model`` are stored with serverd's top class as their label."""

    offload_model: str = Field(
        pattern=MODEL_PATTERN, description="Model whose offloaded frames become samples"
    )
    image: str = Field(
        "efficientnet_lite0",
        description="Model image whose declared trainable features a sample stores "
        "(a name under images.dir, or a path)",
    )
    min_score: float = Field(
        0.5, ge=0, le=1, description="Server's top score needed to store a sample"
    )


class EdgeFederationConfig(Strict):
    enabled: bool = Field(False, description="Take part in serverd's federation rounds")
    models: list[FederatedModelConfig] = Field(
        default_factory=list, description="Models this device trains"
    )
    store: Path | None = Field(
        None, description="Sample store (SQLite); default: <state_dir>/federation.sqlite"
    )
    max_samples: int = Field(20_000, ge=1, description="Samples kept; the oldest are dropped")
    holdout_every: int = Field(
        5, ge=2, description="Every n-th sample is held back to judge new versions"
    )
    margin: float = Field(
        0.02, ge=0, le=1, description="Refuse a version worse on the held-back slice by more"
    )
    offer_interval_s: Seconds = Field(
        30.0, description="Re-send the sample offer this often (and on every change)"
    )
    trusted_keys: list[Path] | None = Field(
        None, description="Keys a global version must be signed by (default: images.trusted_keys)"
    )
    images_dir: Path | None = Field(
        None,
        description="Where adopted versions are installed, in A/B slots (default: images.dir; "
        "edged image rollback NAME --root DIR)",
    )
    training_allowed: bool = Field(
        True, description="Initial value of the federated_training twin property"
    )

    @model_validator(mode="after")
    def _check(self) -> EdgeFederationConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("federated model names must be unique")
        if self.enabled and not self.models:
            raise ValueError("federation.enabled needs at least one model")
        return self
