"""Triton python-based backend "echo": the system's own overhead, no model at all.

Same tensors as the "npu" backend (``IMAGE`` BYTES in, ``RESULT`` JSON BYTES out), so
the offload path can be timed end to end with nothing but transport, scheduling and
Triton's python backend in the way. Each item answers ``{"results": [{"type": "echo",
"bytes": <input length>}], "timings_ms": {}}``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

INPUT = "IMAGE"
OUTPUT = "RESULT"


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.name = args["model_name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy()
            docs = [
                json.dumps(
                    {"results": [{"type": "echo", "bytes": len(item)}], "timings_ms": {}}
                ).encode()
                for item in images.reshape(-1)
            ]
            out = np.array(docs, dtype=np.object_).reshape(images.shape)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(OUTPUT, out)]))
        return responses

    def finalize(self) -> None:
        """Nothing to release."""
