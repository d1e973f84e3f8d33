"""Tiny ONNX models with the signatures of the image models, for the tests.

- `make_matting`: [1,3,S,S] → [1,1,S,S], a sigmoid of a weighted channel sum (on an
  ImageNet-normalised photo, bright warm areas come out as foreground): a real, non-trivial
  matte with U2Net's input and output layout.
- `make_superres`: [N,3,H,W] → [N,3,sH,sW], nearest-neighbour Resize ×scale: an identity-like
  Real-ESRGAN stand-in, so tiled and untiled runs must give the same pixels.
- `make_restorer`: `input` [1,3,512,512] → `output` [1,3,512,512] in [-1,1], a slight 3×3 blur:
  a GFPGAN stand-in that changes the face crop a little.
- `make_codeformer`: CodeFormer's two inputs, `input` [1,3,512,512] and its fidelity weight
  `weight` [1] (double), → `output` [1,3,512,512] = input · (2·weight − 1): the crop kept at
  w = 1 (CodeFormer's most faithful end), its colours inverted at w = 0 (the most "restored"),
  so what was fed as w shows plainly in the result.

IR version 8 and opset 17: what ONNX Runtime 1.17+ reads, whatever the installed onnx writes.

Usage: python -m scripts.tiny_models_images DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _save(graph: onnx.GraphProto, path: Path | str) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_matting(path: Path | str, size: int = 320) -> None:
    weights = numpy_helper.from_array(np.array([[[[2.0]], [[1.0]], [[-1.5]]]], np.float32), "w")
    bias = numpy_helper.from_array(np.array([-0.5], np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input.1", "w", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["d0"]),
        ],
        "tiny_matting",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [1, 1, size, size])],
        [weights, bias],
    )
    _save(graph, path)


def make_superres(
    path: Path | str,
    scale: int = 2,
    dynamic: bool = True,
    mode: str = "nearest",
    *,
    fixed_batch: bool = False,
) -> None:
    """`dynamic`: [N,3,H,W] (`fixed_batch`: [1,3,H,W]); else a fixed [1,3,64,64] input."""
    batch: int | str = 1 if fixed_batch else "N"
    dims: list[int | str] = [batch, 3, "H", "W"] if dynamic else [1, 3, 64, 64]
    out_dims: list[int | str] = (
        [batch, 3, "H2", "W2"] if dynamic else [1, 3, 64 * scale, 64 * scale]
    )
    scales = numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales")
    graph = helper.make_graph(
        [helper.make_node("Resize", ["input", "", "scales"], ["output"], mode=mode)],
        "tiny_superres",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_dims)],
        [scales],
    )
    _save(graph, path)


def make_restorer(path: Path | str) -> None:
    kernel = np.zeros((3, 1, 3, 3), np.float32)
    kernel[:, 0] = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 16.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "k"], ["output"], group=3, pads=[1, 1, 1, 1])],
        "tiny_restorer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 512, 512])],
        [numpy_helper.from_array(kernel, "k")],
    )
    _save(graph, path)


def make_codeformer(path: Path | str) -> None:
    nodes = [
        helper.make_node("Cast", ["weight"], ["w"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["w", "two"], ["w2"]),
        helper.make_node("Sub", ["w2", "one"], ["factor"]),
        helper.make_node("Mul", ["input", "factor"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_codeformer",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512]),
            helper.make_tensor_value_info("weight", TensorProto.DOUBLE, [1]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 512, 512])],
        [
            numpy_helper.from_array(np.array([2.0], np.float32), "two"),
            numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        ],
    )
    _save(graph, path)


def make_all(directory: Path | str) -> None:
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    make_matting(folder / "tiny_matting.onnx")
    make_superres(folder / "tiny_sr_x2.onnx", scale=2)
    make_superres(folder / "tiny_sr_x4.onnx", scale=4)
    make_restorer(folder / "tiny_restorer.onnx")
    make_codeformer(folder / "tiny_codeformer.onnx")


if __name__ == "__main__":
    make_all(sys.argv[1] if len(sys.argv) > 1 else "models")
