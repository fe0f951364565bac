"""INT8 variants of ONNX model images: ``edged image build --quantize int8``.

The fp32 image ``<name>`` (verified first) becomes ``<name>_int8`` next to it: the model
statically quantised by onnxruntime (QDQ format, per-channel QInt8 weights, QUInt8
activations, min-max calibration) except an fp32 island at the input (the first
:data:`DEFAULT_FP32_LEADING_OPS` weighted ops; ``edgefed.images.mixed_precision``),
calibrated on frames spread over the sample video and on the sample stills next to it, pre-processed
exactly as the image's manifest says (the same ``Preprocessor`` that serves inference).
Labels, input and decoder are copied; the manifest lists the new hashes, names the fp32
image and model file it was made from (``quantized_from``: what an INT8 classifier asks when
its top two classes tie, ``edgefed.models.recheck``) and is signed with the build key.

Calibration uses the even frames of the spread, :func:`heldout_frames` the odd ones, and
every sample still except :data:`HELDOUT_STILLS`, so agreement with fp32 (``edged
profile``, ``python -m bench drivers``) is measured on frames and photos the calibration
never saw. The stills matter: calibrated on the street scene alone, the classifier's
top-1 agreement on the held-out photos was 0.77, with the stills added 0.91 (brighter,
more saturated pictures push activations past the street scene's ranges; see
docs/benchmarks.md). onnxruntime is imported only when a variant is made (it comes with
the ``edge`` extra).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgefed.errors import ImageError

from . import signing
from .build import swap_in
from .manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    InputSpec,
    Manifest,
    QuantizedFrom,
    manifest_to_yaml,
)
from .mixed_precision import correct_biases, leading_nodes, requantised_nodes, reroute_islands
from .verify import sha256_file, verify_image_with_keys

log = logging.getLogger(__name__)

SAMPLE_DIR = Path("/usr/share/doc/opencv-doc/examples/data")  # Debian package opencv-doc
SAMPLE_VIDEO = SAMPLE_DIR / "vtest.avi"
STILL_SUFFIXES = (".jpg", ".png")
# agreement with fp32 is measured on these and never calibrated on; the value says what
# each shows. Real photos of objects ImageNet knows:
HELDOUT_PHOTOS = {
    "apple.jpg": "Granny Smith apple",
    "baboon.jpg": "baboon",
    "butterfly.jpg": "admiral butterfly",
    "fruits.jpg": "lemons, oranges and other fruit",
    "orange.jpg": "orange",
    "squirrel_cls.jpg": "fox squirrel",
    "messi5.jpg": "soccer ball and players",
    "chicky_512.png": "Pekinese dog",
    "building.jpg": "planetarium dome",
    "home.jpg": "palace",
    "licenseplate_motion.jpg": "minivan",
    "sudoku.png": "crossword-like puzzle",
    "aloeL.jpg": "potted aloe",
    "board.jpg": "circuit board",
    "leuvenA.jpg": "castle-like building",
}
# and pages of text, for text detectors
HELDOUT_TEXT = {
    "imageTextN.png": "printed text",
    "imageTextR.png": "printed text, rotated",
    "text_defocus.jpg": "printed text, defocused",
    "text_motion.jpg": "printed text, motion-blurred",
}
HELDOUT_STILLS = HELDOUT_PHOTOS | HELDOUT_TEXT
SUFFIX = "_int8"  # <name>_int8 is the INT8 variant of <name>
QUANT_FORMAT = "4"  # bump when the quantisation settings change (forces a rebuild)
DEFAULT_CALIBRATION_FRAMES = 100
MIN_OPSET = 13
INPUTS_PER_FRAME = 2  # whole frame and centre half; also the inputs calibrated at once
STAMPS_DIR = ".stamps"


@dataclass(frozen=True)
class Recipe:
    """How a variant is quantised. The defaults are what ``edged image build --quantize
    int8`` does; ``python -m bench int8_recipes`` measures the alternatives."""

    quant_format: Literal["QDQ", "QOperator"] = "QDQ"  # QOperator: fused ops, no Q/DQ pairs
    activation_symmetric: bool = False  # symmetric activations instead of asymmetric uint8
    keep_removable_activations: bool = False  # keep Clip/Relu instead of folding their range
    moving_average: bool = False  # min-max ranges averaged over inputs, not their extremes
    calibrate_on_stills: bool = True  # the sample stills besides the video frames
    fp32_nodes: tuple[str, ...] = ()  # node names left in fp32
    # the first this many weighted ops (Conv, Gemm, MatMul) from the input, and every node
    # before the last of them, left in fp32: an fp32 island at the input, see
    # ``mixed_precision.leading_nodes``
    fp32_leading_ops: int = 0
    # empirical bias correction (Nagel et al.): each INT8 conv's bias, in graph order, is
    # moved by the mean shift of its output from fp32's over this many calibration inputs
    # (0: off)
    bias_correction_inputs: int = 0
    bias_correction_passes: int = 1  # passes over the convs (a pass measures after the last)
    weight_type: Literal["QInt8", "QUInt8"] = "QInt8"  # QUInt8: onnxruntime runs it unfused
    reduce_range: bool = False  # 7-bit weights: no saturation in U8S8 kernels, less precision
    # op types whose outputs stay fp32 (their inputs and weights are INT8): ("Gemm",) keeps
    # a classifier's logits unrounded
    fp32_output_ops: tuple[str, ...] = ()


# 6: the classifier's stem and first two blocks, chosen on calibration-side data (crops of
# the calibration stills and frames): validation agreement 0.836 -> 0.924 at ~1.8x
# speed-up; see docs/benchmarks.md
DEFAULT_FP32_LEADING_OPS = 6
# bias correction on 128 calibration inputs: validation agreement 0.924 -> 0.947
DEFAULT_BIAS_CORRECTION_INPUTS = 128
DEFAULT_RECIPE = Recipe(
    fp32_leading_ops=DEFAULT_FP32_LEADING_OPS,
    bias_correction_inputs=DEFAULT_BIAS_CORRECTION_INPUTS,
)
# bias correction runs the model up to each INT8 conv on every correction input (the
# classifier: 224x224, ~55 INT8 convs); the text detector (62 convs, ~100 ms a run) would
# take several minutes and was not measured with it, so only classifiers get it
BIAS_CORRECTED_TASKS = frozenset({"classification"})


def variant_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def fp32_sibling(image_dir: Path) -> Path | None:
    """The fp32 image an ``<name>_int8`` directory was made from, if it is next to it."""
    if not image_dir.name.endswith(SUFFIX):
        return None
    sibling = image_dir.with_name(image_dir.name[: -len(SUFFIX)])
    return sibling if sibling.is_dir() else None


def _spread_frames(count: int, parity: int, video: Path) -> list[np.ndarray]:
    """``count`` frames spread evenly over ``video``, taken from its even (0) or odd (1)
    frame numbers only."""
    import cv2

    if count < 1:
        raise ImageError(f"need at least one frame, got {count}")
    cap = cv2.VideoCapture(str(video))
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if not cap.isOpened() or total < 2:
            raise ImageError(f"cannot read frames from {video}")
        candidates = np.arange(parity, total, 2)
        picks = set(candidates[np.linspace(0, len(candidates) - 1, count).round().astype(int)])
        out = []
        for number in range(total):
            ok, frame = cap.read()
            if not ok:
                break
            if number in picks:
                out.append(frame)
    finally:
        cap.release()
    if not out:
        raise ImageError(f"cannot read frames from {video}")
    return out


def calibration_frames(count: int, video: Path = SAMPLE_VIDEO) -> list[np.ndarray]:
    return _spread_frames(count, 0, video)


def heldout_frames(count: int, video: Path = SAMPLE_VIDEO) -> list[np.ndarray]:
    """Frames the calibration never uses (odd frame numbers)."""
    return _spread_frames(count, 1, video)


def _stills(names: Sequence[str], folder: Path) -> list[np.ndarray]:
    import cv2

    out = []
    for name in names:
        image = cv2.imread(str(folder / name))
        if image is None:
            raise ImageError(f"cannot read the sample still {folder / name}")
        out.append(image)
    return out


def calibration_stills(folder: Path = SAMPLE_DIR) -> list[np.ndarray]:
    """Every sample still in ``folder`` except the held-out ones."""
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.suffix in STILL_SUFFIXES and p.name not in HELDOUT_STILLS
    )
    return _stills(names, folder)


def heldout_stills(names: Sequence[str], folder: Path = SAMPLE_DIR) -> dict[str, np.ndarray]:
    """The held-out stills ``names`` (keys of :data:`HELDOUT_STILLS`), by file name."""
    unknown = set(names) - set(HELDOUT_STILLS)
    if unknown:
        raise ImageError(f"not held-out stills: {sorted(unknown)}")
    return dict(zip(names, _stills(names, folder), strict=True))


def _inputs(spec: InputSpec, frames: Sequence[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Each frame (or still) whole and its centre half, pre-processed as the image's
    manifest says (``spec``)."""
    from edgefed.models.preprocess import Preprocessor

    preprocess = Preprocessor(spec)
    for frame in frames:
        h, w = frame.shape[:2]
        for region in (None, (w / 4, h / 4, w * 3 / 4, h * 3 / 4)):
            yield {spec.name: preprocess(frame, region)[0]}


def quantize_image(
    src: Path,
    key: signing.Ed25519PrivateKey,
    trust: Sequence[signing.Ed25519PublicKey],
    frames: int = DEFAULT_CALIBRATION_FRAMES,
    video: Path = SAMPLE_VIDEO,
    force: bool = False,
    recipe: Recipe = DEFAULT_RECIPE,
) -> tuple[Path, bool]:
    """Make (or keep, when up to date) the signed INT8 variant of the image ``src``.

    Returns the variant's directory and whether it was built now.
    """
    manifest = verify_image_with_keys(src, trust)
    if not manifest.model_file.endswith(".onnx"):
        raise ImageError(
            f"{manifest.name}: only ONNX images can be quantised, not {manifest.model_file}"
        )
    name = variant_name(manifest.name)
    final = src.parent / name
    stamp_path = src.parent / STAMPS_DIR / f"{name}.json"
    stamp = json.dumps(
        {
            "format": QUANT_FORMAT,
            "source": hashlib.sha256((src / MANIFEST_NAME).read_bytes()).hexdigest(),
            "frames": frames,
            "recipe": asdict(recipe),
            "signer": signing.fingerprint(key.public_key()),
        }
    )
    if not force and stamp_path.is_file() and stamp_path.read_text() == stamp:
        try:
            verify_image_with_keys(final, [key.public_key()])
            return final, False
        except ImageError as exc:
            log.info("rebuilding %s: %s", name, exc)
    work = src.parent / f".{name}.building"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        _quantize_model(
            src / manifest.model_file, work / manifest.model_file, manifest, frames, video, recipe
        )
        for file_name in manifest.files:
            if file_name != manifest.model_file:
                shutil.copyfile(src / file_name, work / file_name)
        files = {f: sha256_file(work / f) for f in sorted(manifest.files)}
        origin = QuantizedFrom(
            image=manifest.name, model_sha256=manifest.files[manifest.model_file]
        )
        variant = manifest.model_copy(
            update={"name": name, "files": files, "quantized_from": origin}
        )
        raw = manifest_to_yaml(variant)
        (work / MANIFEST_NAME).write_bytes(raw)
        (work / SIGNATURE_NAME).write_bytes(signing.sign(key, raw))
        verify_image_with_keys(work, [key.public_key()])
        swap_in(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stamp_path.parent.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(stamp)
    return final, True


def _quantize_model(
    model: Path, dest: Path, manifest: Manifest, frames: int, video: Path, recipe: Recipe
) -> None:
    try:
        import onnx
        from onnx import version_converter
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ImageError(f"quantisation needs onnxruntime and onnx: {exc}") from exc

    pictures = calibration_frames(frames, video)
    if recipe.calibrate_on_stills:
        pictures += calibration_stills(video.parent)
    feeds = list(_inputs(manifest.input, pictures))

    class Reader(CalibrationDataReader):
        """The feeds, in the slices onnxruntime asks for (``CalibStridedMinMax``)."""

        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._feeds = iter(feeds[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    prepared = dest.with_name(f".{dest.name}.pre")
    try:
        # symbolic shape inference would need sympy; ONNX's own inference is enough here
        quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared))
        if _opset(graph) < MIN_OPSET:  # per-channel DequantizeLinear (its axis) needs 13
            onnx.save(version_converter.convert_version(graph, MIN_OPSET), str(prepared))
        in_order = [(n.name, n.op_type) for n in graph.graph.node]
        fp32_nodes = [*recipe.fp32_nodes, *leading_nodes(in_order, recipe.fp32_leading_ops)]
        quantize_static(
            str(prepared),
            str(dest),
            Reader(),
            quant_format=QuantFormat[recipe.quant_format],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType[recipe.weight_type],
            reduce_range=recipe.reduce_range,
            # min-max suits the ReLU6-bounded activations of these networks and streams:
            # percentile and entropy histograms keep every activation of every input in
            # memory (the text detector ran a 24 GB host out of memory) and gave the
            # classifier the same top-1 agreement
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=fp32_nodes,
            extra_options={
                "CalibStridedMinMax": INPUTS_PER_FRAME,
                "ActivationSymmetric": recipe.activation_symmetric,
                "QDQKeepRemovableActivations": recipe.keep_removable_activations,
                "CalibMovingAverage": recipe.moving_average,
                "OpTypesToExcludeOutputQuantization": list(recipe.fp32_output_ops),
            },
        )
        quantized = onnx.load(str(dest))
        if fp32_nodes:
            reroute_islands(quantized, set(fp32_nodes))
        if recipe.bias_correction_inputs > 0 and manifest.task in BIAS_CORRECTED_TASKS:
            count = min(recipe.bias_correction_inputs, len(feeds))
            picks = np.linspace(0, len(feeds) - 1, count).round().astype(int)
            for _ in range(recipe.bias_correction_passes):
                correct_biases(graph, quantized, [feeds[i] for i in picks])
        onnx.save(quantized, str(dest))
        requantised = requantised_nodes(
            [(n.name, n.op_type, list(n.input), list(n.output)) for n in quantized.graph.node]
        )
        if requantised:
            log.warning(
                "%s: left in fp32 but fed by INT8, onnxruntime quantises their weights "
                "again at load, per tensor: %s",
                manifest.name,
                ", ".join(requantised),
            )
    except ImageError:
        raise
    except Exception as exc:  # onnxruntime raises many kinds; the build names the image
        raise ImageError(f"{manifest.name}: quantisation failed: {exc}") from exc
    finally:
        prepared.unlink(missing_ok=True)


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
