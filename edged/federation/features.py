"""The feature hook of a federated model: the frozen part of a model image.

A model image's manifest declares what federated learning may train
(``manifest.trainable``: the feature tensor a head reads, and the initializers of the
model's own head). ``FeatureExtractor`` runs the model file up to that tensor on a frame
or a crop (the image's own pre-processing), so a sample is stored as its feature vector
and training never runs the backbone; ``head`` is the model's own head on those
features, as the trainer's ``[W, b]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgefed.errors import ImageError
from edgefed.images.federated import trainable_head
from edgefed.images.manifest import InputSpec, TrainableSpec
from edgefed.images.verify import verify_image
from edgefed.models.preprocess import Preprocessor
from edgefed.models.types import Box


class FeatureExtractor:
    """Feature vectors of one model image's declared feature tensor (ONNX models)."""

    def __init__(
        self, model_file: Path, spec: InputSpec, trainable: TrainableSpec, threads: int = 1
    ) -> None:
        try:
            model = onnx.load(str(model_file))
        except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
            raise ImageError(f"{model_file}: cannot read the ONNX model ({exc})") from exc
        produced = {out for node in model.graph.node for out in node.output}
        if trainable.features not in produced:
            raise ImageError(f"{model_file}: no tensor {trainable.features!r} to read features")
        self._head = trainable_head(model, trainable, str(model_file))
        model.graph.output.append(onnx.ValueInfoProto(name=trainable.features))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.spec, self.trainable = spec, trainable
        self._preprocess = Preprocessor(spec)

    @classmethod
    def of_image(cls, image_dir: Path, trusted_keys: Sequence[Path]) -> FeatureExtractor:
        """The extractor of a verified image that declares what is trainable."""
        manifest = verify_image(image_dir, trusted_keys)
        if manifest.trainable is None:
            raise ImageError(f"{image_dir}: the image declares nothing trainable")
        return cls(image_dir / manifest.model_file, manifest.input, manifest.trainable)

    def __call__(self, frame_bgr: np.ndarray, box: Box | None = None) -> np.ndarray:
        """The feature vector (float32, ``trainable.size`` values) of ``box`` in the frame
        (the whole frame when None)."""
        tensor, _ = self._preprocess(frame_bgr, box)
        (out,) = self._session.run([self.trainable.features], {self.spec.name: tensor})
        features = np.asarray(out, dtype=np.float32).reshape(-1)
        if features.size != self.trainable.size:
            raise ImageError(
                f"{self.trainable.features} has {features.size} values, "
                f"the manifest says {self.trainable.size}"
            )
        return features

    def head(self) -> list[np.ndarray]:
        """The model's own head as ``[W (features x classes), b]``
        (``edgefed.images.federated.trainable_head``)."""
        return [p.copy() for p in self._head]
