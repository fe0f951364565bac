"""Triton python-based backend "npu": runs a signed model image through EdgeFed's drivers.

Loaded by Triton's python backend stub inside ``.venv-triton`` (numpy < 2). Each model
of ``backend: "npu"`` names its image and driver in its config ``parameters`` (see
``serverd.triton.repository``). Input ``IMAGE`` is a BYTES tensor ``[batch, 1]`` of JPEG
frames or crops; output ``RESULT`` is a BYTES tensor ``[batch, 1]`` of JSON documents.
A request whose image cannot be decoded or run gets its own error response; the other
requests of the batch are answered normally.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from edgefed.errors import EdgeFedError
from serverd.triton.npu import NpuModel, NpuSettings

INPUT = "IMAGE"
OUTPUT = "RESULT"


def _error(reason: str) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(" ".join(reason.split())))


class TritonPythonModel:
    """One instance of an npu model: one ``NpuModel`` per Triton model instance."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        name = args["model_name"]
        try:
            settings = NpuSettings.from_parameters(config.get("parameters", {}))
            self.model = NpuModel.open(name, settings)
        except EdgeFedError as exc:  # Triton logs this and marks the model unavailable
            raise pb_utils.TritonModelException(f"npu model {name!r}: {exc}") from exc

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy()
            try:
                docs = [self.model.run(bytes(item)) for item in images.reshape(-1)]
            except EdgeFedError as exc:
                responses.append(_error(str(exc)))
                continue
            except Exception as exc:  # a fault of one request never fails the whole batch
                responses.append(_error(f"{type(exc).__name__}: {exc}"))
                continue
            out = np.array(docs, dtype=np.object_).reshape(images.shape)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, out)]))
        return responses

    def finalize(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            model.close()
