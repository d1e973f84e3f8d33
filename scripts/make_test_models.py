#!/usr/bin/env python3
"""Write tiny random-weight stand-ins for the InsightFace models, with the real signatures.

    python scripts/make_test_models.py OUT_DIR

No registry package ships SCRFD, ArcFace or inswapper weights (research/models.md §1), so the
face pipeline is tested against these: same input/output names, shapes, dynamic axes, output
order and preprocessing conventions as det_10g, w600k_r50 and inswapper_128, a few hundred
KB each. The seed is fixed, so the files are byte-for-byte reproducible.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
SEED = 20261203
STRIDES = (8, 16, 32)
# Where the detector's keypoint head puts the 5 points by default, in strides from the anchor
# (left eye, right eye, nose, left mouth, right mouth), placed in the ~4.5-stride box as on a
# real face: eyes 0.4 box widths apart at 40% of the height, nose at 58%, mouth at 75%. So
# every detection's alignment is well conditioned, and the 128 crop (and so the pasted
# region) spans ~1.45 box widths, as with the real det_10g.
KPS_BIAS = np.array([-0.9, -0.45, 0.9, -0.45, 0.0, 0.35, -0.7, 1.1, 0.7, 1.1], dtype=np.float32)
# Score-head bias per stride, tuned once for these weights: insightface's t1.jpg group photo
# (6 people) then gives 6 face-sized, non-overlapping "faces" after NMS (strides 8 and 16), and
# skimage's astronaut a few dozen, its largest from stride 32. Random weights fire on texture,
# not faces, but the counts and box sizes are realistic.
SCORE_BIAS = {8: -7.0, 16: -4.0, 32: -8.0}


def _init(name: str, array: npt.NDArray[np.float32]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    # IR 8 is what opset 17 shipped with; newer onnx writes IR versions older ORTs refuse.
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    model.producer_name = "ahv-make-test-models"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _detector(rng: np.random.Generator) -> onnx.GraphProto:
    # Per stride s: one s×s stride-s conv per head (2 anchors: 2 score, 8 bbox, 20 kps
    # channels), NHWC transpose and reshape to 2-D like the exported det_10g.
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    outputs: dict[str, list[onnx.ValueInfoProto]] = {"score": [], "bbox": [], "kps": []}
    heads = (("score", 2, 1), ("bbox", 8, 4), ("kps", 20, 10))
    for stride in STRIDES:
        for head, channels, width in heads:
            fan_in = 3 * stride * stride
            weight = rng.normal(0.0, 1.0 / np.sqrt(fan_in), (channels, 3, stride, stride))
            if head == "score":
                weight *= 4.0  # sharper scores: detections are local peaks, not broad plateaus
                bias = np.full(channels, SCORE_BIAS[stride])
            elif head == "bbox":
                weight *= 0.3
                bias = np.full(channels, 2.0 + rng.uniform(0.0, 0.5))  # boxes ~4-5 strides wide
            else:
                weight *= 0.1
                bias = np.tile(KPS_BIAS, 2)
            conv, out = f"{head}{stride}_w", f"{head}{stride}"
            inits += [_init(conv, weight.astype(np.float32)), _init(conv + "_b", bias)]
            nodes.append(
                helper.make_node(
                    "Conv",
                    ["input.1", conv, conv + "_b"],
                    [out + "_nchw"],
                    name=out + "_conv",
                    kernel_shape=[stride, stride],
                    strides=[stride, stride],
                )
            )
            nodes.append(
                helper.make_node(
                    "Transpose",
                    [out + "_nchw"],
                    [out + "_nhwc"],
                    name=out + "_t",
                    perm=[0, 2, 3, 1],
                )
            )
            shape = out + "_shape"
            inits.append(numpy_helper.from_array(np.array([-1, width], dtype=np.int64), shape))
            reshaped = out + "_flat" if head == "score" else out
            nodes.append(
                helper.make_node("Reshape", [out + "_nhwc", shape], [reshaped], name=out + "_r")
            )
            if head == "score":
                nodes.append(helper.make_node("Sigmoid", [reshaped], [out], name=out + "_sig"))
            outputs[head].append(
                helper.make_tensor_value_info(out, TensorProto.FLOAT, [None, width])
            )
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, "H", "W"])
    ordered = outputs["score"] + outputs["bbox"] + outputs["kps"]
    return helper.make_graph(nodes, "det_10g_tiny", [image], ordered, inits)


def _arcface(rng: np.random.Generator) -> onnx.GraphProto:
    # Conv → Relu → 1×1 Conv → GlobalAveragePool → Flatten: nonlinear enough that different
    # faces get clearly different embeddings. No node name starts with Sub/Mul, which would
    # make insightface assume the normalisation is baked into the graph.
    inits = [
        _init("conv1_w", rng.normal(0.0, 0.1, (48, 3, 8, 8))),
        _init("conv1_b", rng.normal(0.0, 0.1, 48)),
        _init("conv2_w", rng.normal(0.0, 0.2, (512, 48, 1, 1))),
        _init("conv2_b", rng.normal(0.0, 0.1, 512)),
    ]
    nodes = [
        helper.make_node(
            "Conv",
            ["input.1", "conv1_w", "conv1_b"],
            ["c1"],
            name="conv1",
            kernel_shape=[8, 8],
            strides=[8, 8],
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "conv2_w", "conv2_b"], ["c2"], name="conv2", kernel_shape=[1, 1]
        ),
        helper.make_node("GlobalAveragePool", ["c2"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["683"], name="flatten", axis=1),
    ]
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])
    out = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["N", 512])
    return helper.make_graph(nodes, "w600k_r50_tiny", [image], [out], inits)


def _inswapper(rng: np.random.Generator) -> onnx.GraphProto:
    # output = clip(target + 0.15·tanh(conv(target)) + reshape(source @ W), 0, 1): the face
    # changes visibly and depends on both inputs. The emap is appended LAST (insightface
    # reads graph.initializer[-1]); the graph itself does not use it.
    inits = [
        _init("style_w", rng.normal(0.0, 0.15, (512, 3))),
        numpy_helper.from_array(np.array([-1, 3, 1, 1], dtype=np.int64), "style_shape"),
        _init("tex_w", rng.normal(0.0, 0.5, (3, 3, 3, 3))),
        _init("tex_b", np.zeros(3)),
        _init("tex_scale", np.full((1, 3, 1, 1), 0.15)),
        _init("lo", np.zeros(())),
        _init("hi", np.ones(())),
    ]
    nodes = [
        helper.make_node("MatMul", ["source", "style_w"], ["style"], name="style_mm"),
        helper.make_node("Reshape", ["style", "style_shape"], ["style4"], name="style_r"),
        helper.make_node(
            "Conv",
            ["target", "tex_w", "tex_b"],
            ["tex"],
            name="tex_conv",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Tanh", ["tex"], ["tex_t"], name="tex_tanh"),
        helper.make_node("Mul", ["tex_t", "tex_scale"], ["tex_s"], name="tex_mul"),
        helper.make_node("Add", ["target", "tex_s"], ["a1"], name="add_tex"),
        helper.make_node("Add", ["a1", "style4"], ["a2"], name="add_style"),
        helper.make_node("Clip", ["a2", "lo", "hi"], ["output"], name="clip"),
    ]
    emap = rng.normal(0.0, 1.0 / np.sqrt(512), (512, 512))
    inits.append(_init("emap", emap))
    target = helper.make_tensor_value_info("target", TensorProto.FLOAT, ["N", 3, 128, 128])
    source = helper.make_tensor_value_info("source", TensorProto.FLOAT, ["N", 512])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, 128, 128])
    return helper.make_graph(nodes, "inswapper_128_tiny", [target, source], [out], inits)


def make_test_models(out_dir: Path) -> dict[str, Path]:
    """Write det_10g.onnx, w600k_r50.onnx and inswapper_128.onnx; return {stem: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    paths: dict[str, Path] = {}
    for name, build in (
        ("det_10g", _detector),
        ("w600k_r50", _arcface),
        ("inswapper_128", _inswapper),
    ):
        paths[name] = out_dir / f"{name}.onnx"
        _save(build(rng), paths[name])
    return paths


def make_all_test_models(out_dir: Path) -> list[Path]:
    """The face models plus every image-task family (matting: U2Net, ISNet, BiRefNet, MODNet;
    super-resolution; face restore: GFPGAN, CodeFormer; YOLO; LaMa), each with its real
    signature; the builders of the latter live beside this."""
    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:  # run as `python scripts/make_test_models.py`
        sys.path.insert(0, root)
    from scripts.tiny_models_images import make_all
    from scripts.tiny_models_matting import make_matting_families
    from scripts.tiny_models_objects import make_lama, make_yolo

    make_test_models(out_dir)
    make_all(out_dir)
    make_matting_families(out_dir)
    make_yolo(out_dir / "yolo.onnx")
    make_lama(out_dir / "lama.onnx", dynamic=True)
    make_lama(out_dir / "lama_512.onnx", dynamic=False)
    return sorted(out_dir.glob("*.onnx"))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: make_test_models.py OUT_DIR", file=sys.stderr)
        return 2
    for path in make_all_test_models(Path(argv[0])):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
