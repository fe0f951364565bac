"""A Triton python-backend model that serves one ONNX file with onnxruntime, tensors in and
out: what a Triton with an ONNX backend would do (the bundled Triton has only the python
backend). The file is named by the ``onnx_file`` parameter of config.pbtxt; ``delay_s``
makes every request that much slower (a server that answers late)."""

from __future__ import annotations

import json
import time
from typing import Any

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        parameters = config["parameters"]
        path = parameters["onnx_file"]["string_value"]
        self.delay_s = float(parameters.get("delay_s", {}).get("string_value", "0"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        time.sleep(self.delay_s)
        for request in requests:
            feeds = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.inputs
            }
            values = self.session.run(self.outputs, feeds)
            tensors = [pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values, strict=True)]
            responses.append(pb_utils.InferenceResponse(tensors))
        return responses
