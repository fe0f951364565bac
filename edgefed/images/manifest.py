"""The model image manifest (``manifest.yaml``) schema.

A model image is a directory holding the model file, optional labels, this
manifest (with the sha256 of every other file) and ``manifest.yaml.sig``, a
detached Ed25519 signature over the manifest's bytes.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefed.errors import ImageError

MANIFEST_NAME = "manifest.yaml"
SIGNATURE_NAME = "manifest.yaml.sig"
LABELS_NAME = "labels.txt"

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
    color: Literal["RGB", "BGR"] = Field(
        default="RGB", description="Channel order the model expects"
    )
    dtype: Literal["float32", "uint8"] = Field(default="float32", description="Input element type")
    mean: tuple[float, float, float] = Field(
        default=(0.0, 0.0, 0.0), description="Per-channel mean subtracted from 0-255 pixel values"
    )
    std: tuple[float, float, float] = Field(
        default=(255.0, 255.0, 255.0), description="Per-channel divisor applied after the mean"
    )
    resize: Literal["stretch", "letterbox", "center_crop"] = Field(
        default="stretch",
        description="stretch to size; letterbox keeps aspect with padding; center_crop "
        "resizes the shorter side to size/crop_fraction then crops the centre",
    )
    crop_fraction: float = Field(default=0.875, gt=0, le=1, description="Used by center_crop")


class DecoderSpec(_Strict):
    """Post-processing of the model's raw outputs (see edgefed/models/decoders)."""

    type: str = Field(description="Decoder name, e.g. mediapipe_ssd, softmax_topk, yolo")
    params: dict[str, Any] = Field(default_factory=dict, description="Decoder parameters")


class TrainableSpec(_Strict):
    """What federated learning may train: a softmax head on a frozen feature tensor.

    ``features`` names an intermediate tensor of the model file (``size`` values per
    input, the backbone's output) that a head reads; ``tensors`` names the initializers of
    the model's own head on it, which a federated version replaces. Everything else stays
    frozen: samples are stored as these feature vectors, so training never runs the
    backbone.
    """

    features: str = Field(min_length=1, description="Frozen feature tensor the head reads")
    size: int = Field(ge=1, le=65536, description="Values of that tensor per input")
    tensors: tuple[str, ...] = Field(
        min_length=1, max_length=64, description="Initializers of the model's trainable head"
    )


class SourceSpec(_Strict):
    """Where the weights came from: a registry package pinned by version and sha256."""

    package: str = Field(description="Registry package name")
    version: str = Field(description="Pinned package version")
    wheel_sha256: str = Field(description="sha256 of the wheel the weights were taken from")
    member: str = Field(description="Path of the weights inside the wheel (or the export step)")
    license: str = Field(description="SPDX licence of the weights")


class QuantizedFrom(_Strict):
    """The fp32 image an INT8 variant was made from (``edged image build --quantize int8``)."""

    image: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="fp32 image name")
    model_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="sha256 of that image's model file"
    )


class Manifest(_Strict):
    schema_version: Literal[1] = Field(default=1, description="Manifest format version")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Image name")
    version: str = Field(description="Image version")
    task: Task = Field(description="What the model does")
    driver: str = Field(description="Default driver type, e.g. onnxruntime or litert")
    target_device: str = Field(default="cpu", description="Device model the image was built for")
    model_file: str = Field(description="Model file inside the image")
    input: InputSpec = Field(description="Input tensor specification")
    decoder: DecoderSpec = Field(description="Output decoder")
    labels: str | None = Field(
        default=None, description="Labels file inside the image, one per line"
    )
    files: dict[str, str] = Field(description="sha256 (hex) of every file except the manifest")
    source: SourceSpec = Field(description="Provenance of the weights")
    extra_sources: tuple[SourceSpec, ...] = Field(
        default=(),
        description="Other pinned packages the image was built from (model code, labels)",
    )
    trainable: TrainableSpec | None = Field(
        default=None, description="What federated learning may train (None: nothing)"
    )
    quantized_from: QuantizedFrom | None = Field(
        default=None, description="For an INT8 variant: the fp32 image it was made from"
    )

    @model_validator(mode="after")
    def _files_are_listed(self) -> Manifest:
        for file_name in self.files:
            if not is_plain_relative(file_name):
                shown = file_name if len(file_name) <= 80 else file_name[:80] + "..."
                raise ValueError(f"file name {shown!r} must be a relative path in the image")
        for role, listed in (("model_file", self.model_file), ("labels", self.labels)):
            if listed is not None and listed not in self.files:
                raise ValueError(f"{role} {listed!r} is not listed in files")
        return self


# Real manifests are about 1 KB; the bound keeps a hostile one's parse short. The parser
# is PyYAML's pure-Python one on purpose: libyaml's (CSafeLoader) crashed the process
# (SIGSEGV) on 32,000 nested "[" here, where this one raises RecursionError.
MAX_MANIFEST_BYTES = 64 * 1024
MAX_NAME_BYTES = 255  # one path part, as Linux file systems allow
MAX_PATH_BYTES = 1024


def is_plain_relative(name: str) -> bool:
    """True for a relative POSIX path without ``..``, ``.`` or empty parts, control
    characters (NUL, newline) or parts longer than a file system takes."""
    path = PurePosixPath(name)
    parts = name.split("/")
    return (
        bool(name)
        and not path.is_absolute()
        and all(part not in ("", ".", "..") for part in parts)
        and name.isprintable()
        and len(name.encode()) <= MAX_PATH_BYTES
        and all(len(part.encode()) <= MAX_NAME_BYTES for part in parts)
    )


class _ManifestDumper(yaml.SafeDumper):
    """Safe YAML with lists of scalars on one line (``mean: [127.5, 127.5, 127.5]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(item, str | int | float | bool) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ManifestDumper.add_representer(list, _represent_list)


def manifest_to_yaml(manifest: Manifest) -> bytes:
    """The canonical bytes of a manifest (what gets signed)."""
    data = manifest.model_dump(mode="json")
    for optional in ("trainable", "quantized_from"):
        if data[optional] is None:  # an image without one keeps the bytes it always had
            del data[optional]
    text = yaml.dump(data, Dumper=_ManifestDumper, sort_keys=False, allow_unicode=True, width=4096)
    return text.encode()


def manifest_from_yaml(raw: bytes, where: str) -> Manifest:
    """Parse manifest bytes; ImageError names ``where`` and the first problem."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ImageError(f"{where}: manifest is {len(raw)} bytes, limit {MAX_MANIFEST_BYTES}")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ImageError(f"{where}: manifest is not valid YAML ({_first_line(exc)})") from exc
    except RecursionError:
        raise ImageError(f"{where}: manifest is not valid YAML (nested too deep)") from None
    if not isinstance(data, dict):
        raise ImageError(f"{where}: manifest is not a mapping")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        # a key of the manifest's own (a file name) may hold a newline: quoted, one line
        loc = ".".join(p if isinstance(p, str) and p.isprintable() else repr(p) for p in err["loc"])
        loc = loc or "manifest"
        raise ImageError(f"{where}: invalid manifest: {loc}: {err['msg']}") from exc


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
