"""INT8 classifiers that ask their fp32 model when they cannot decide.

An INT8 classifier's scores come out of its last layer rounded to 256 steps, so two
classes can score exactly the same: the variant has no top-1 for that input. Those ties
are where INT8 and fp32 part ways most: on the held-out photos of ``python -m bench
drivers`` four of the five crops (of 180) where the default variant's top-1 differed from
fp32's were ties (docs/benchmarks.md). ``TieRecheck`` runs the INT8 model and, when the
two best scores of its output are equal, runs the same input on the fp32 model the
variant was made from and returns that output instead. It costs the fp32 run on the tied
inputs only (3-6% of photos and frames) and the fp32 model's memory.

The fp32 model is the image named in the variant's signed manifest (``quantized_from``),
next to it, verified like any image, and only if its model file is the one the variant
was made from.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgefed.driver import LoadedModel
from edgefed.errors import ImageError
from edgefed.images.manifest import Manifest
from edgefed.images.verify import verify_image

from .decoders.base import pick_output


def tied(outputs: Mapping[str, np.ndarray]) -> bool:
    """Whether the two best scores of a classifier's score vector are equal."""
    scores = pick_output(outputs, lambda v: v.size > 1, "score vector").reshape(-1)
    best, second = np.partition(scores, -2)[-2:][::-1]
    return bool(best == second)


class TieRecheck(LoadedModel):
    """An INT8 classifier whose tied outputs are replaced by its fp32 model's."""

    def __init__(self, int8: LoadedModel, fp32: LoadedModel) -> None:
        self.int8, self.fp32 = int8, fp32
        self.inputs, self.outputs, self.device = int8.inputs, int8.outputs, int8.device
        self.runs = 0
        self.rechecks = 0
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.int8.run(feeds)
        again = tied(out)
        with self._lock:
            self.runs += 1
            self.rechecks += again
        return self.fp32.run(feeds) if again else out

    def status(self) -> dict[str, Any]:
        with self._lock:
            counts = {"int8_runs": self.runs, "fp32_rechecks": self.rechecks}
        return {**self.int8.status(), **counts}

    def close(self) -> None:
        self.int8.close()
        self.fp32.close()


def fp32_source(
    image_dir: Path, manifest: Manifest, trusted_keys: Sequence[Path], allow_unsigned: bool
) -> tuple[Path, Manifest]:
    """The verified fp32 image the INT8 variant at ``image_dir`` was made from; an
    ImageError says why it cannot serve (not a variant, missing, unsigned, rebuilt since)."""
    origin = manifest.quantized_from
    if origin is None:
        raise ImageError(f"{manifest.name} names no fp32 image it was made from")
    path = image_dir.parent / origin.image
    if not path.is_dir():
        raise ImageError(f"{manifest.name}: its fp32 image {origin.image} is not at {path}")
    source = verify_image(path, trusted_keys, allow_unsigned)
    if source.files.get(source.model_file) != origin.model_sha256:
        raise ImageError(
            f"{manifest.name}: {origin.image} holds another model than the one it was made from "
            "(rebuild the INT8 variant)"
        )
    return path, source
