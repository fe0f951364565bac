"""The model image manifest (``manifest.yaml``) schema.

A model image is a directory holding the model file, optional labels, this
manifest (with the sha256 of every other file) and ``manifest.yaml.sig``, a
detached Ed25519 signature over the manifest's bytes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.yaml"
SIGNATURE_NAME = "manifest.yaml.sig"

Task = Literal[
    "detection",  # boxes (+ optional keypoints) with scores
    "landmarks",  # keypoints of one object inside a crop given by a detector
    "classification",  # class scores of a whole image or crop
    "text_detection",  # text probability map -> boxes
    "text_direction",  # 0/180 degree classifier of text crops
    "text_recognition",  # CTC sequence over a character set
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """How a BGR frame or crop becomes the model's input tensor."""

    name: str = Field(description="Input tensor name in the model file")
    width: int = Field(gt=0, description="Input width in pixels")
    height: int = Field(gt=0, description="Input height in pixels")
    layout: Literal["NHWC", "NCHW"] = Field(description="Tensor layout")
    color: Literal["RGB", "BGR"] = Field("RGB", description="Channel order the model expects")
    dtype: Literal["float32", "uint8"] = Field("float32", description="Input element type")
    mean: tuple[float, float, float] = Field(
        (0.0, 0.0, 0.0), description="Per-channel mean subtracted from 0-255 pixel values"
    )
    std: tuple[float, float, float] = Field(
        (255.0, 255.0, 255.0), description="Per-channel divisor applied after the mean"
    )
    resize: Literal["stretch", "letterbox", "center_crop"] = Field(
        "stretch",
        description="stretch to size; letterbox keeps aspect with padding; center_crop "
        "resizes the shorter side to size/crop_fraction then crops the centre",
    )
    crop_fraction: float = Field(0.875, gt=0, le=1, description="Used by center_crop")


class DecoderSpec(_Strict):
    """Post-processing of the model's raw outputs (see edged/models/decoders)."""

    type: str = Field(description="Decoder name, e.g. mediapipe_ssd, softmax_topk, yolo")
    params: dict[str, Any] = Field(default_factory=dict, description="Decoder parameters")


class SourceSpec(_Strict):
    """Where the weights came from: a registry package pinned by version and sha256."""

    package: str = Field(description="Registry package name")
    version: str = Field(description="Pinned package version")
    wheel_sha256: str = Field(description="sha256 of the wheel the weights were taken from")
    member: str = Field(description="Path of the weights inside the wheel (or the export step)")
    license: str = Field(description="SPDX licence of the weights")


class Manifest(_Strict):
    schema_version: Literal[1] = Field(1, description="Manifest format version")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Image name")
    version: str = Field(description="Image version")
    task: Task = Field(description="What the model does")
    driver: str = Field(description="Default driver type, e.g. onnxruntime or litert")
    target_device: str = Field("cpu", description="Device model the image was built for")
    model_file: str = Field(description="Model file inside the image")
    input: InputSpec = Field(description="Input tensor specification")
    decoder: DecoderSpec = Field(description="Output decoder")
    labels: str | None = Field(None, description="Labels file inside the image, one per line")
    files: dict[str, str] = Field(description="sha256 (hex) of every file except the manifest")
    source: SourceSpec = Field(description="Provenance of the weights")
