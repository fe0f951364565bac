"""What every decoder shares: the protocol, strict params, output lookup, sigmoid."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from edgefed.errors import ImageError, ModelError
from edgefed.images.manifest import InputSpec

from ..types import Box, Result


class Decoder(Protocol):
    """Raw model outputs -> results in normalised model-input coordinates (0..1)."""

    iou_threshold: float | None  # used to merge detections across regions; None: no merge

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Result]: ...


DecoderFactory = Callable[[Mapping[str, object], InputSpec, Sequence[str]], Decoder]


class Params(BaseModel):
    """Base of each decoder's parameters (the manifest's ``decoder.params``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=Params)


def parse_params(model: type[P], raw: Mapping[str, object], decoder: str) -> P:
    """Validate ``raw``; an ImageError names the decoder and every bad field on one line."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        causes = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()
        )
        raise ImageError(f"decoder {decoder!r}: {causes}") from exc


def pick_output(
    outputs: Mapping[str, np.ndarray], fits: Callable[[np.ndarray], bool], what: str
) -> np.ndarray:
    """The first output (in model order) that ``fits``; a ModelError says what was missing."""
    for value in outputs.values():
        if fits(value):
            return value
    shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in outputs.items())
    raise ModelError(f"model outputs have no {what} (outputs: {shapes})")


def sigmoid(x: np.ndarray, clip: float = 100.0) -> np.ndarray:
    """Logistic function with the input clipped to +-clip, as MediaPipe's score_clipping."""
    out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(x, -clip, clip)))
    return out


def as_box(row: np.ndarray) -> Box:
    """The first four values of a row as a Box of Python floats."""
    return float(row[0]), float(row[1]), float(row[2]), float(row[3])


def label_of(labels: Sequence[str], index: int) -> str:
    return labels[index] if 0 <= index < len(labels) else str(index)
