"""serverd's ``federation:`` config section (off by default) and the objects it builds."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from edgefed.config import Strict
from edgefed.federation_wire import TrainConfig, init_head
from edgefed.wire import MODEL_PATTERN
from serverd.federation.aggregate import AggregationSettings, StrategyName
from serverd.federation.rounds import Federation, RoundSettings
from serverd.federation.versions import VersionFiles


class FederatedModelConfig(Strict):
    """One federated model: a softmax head of ``features`` x ``len(classes)``."""

    name: str = Field(pattern=MODEL_PATTERN, description="Model name (as the edges call it)")
    features: int = Field(ge=1, le=65536, description="Feature vector length the head reads")
    classes: list[str] = Field(min_length=2, max_length=10000, description="Class names, in order")


class StrategyConfig(Strict):
    """How a round combines its updates (``serverd.federation.aggregate``)."""

    name: StrategyName = Field("krum", description="fedavg, median, trimmed_mean or krum")
    trim_fraction: float = Field(0.2, ge=0, lt=0.5, description="trimmed_mean: cut from each end")
    krum_malicious: int = Field(1, ge=0, description="krum: edges assumed hostile")
    krum_keep: int = Field(3, ge=0, description="krum: average the k best (0: keep the best one)")
    clip_norm: float | None = Field(
        None, gt=0, description="Clip each update's delta to this L2 norm (None: no clipping)"
    )
    noise_multiplier: float = Field(
        0.0, ge=0, description="Gaussian noise std = noise_multiplier * clip_norm / n_updates"
    )

    def settings(self) -> AggregationSettings:
        return AggregationSettings(
            strategy=self.name,
            trim_fraction=self.trim_fraction,
            krum_malicious=self.krum_malicious,
            krum_keep=self.krum_keep,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
        )


class FederationConfig(Strict):
    """Federated learning rounds run by serverd (docs/federated.md)."""

    enabled: bool = Field(False, description="Run federation rounds")
    signing_key: Path | None = Field(
        None, description="Ed25519 private key (PEM) that signs every global version"
    )
    models: list[FederatedModelConfig] = Field(default_factory=list, description="Federated models")
    strategy: StrategyConfig = Field(
        default_factory=StrategyConfig, description="Aggregation strategy and its settings"
    )
    min_clients: int = Field(3, ge=1, description="Participants needed to open a round")
    quorum: int = Field(3, ge=1, description="Accepted updates needed at the deadline")
    min_samples: int = Field(10, ge=1, description="Samples a device must offer to be selected")
    timeout_s: float = Field(120.0, gt=0, description="How long a round collects updates")
    max_delta_norm: float | None = Field(
        None, gt=0, description="Refuse an update farther than this (L2) from the base"
    )
    interval_s: float | None = Field(
        None, gt=0, description="Open a round of each idle model this often (None: on demand)"
    )
    offer_ttl_s: float = Field(
        120.0, gt=0, description="A device's sample offer counts for this long after it is sent"
    )
    max_chunk_bytes: int = Field(262_144, ge=1024, le=4_194_304, description="Update chunk bound")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Edges' training settings")

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        if self.quorum > self.min_clients:
            raise ValueError("quorum must be <= min_clients")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("federated model names must be unique")
        if self.enabled and (not self.models or self.signing_key is None):
            raise ValueError("federation.enabled needs models and a signing_key")
        return self

    def round_settings(self) -> RoundSettings:
        return RoundSettings(
            min_clients=self.min_clients,
            quorum=self.quorum,
            min_samples=self.min_samples,
            timeout_ms=int(self.timeout_s * 1000),
            max_delta_norm=self.max_delta_norm,
            aggregation=self.strategy.settings(),
        )

    def federations(self, versions: VersionFiles) -> list[Federation]:
        """Each model's federation from its saved version, or from version 1: a zero
        head, the same on every edge (also when the saved head has another shape)."""
        out = []
        for m in self.models:
            head = init_head(m.features, len(m.classes))
            version, params = versions.load(m.name) or (1, head)
            if [p.shape for p in params] != [p.shape for p in head]:
                version, params = 1, head
            out.append(Federation(m.name, version, params, self.round_settings()))
        return out
