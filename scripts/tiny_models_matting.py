"""Tiny ONNX models with the signatures of the four matting families, for the tests.

Signatures (ahv/models/matting.py has the table and where they come from):
- `u2net_tiny`: `input.1` [1,3,320,320] → seven maps `1959`…`1965` [1,1,320,320], each a
  sigmoid (U2Net's d0…d6). Every map has its own weights, so using another than the first shows.
- `isnet_tiny`: `input_image` [1,3,1024,1024] → six side maps, the first `output_image`, all
  [1,1,1024,1024] and sigmoid-activated (ISNet's d1…d6, upsampled to the input size).
- `birefnet_tiny`: `input_image` [1,3,1024,1024] → `output_image` [1,1,1024,1024], a logit map
  (no sigmoid in the graph; values reach well past [0,1]).
- `birefnet_dynamic_tiny`: `input_image` [1,3,height,width] → `output` [1,1,height,width], logits
  (the dynamic-size BiRefNet export).
- `modnet_tiny`: `input` [batch_size,3,height,width] → `output` [batch_size,1,height,width], a
  matte in [0,1] (MODNet's official export, every axis but the channels dynamic).

Each map is a per-pixel weighted sum of R, G and B plus a bias (a 1×1 convolution), so the
expected matte of a photo is easy to compute outside ahv; the weights differ per model and
output. IR version 8, opset 17.

    python -m scripts.tiny_models_matting DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
MODELS = ("u2net_tiny", "isnet_tiny", "birefnet_tiny", "birefnet_dynamic_tiny", "modnet_tiny")
# Weights on R, G, B (of the normalised input) and the bias of a model's first map; map k adds
# k·_STEP to the weights, so the maps differ.
_FIRST = (2.0, 1.0, -1.5, -0.5)
_STEP = (-0.4, 0.3, 0.2, 0.1)
# BiRefNet's map is a logit: larger weights put its values well outside [0, 1].
_LOGIT_GAIN = 3.0

Dims = list[int | str]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _matting(
    path: Path,
    *,
    input_name: str,
    input_dims: Dims,
    output_names: list[str],
    output_dims: Dims,
    sigmoid: bool,
    gain: float = 1.0,
) -> Path:
    nodes, inits = [], []
    for k, name in enumerate(output_names):
        r, g, b, bias = (gain * (f + k * s) for f, s in zip(_FIRST, _STEP, strict=True))
        weight = np.array([[[[r]], [[g]], [[b]]]], np.float32)
        inits += [
            numpy_helper.from_array(weight, f"w{k}"),
            numpy_helper.from_array(np.array([bias], np.float32), f"b{k}"),
        ]
        conv_out = f"logit{k}" if sigmoid else name
        nodes.append(helper.make_node("Conv", [input_name, f"w{k}", f"b{k}"], [conv_out]))
        if sigmoid:
            nodes.append(helper.make_node("Sigmoid", [conv_out], [name]))
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, output_dims) for n in output_names],
        inits,
    )
    return _save(graph, path)


def make_u2net(path: Path) -> Path:
    return _matting(
        path,
        input_name="input.1",
        input_dims=[1, 3, 320, 320],
        output_names=[str(1959 + k) for k in range(7)],
        output_dims=[1, 1, 320, 320],
        sigmoid=True,
    )


def make_isnet(path: Path) -> Path:
    return _matting(
        path,
        input_name="input_image",
        input_dims=[1, 3, 1024, 1024],
        output_names=["output_image", *(f"side{k}" for k in range(2, 7))],
        output_dims=[1, 1, 1024, 1024],
        sigmoid=True,
    )


def make_birefnet(path: Path, *, dynamic: bool = False) -> Path:
    side: Dims = ["height", "width"] if dynamic else [1024, 1024]
    return _matting(
        path,
        input_name="input_image",
        input_dims=[1, 3, *side],
        output_names=["output" if dynamic else "output_image"],
        output_dims=[1, 1, *side],
        sigmoid=False,
        gain=_LOGIT_GAIN,
    )


def make_modnet(path: Path) -> Path:
    return _matting(
        path,
        input_name="input",
        input_dims=["batch_size", 3, "height", "width"],
        output_names=["output"],
        output_dims=["batch_size", 1, "height", "width"],
        sigmoid=True,
    )


def make_matting_families(directory: Path | str) -> dict[str, Path]:
    """Write every model of MODELS into `directory`; {name: path}."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "u2net_tiny": make_u2net(folder / "u2net_tiny.onnx"),
        "isnet_tiny": make_isnet(folder / "isnet_tiny.onnx"),
        "birefnet_tiny": make_birefnet(folder / "birefnet_tiny.onnx"),
        "birefnet_dynamic_tiny": make_birefnet(folder / "birefnet_dynamic_tiny.onnx", dynamic=True),
        "modnet_tiny": make_modnet(folder / "modnet_tiny.onnx"),
    }


if __name__ == "__main__":
    for made in make_matting_families(sys.argv[1] if len(sys.argv) > 1 else "models").values():
        print(made)
