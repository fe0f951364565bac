"""Global versions of a federated model as signed model images (docs/federated.md).

serverd makes every global version an ordinary model image, signed with its key: the
model is the *base* up to its declared feature tensor (the frozen backbone of a model
image that declares ``trainable``, or a plain picture-to-pixels graph for a model on
raw pixels) followed by the federated head, a ``Gemm`` on ``head.weight`` (classes x
features) and ``head.bias`` giving ``logits``; the manifest declares that head as its
``trainable`` part, so the next round trains it again. On the wire the image travels as
an uncompressed tar of its files (``pack``); an edge unpacks it (``unpack``: plain files
only, bounded), verifies it like any image, reads the head back (``head_params``) to judge
it, and installs it into its A/B slots, so ``edged image rollback`` works on it too.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from onnx import TensorProto, helper, numpy_helper

from edgefed.errors import ImageError

from . import signing
from .manifest import (
    LABELS_NAME,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    DecoderSpec,
    InputSpec,
    Manifest,
    SourceSpec,
    TrainableSpec,
    is_plain_relative,
    manifest_to_yaml,
)
from .verify import read_manifest, verify_image_with_keys

HEAD_TENSORS = ("head.weight", "head.bias")
LOGITS = "logits"
MODEL_FILE = "model.onnx"
OPSET = 17
IR_VERSION = 8  # what onnxruntime loads with opset 17 (onnx would write its newest)
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # a whole packed version (the wire's limit for one)
MAX_IMAGE_FILES = 8

Params = list[np.ndarray]


@dataclass(frozen=True)
class Base:
    """What every version of a federated model shares: the graph from the input picture
    to the feature tensor, the input's pre-processing and the weights' provenance."""

    graph: onnx.ModelProto  # its one output is the feature tensor
    features: str
    size: int
    input: InputSpec
    sources: tuple[SourceSpec, ...]

    @classmethod
    def of_image(cls, image_dir: Path, keys: Sequence[Ed25519PublicKey]) -> Base:
        """The frozen part of a verified model image that declares what is trainable."""
        manifest = verify_image_with_keys(image_dir, keys)
        trainable = manifest.trainable
        if trainable is None:
            raise ImageError(f"{manifest.name}: the image declares nothing trainable")
        model = _load(image_dir / manifest.model_file)
        if trainable.features not in {out for n in model.graph.node for out in n.output}:
            raise ImageError(f"{manifest.name}: no tensor {trainable.features!r} in its model")
        graph = _cut(model, trainable.features, trainable.size)
        sources = (manifest.source, *manifest.extra_sources)
        return cls(graph, trainable.features, trainable.size, manifest.input, sources)

    @classmethod
    def pixels(cls, width: int, height: int, max_value: float) -> Base:
        """A model on the raw grey pixels of a ``width`` x ``height`` picture, each
        scaled to 0..``max_value`` (scikit-learn's digits: 8 x 8, 0..16)."""
        picture = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])
        features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, width * height])
        shape = numpy_helper.from_array(np.array([1, width * height], np.int64), "pixels.shape")
        nodes = [
            helper.make_node("ReduceMean", ["input"], ["grey"], axes=[1], keepdims=0),
            helper.make_node("Reshape", ["grey", "pixels.shape"], ["features"]),
        ]
        graph = helper.make_graph(nodes, "pixels", [picture], [features], [shape])
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
        )
        scale = 255.0 / max_value
        spec = InputSpec(
            name="input",
            width=width,
            height=height,
            layout="NCHW",
            mean=(0.0, 0.0, 0.0),
            std=(scale, scale, scale),
        )
        return cls(model, "features", width * height, spec, ())


def spliced(base: Base, params: Params) -> onnx.ModelProto:
    """The base graph with the head ``params`` ([W features x classes, b]) on its features."""
    weight, bias = params
    if weight.shape[0] != base.size or bias.shape != (weight.shape[1],):
        raise ImageError(
            f"head {list(weight.shape)} + {list(bias.shape)} does not fit {base.size} features"
        )
    model = onnx.ModelProto()
    model.CopyFrom(base.graph)
    graph = model.graph
    del graph.output[:]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(weight.T, np.float32), HEAD_TENSORS[0]),
            numpy_helper.from_array(np.asarray(bias, np.float32), HEAD_TENSORS[1]),
        ]
    )
    graph.node.append(
        helper.make_node("Gemm", [base.features, *HEAD_TENSORS], [LOGITS], transB=1, name="head")
    )
    graph.output.append(
        helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [1, int(weight.shape[1])])
    )
    return model


def build_version(
    out: Path,
    base: Base,
    name: str,
    version: int,
    classes: Sequence[str],
    params: Params,
    key: Ed25519PrivateKey,
) -> Manifest:
    """Write version ``version`` of federated model ``name`` as a signed image in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model_bytes = spliced(base, params).SerializeToString()
    labels = "".join(f"{c}\n" for c in classes).encode()
    (out / MODEL_FILE).write_bytes(model_bytes)
    (out / LABELS_NAME).write_bytes(labels)
    head_sha = hashlib.sha256(b"".join(p.astype("<f4").tobytes() for p in params)).hexdigest()
    federated = SourceSpec(
        package="edgefed-federation",
        version=str(version),
        wheel_sha256=head_sha,
        member=f"federated head {HEAD_TENSORS[0]}, {HEAD_TENSORS[1]}",
        license="Apache-2.0",
    )
    sources = (*base.sources, federated)
    manifest = Manifest(
        name=name,
        version=str(version),
        task="classification",
        driver="onnxruntime",
        model_file=MODEL_FILE,
        input=base.input,
        decoder=DecoderSpec(type="softmax_topk", params={"k": min(5, len(classes))}),
        labels=LABELS_NAME,
        files={
            MODEL_FILE: hashlib.sha256(model_bytes).hexdigest(),
            LABELS_NAME: hashlib.sha256(labels).hexdigest(),
        },
        source=sources[0],
        extra_sources=sources[1:],
        trainable=TrainableSpec(features=base.features, size=base.size, tensors=HEAD_TENSORS),
    )
    raw = manifest_to_yaml(manifest)
    (out / MANIFEST_NAME).write_bytes(raw)
    (out / SIGNATURE_NAME).write_bytes(signing.sign(key, raw))
    return manifest


def head_params(image_dir: Path, manifest: Manifest) -> Params:
    """The head an image declares trainable as ``[W (features x classes), b]`` (a Gemm's
    weight is stored classes x features, so it is transposed when that is its shape)."""
    if manifest.trainable is None:
        raise ImageError(f"{manifest.name}: the image declares nothing trainable")
    model = _load(image_dir / manifest.model_file)
    return trainable_head(model, manifest.trainable, manifest.name)


def trainable_head(model: onnx.ModelProto, trainable: TrainableSpec, name: str) -> Params:
    """The head ``trainable`` names among ``model``'s initializers, as the trainer's
    ``[W (features x classes), b]``; ``ImageError`` (naming ``name``) if it is not one."""
    weights = {t.name: t for t in model.graph.initializer}
    missing = [t for t in trainable.tensors if t not in weights]
    if missing:
        raise ImageError(f"{name}: trainable tensors {missing} are not initializers")
    if len(trainable.tensors) != 2:
        raise ImageError(f"{name}: the image declares no two-tensor trainable head")
    weight, bias = (numpy_helper.to_array(weights[t]) for t in trainable.tensors)
    if weight.ndim != 2 or bias.ndim != 1 or trainable.size not in weight.shape:
        raise ImageError(f"{name}: head {list(weight.shape)} is not a classifier head")
    if weight.shape[0] != trainable.size:
        weight = weight.T
    return [np.ascontiguousarray(weight, np.float32), bias.astype(np.float32)]


def pack(image_dir: Path) -> bytes:
    """The image's files as an uncompressed tar, the same bytes for the same files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in image_dir.iterdir() if p.is_file()):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack(data: bytes, dest: Path) -> None:
    """Write a packed image's files into the empty directory ``dest``: regular files
    with plain names only, at most ``MAX_IMAGE_FILES`` of them and ``MAX_IMAGE_BYTES``
    in all; ``ImageError`` says why not (the image is verified afterwards)."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"a packed image of {len(data)} bytes is over {MAX_IMAGE_BYTES}")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_IMAGE_FILES:
                raise ImageError(f"a packed image holds {len(members)} entries, at most 8")
            for member in members:
                if not member.isfile() or "/" in member.name or not is_plain_relative(member.name):
                    raise ImageError(f"a packed image may hold plain files only: {member.name!r}")
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with (dest / member.name).open("xb") as out:
                    out.write(source.read())
    except (tarfile.TarError, EOFError) as exc:
        raise ImageError(f"not a packed image: {exc}") from exc
    except FileExistsError as exc:
        raise ImageError(f"a packed image holds {exc.filename} twice") from exc


def read_head(data: bytes) -> Params:
    """The head of a packed version, unverified (for a reader that trusts the channel,
    such as a test's spy; an edge verifies the image first)."""
    with tempfile.TemporaryDirectory(prefix="fed-head-") as tmp:
        unpack(data, Path(tmp))
        return head_params(Path(tmp), read_manifest(Path(tmp)))


def _cut(model: onnx.ModelProto, features: str, size: int) -> onnx.ModelProto:
    """``model`` reduced to the nodes and initializers that compute ``features``."""
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    needed: set[str] = set()
    wanted, kept = [features], set()
    while wanted:
        name = wanted.pop()
        index = producer.get(name)
        if name in needed or index is None:
            continue
        needed.add(name)
        kept.add(index)
        wanted.extend(nodes[index].input)
    kept_nodes = [nodes[i] for i in sorted(kept)]
    used = {name for node in kept_nodes for name in node.input}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    del graph.node[:], graph.output[:], graph.value_info[:]
    graph.node.extend(kept_nodes)
    initializers = [t for t in model.graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    graph.output.append(helper.make_tensor_value_info(features, TensorProto.FLOAT, [1, size]))
    return out


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError or its own
        raise ImageError(f"{path.name}: cannot read the ONNX model ({exc})") from exc
