"""Output decoders, one module each, named by the manifest's ``decoder.type``.

A decoder is built once per model from ``decoder.params`` (validated, ImageError on
bad params), then called with the model's outputs by name and returns results in
normalised model-input coordinates; ``ModelRunner`` maps them to frame pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgefed.errors import ImageError
from edgefed.images.manifest import DecoderSpec, InputSpec

from . import db_text, mediapipe_ssd, pose_landmarks, softmax_topk, yolo
from .base import Decoder, DecoderFactory

DECODERS: dict[str, DecoderFactory] = {
    "mediapipe_ssd": mediapipe_ssd.build,
    "pose_landmarks": pose_landmarks.build,
    "softmax_topk": softmax_topk.build,
    "db_text": db_text.build,
    "yolo": yolo.build,
}


def build_decoder(spec: DecoderSpec, input_spec: InputSpec, labels: Sequence[str]) -> Decoder:
    """The decoder a manifest asks for; ImageError if unknown or its params are bad."""
    factory = DECODERS.get(spec.type)
    if factory is None:
        raise ImageError(f"unknown decoder {spec.type!r} (known: {', '.join(sorted(DECODERS))})")
    return factory(spec.params, input_spec, labels)


__all__ = ["DECODERS", "Decoder", "build_decoder"]
