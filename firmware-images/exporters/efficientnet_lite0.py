"""Export EfficientNet-Lite0 (PyTorch state_dict) to ONNX; run in the throwaway export venv.

Called by the image builder as ``python efficientnet_lite0.py --weights PTH --out ONNX``
inside ``firmware-images/cache/export-venv`` (torch + efficientnet-lite-pytorch), never
inside the daemon's environment. The graph takes [1,3,224,224] float32 RGB normalised as
(x - 127) / 128 and returns raw logits [1,1000].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet

OPSET = 17
SIZE = 224


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, required=True, help="efficientnet-lite0 .pth")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(args.weights))
    model.eval()
    example = torch.zeros(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(args.out),
            input_names=["input"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamo=False,
        )


if __name__ == "__main__":
    main()
