"""serverd's ``federation:`` config section (off by default) and the objects it builds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import Field, model_validator

from edgefed.config import Seconds, Strict
from edgefed.errors import ConfigError, ImageError
from edgefed.federation_wire import MAX_PARTICIPANTS, TrainConfig, init_head
from edgefed.images import image_dir
from edgefed.images.federated import Base
from edgefed.wire import MODEL_PATTERN
from serverd.federation.aggregate import AggregationSettings, StrategyName
from serverd.federation.offers import MAX_DEVICES
from serverd.federation.rounds import (
    HISTORY_LISTED_ROUNDS,
    HISTORY_ROUNDS,
    Federation,
    RoundSettings,
)
from serverd.federation.versions import VersionFiles


class PixelsConfig(Strict):
    """A model on the raw grey pixels of a small picture (``features`` = width x height)."""

    width: int = Field(ge=1, le=256, description="Picture width")
    height: int = Field(ge=1, le=256, description="Picture height")
    max_value: float = Field(255.0, gt=0, description="Feature value of a white pixel")


class FederatedModelConfig(Strict):
    """One federated model: a softmax head of ``features`` x ``len(classes)`` on the
    features of ``image`` (its declared ``trainable`` tensor) or on raw ``pixels``; each
    global version is published as a signed model image of that base and head."""

    name: str = Field(pattern=MODEL_PATTERN, description="Model name (as the edges call it)")
    features: int = Field(ge=1, le=65536, description="Feature vector length the head reads")
    classes: list[str] = Field(min_length=2, max_length=10000, description="Class names, in order")
    image: str | None = Field(
        None,
        description="Base model image declaring its trainable features (a name under "
        "images.dir, or a path)",
    )
    pixels: PixelsConfig | None = Field(None, description="Or: the head reads raw pixels")
    train: TrainConfig | None = Field(
        None, description="Edges' training settings for this model (default: federation.train)"
    )

    @model_validator(mode="after")
    def _check(self) -> FederatedModelConfig:
        if (self.image is None) == (self.pixels is None):
            raise ValueError(f"{self.name}: give exactly one of image and pixels")
        if self.pixels is not None and self.pixels.width * self.pixels.height != self.features:
            raise ValueError(f"{self.name}: pixels width x height must equal features")
        return self

    def base(self, images_dir: Path, keys: Sequence[Ed25519PublicKey]) -> Base:
        """The frozen part every version shares; ``ConfigError`` if it does not fit."""
        if self.pixels is not None:
            p = self.pixels
            return Base.pixels(p.width, p.height, p.max_value)
        assert self.image is not None
        try:
            base = Base.of_image(image_dir(images_dir, self.image), keys)
        except ImageError as exc:
            raise ConfigError(f"federation.models[{self.name}].image: {exc}") from exc
        if base.size != self.features:
            raise ConfigError(
                f"federation.models[{self.name}]: image features are {base.size}, "
                f"features says {self.features}"
            )
        return base


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
    timeout_s: Seconds = Field(120.0, description="How long a round collects updates")
    max_delta_norm: float | None = Field(
        None, gt=0, description="Refuse an update farther than this (L2) from the base"
    )
    interval_s: Seconds | None = Field(
        None, description="Open a round of each idle model this often (None: on demand)"
    )
    offer_ttl_s: Seconds = Field(
        120.0, description="A device's sample offer counts for this long after it is sent"
    )
    max_chunk_bytes: int = Field(262_144, ge=1024, le=4_194_304, description="Update chunk bound")
    max_participants: int = Field(
        1000,
        ge=1,
        le=MAX_PARTICIPANTS,
        description="The most devices a round names; when more qualify, a uniform random "
        "sample of them (also no more than the round message's 64 KiB header holds)",
    )
    max_devices: int = Field(
        MAX_DEVICES,
        ge=1,
        le=1_000_000,
        description="Devices whose sample offers serverd remembers; one more evicts the one "
        "heard least recently (counted: devices_evicted)",
    )
    history_listed_rounds: int = Field(
        HISTORY_LISTED_ROUNDS,
        ge=0,
        le=HISTORY_ROUNDS,
        description="Latest closed rounds whose history keeps the device lists; older "
        "rounds keep their counts",
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Edges' training settings")

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        if self.quorum > self.min_clients:
            raise ValueError("quorum must be <= min_clients")
        if self.min_clients > self.max_participants:
            raise ValueError("min_clients must be <= max_participants")
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
            max_participants=self.max_participants,
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
            settings = self.round_settings()
            listed = self.history_listed_rounds
            out.append(Federation(m.name, version, params, settings, listed_rounds=listed))
        return out
