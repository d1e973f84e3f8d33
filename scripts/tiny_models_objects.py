"""Tiny ONNX models with the real signatures of a YOLOv8/v11 detector and a LaMa inpainter,
for tests: small, deterministic, and made so real photos give predictable results.

`make_yolo`: input `images` [1, 3, 640, 640], output `output0` [1, 4 + C, 8400] exactly as an
Ultralytics export (three levels of anchors, strides 8, 16 and 32: 6400 + 1600 + 400), with
Ultralytics-style metadata `names`. Each level pools the image over its stride and scores a
colour with a 1×1 convolution, so detections sit where that colour is:
- class 0 (`person`), stride 32, 160 px boxes: bright areas (mean of R, G, B above 0.75);
- class 1 (`cat`), stride 8, 48 px boxes: red areas (R − (G + B) / 2 above 0.5);
- class 2 (`dog`), stride 16, 96 px boxes: blue areas (B − (R + G) / 2 above 0.3).
Classes past the third are never detected. `dynamic=True` gives the `dynamic=True` export's
signature instead: `images` [batch, 3, 640, 640] → `output0` [batch, 4 + C, 8400] (one
image's rows do not depend on the others', so batched runs can be checked against single ones).
`transposed=True` gives a wrong layout, `output0` [1, 8400, 4 + C] (an export some converters
make), which the detector must refuse rather than decode.

`make_lama`: inputs `image` [1, 3, H, W] and `mask` [1, 1, H, W], output `output`
[1, 3, H, W]: the masked pixels become the mean colour of the unmasked ones. Like real LaMa,
H and W must be multiples of 8 (the graph fails otherwise). `dynamic=False` gives the common
fixed 512×512 export with output in [0, 255]; `dynamic=True` takes any size and outputs [0, 1].

    python -m scripts.tiny_models_objects DIR  # yolo_tiny, lama_512 and lama_dyn .onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 640
# (stride, class index, box side in input pixels, colour weights on R, G, B, threshold, gain)
LEVELS = (
    (8, 1, 48.0, (1.0, -0.5, -0.5), 0.5, 20.0),
    (16, 2, 96.0, (-0.5, -0.5, 1.0), 0.3, 20.0),
    (32, 0, 160.0, (1 / 3, 1 / 3, 1 / 3), 0.75, 10.0),
)


def _save(model: onnx.ModelProto, path: str | Path) -> None:
    model.ir_version = 8  # ONNX Runtime 1.31 refuses newer IR versions
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_yolo(
    path: str | Path,
    classes: list[str] | None = None,
    *,
    metadata: bool = True,
    dynamic: bool = False,
    transposed: bool = False,
) -> Path:
    names = list(classes) if classes is not None else ["person", "cat", "dog"]
    count = max(len(names), 3)
    nodes, inits, score_parts, box_parts = [], [], [], []
    batch: int | str = "batch" if dynamic else 1
    if dynamic:
        # The anchors' boxes are constants of batch 1: expanded to the input's batch size.
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "axis0"))
        nodes += [
            helper.make_node("Shape", ["images"], ["images_shape"]),
            helper.make_node("Gather", ["images_shape", "axis0"], ["batch_size"], axis=0),
        ]
    for stride, cls, side, weights, threshold, gain in LEVELS:
        cells = SIZE // stride
        tag = f"s{stride}"
        nodes.append(
            helper.make_node(
                "AveragePool",
                ["images"],
                [f"{tag}_pool"],
                kernel_shape=[stride, stride],
                strides=[stride, stride],
            )
        )
        w = np.zeros((count, 3, 1, 1), np.float32)
        b = np.full((count,), -30.0, np.float32)
        w[cls, :, 0, 0] = np.array(weights, np.float32) * gain
        b[cls] = -threshold * gain
        inits += [numpy_helper.from_array(w, f"{tag}_w"), numpy_helper.from_array(b, f"{tag}_b")]
        nodes.append(
            helper.make_node("Conv", [f"{tag}_pool", f"{tag}_w", f"{tag}_b"], [f"{tag}_logit"])
        )
        nodes.append(helper.make_node("Sigmoid", [f"{tag}_logit"], [f"{tag}_score"]))
        # 0 copies the batch axis (1, or the input's batch size when dynamic).
        inits.append(numpy_helper.from_array(np.array([0, count, -1], np.int64), f"{tag}_shape"))
        nodes.append(helper.make_node("Reshape", [f"{tag}_score", f"{tag}_shape"], [f"{tag}_flat"]))
        score_parts.append(f"{tag}_flat")
        ys, xs = np.mgrid[0:cells, 0:cells].astype(np.float32)
        grid = np.stack(
            [
                ((xs + 0.5) * stride).ravel(),
                ((ys + 0.5) * stride).ravel(),
                np.full(cells * cells, side, np.float32),
                np.full(cells * cells, side, np.float32),
            ]
        )[None]
        inits.append(numpy_helper.from_array(grid.astype(np.float32), f"{tag}_boxes"))
        if dynamic:
            rest = np.array([4, cells * cells], np.int64)
            inits.append(numpy_helper.from_array(rest, f"{tag}_rest"))
            nodes += [
                helper.make_node(
                    "Concat", ["batch_size", f"{tag}_rest"], [f"{tag}_target"], axis=0
                ),
                helper.make_node("Expand", [f"{tag}_boxes", f"{tag}_target"], [f"{tag}_boxes_n"]),
            ]
            box_parts.append(f"{tag}_boxes_n")
        else:
            box_parts.append(f"{tag}_boxes")
    nodes += [
        helper.make_node("Concat", box_parts, ["boxes"], axis=2),
        helper.make_node("Concat", score_parts, ["scores"], axis=2),
        helper.make_node(
            "Concat", ["boxes", "scores"], ["rows" if transposed else "output0"], axis=1
        ),
    ]
    if transposed:
        nodes.append(helper.make_node("Transpose", ["rows"], ["output0"], perm=[0, 2, 1]))
    anchors = sum((SIZE // s) ** 2 for s, *_ in LEVELS)
    out_shape = [batch, anchors, 4 + count] if transposed else [batch, 4 + count, anchors]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    if metadata:
        table = ", ".join(f"{i}: {name!r}" for i, name in enumerate(names))
        helper.set_model_props(model, {"names": "{" + table + "}", "task": "detect"})
    _save(model, path)
    return Path(path)


def make_lama(path: str | Path, dynamic: bool) -> Path:
    h, w = ("H", "W") if dynamic else (512, 512)
    nodes = [
        helper.make_node("Sub", ["one", "mask"], ["keep"]),
        helper.make_node("Mul", ["image", "keep"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "hw"], ["kept_sum"], keepdims=1),
        helper.make_node("ReduceSum", ["keep", "hw"], ["keep_sum"], keepdims=1),
        helper.make_node("Max", ["keep_sum", "one"], ["keep_count"]),
        helper.make_node("Div", ["kept_sum", "keep_count"], ["mean"]),  # [1, 3, 1, 1]
        # The multiple-of-8 check: 8×8 blocks pooled and blown up again must match the input.
        helper.make_node("AveragePool", ["image"], ["blocks"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Resize", ["blocks", "", "eight"], ["blocky"], mode="nearest"),
        helper.make_node("Mul", ["blocky", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "mean"], ["fill"]),  # [1, 3, H, W]
        helper.make_node("Mul", ["fill", "mask"], ["filled"]),
        helper.make_node("Add", ["kept", "filled"], ["unit"]),
    ]
    if dynamic:
        nodes.append(helper.make_node("Identity", ["unit"], ["output"]))
    else:
        nodes.append(helper.make_node("Mul", ["unit", "scale"], ["output"]))
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "hw"),
        numpy_helper.from_array(np.array([1, 1, 8, 8], np.float32), "eight"),
    ]
    if not dynamic:
        inits.append(numpy_helper.from_array(np.array(255.0, np.float32), "scale"))
    graph = helper.make_graph(
        nodes,
        "tiny_lama",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, h, w]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, h, w])],
        inits,
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return Path(path)


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else ".")
    target.mkdir(parents=True, exist_ok=True)
    print(make_yolo(target / "yolo_tiny.onnx"))
    print(make_lama(target / "lama_512.onnx", dynamic=False))
    print(make_lama(target / "lama_dyn.onnx", dynamic=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
