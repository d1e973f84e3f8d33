"""MTCNN face detection on ONNX Runtime: the `mtcnn` package's weights rebuilt as ONNX graphs and
its three-stage cascade (P-Net pyramid, R-Net, O-Net) mirrored in numpy."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any, Final

import cv2
import joblib
import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from ahv.models.face.types import Face, order_faces

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
_OPSET: Final = 17
# Per network: trunk layers ("conv": kernel, bias, PReLU alpha; or a stride-2 max-pool (kernel,
# Keras "same"?)), whether a dense+PReLU layer follows, and the heads (1x1 conv or dense).
_SAME2, _SAME3, _VALID3 = ("pool", 2, True), ("pool", 3, True), ("pool", 3, False)
_Spec = tuple[list[Any], bool, list[tuple[str, int]]]
_SPECS: Final[dict[str, _Spec]] = {
    "pnet": (["conv", _SAME2, "conv", "conv"], False, [("bbox_reg", 4), ("prob", 2)]),
    "rnet": (["conv", _SAME3, "conv", _VALID3, "conv"], True, [("bbox_reg", 4), ("prob", 2)]),
    "onet": (
        ["conv", _SAME3, "conv", _VALID3, "conv", _SAME2, "conv"],
        True,
        [("bbox_reg", 4), ("landmarks", 10), ("prob", 2)],
    ),
}
_INPUT_HW: Final[dict[str, tuple[int | str, int | str]]] = {
    "pnet": ("H", "W"),
    "rnet": (24, 24),
    "onet": (48, 48),
}


def weights_dir() -> Path:
    """The `mtcnn` package's weight folder, found without importing the package (TensorFlow)."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the mtcnn package (weights) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"


def _build_graph(name: str, weights: list[F32]) -> onnx.ModelProto:
    trunk, dense, heads = _SPECS[name]
    ws = iter(weights)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(tag: str, arr: npt.NDArray[Any]) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), tag))
        return tag

    def node(op: str, inputs: list[str], out: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    x, i = "input", 0
    for layer in trunk:
        i += 1
        if layer == "conv":  # Keras HWIO -> ONNX OIHW; PReLU alpha (1,1,C) -> (C,1,1)
            k, b, a = next(ws), next(ws), next(ws)
            w = const(f"conv{i}.w", k.transpose(3, 2, 0, 1))
            x = node("Conv", [x, w, const(f"conv{i}.b", b)], f"conv{i}")
            x = node("PRelu", [x, const(f"prelu{i}.a", a.reshape(-1, 1, 1))], f"prelu{i}")
        else:
            _, k, same = layer
            pad = "SAME_UPPER" if same else "VALID"
            x = node("MaxPool", [x], f"pool{i}", kernel_shape=[k, k], strides=[2, 2], auto_pad=pad)
    if dense:  # Keras permutes to (N, W, H, C) before flattening into the dense layer
        x = node("Transpose", [x], "permute", perm=[0, 3, 2, 1])
        x = node("Flatten", [x], "flatten", axis=1)
        k, b, a = next(ws), next(ws), next(ws)
        x = node("Gemm", [x, const("fc.w", k), const("fc.b", b)], "fc")
        x = node("PRelu", [x, const("fc_prelu.a", a)], "fc_prelu")
    outputs = []
    for head, width in heads:
        k, b = next(ws), next(ws)
        softmax = head == "prob"
        y = f"{head}_logits" if softmax else head
        if dense:
            node("Gemm", [x, const(f"{head}.w", k), const(f"{head}.b", b)], y)
            shape: list[int | str] = ["N", width]
        else:
            w = const(f"{head}.w", k.transpose(3, 2, 0, 1))
            node("Conv", [x, w, const(f"{head}.b", b)], y)
            shape = ["N", width, "h", "w"]
        if softmax:
            node("Softmax", [y], head, axis=1)
        outputs.append(helper.make_tensor_value_info(head, TensorProto.FLOAT, shape))
    if next(ws, None) is not None:
        raise ValueError(f"{name}: more weight arrays than the network has layers")
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, *_INPUT_HW[name]])
    graph = helper.make_graph(nodes, f"mtcnn_{name}", [inp], outputs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="ahv", ir_version=8
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def build_mtcnn_models(out_dir: Path, src_dir: Path | None = None) -> dict[str, Path]:
    """Writes mtcnn_{pnet,rnet,onet}.onnx into out_dir (NCHW float32 input, RGB scaled as
    (x - 127.5) / 128); a file newer than its weights is kept as it is."""
    src = weights_dir() if src_dir is None else src_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    for name in _SPECS:
        weights_path = src / f"{name}.lz4"
        target = out_dir / f"mtcnn_{name}.onnx"
        result[name] = target
        if target.exists() and target.stat().st_mtime > weights_path.stat().st_mtime:
            continue
        data = _build_graph(name, list(joblib.load(weights_path))).SerializeToString()
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out_dir)
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return result


def _nms(boxes: F64, threshold: float, method: str = "union", block: int = 1024) -> F64:
    """The package's NMS on score-sorted rows (x1, y1, x2, y2, ...): a box goes when any box
    above it overlaps it by more than threshold, even one that went itself."""
    n = len(boxes)
    keep = np.ones(n, dtype=bool)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for start in range(0, n, block):
        end = min(start + block, n)
        a, b = boxes[:end, None, :4], boxes[None, start:end, :4]
        iw = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
        ih = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
        inter = iw * ih
        aa, ab = area[:end, None], area[None, start:end]
        denom = aa + ab - inter if method == "union" else np.minimum(aa, ab)
        with np.errstate(divide="ignore", invalid="ignore"):
            over = inter / denom > threshold
        above = np.arange(end)[:, None] < np.arange(start, end)[None, :]
        keep[start:end] = ~(over & above).any(axis=0)
    return boxes[keep]


def _sort_desc(boxes: F64) -> F64:
    return boxes[np.argsort(boxes[:, 4])[::-1]]


def _square(boxes: F64) -> F64:
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _crop_resize(img: F32, boxes: F64, size: int) -> F32:
    """tf.image.crop_and_resize (bilinear, samples outside the image are 0) of pixel boxes
    normalised by the image size as the package does; returns (N, 3, size, size)."""
    h, w = img.shape[:2]
    norm = (boxes[:, :4] / np.array([w, h, w, h], dtype=np.float64)).astype(np.float32)
    t = np.arange(size, dtype=np.float32)

    def axis(lo: F32, hi: F32, extent: int) -> tuple[Any, ...]:
        step = (hi - lo) * (extent - 1) / (size - 1)
        pos = lo[:, None] * (extent - 1) + t[None, :] * step[:, None]
        floor = np.floor(pos)
        first = np.clip(floor, 0, extent - 1).astype(np.intp)
        second = np.clip(np.ceil(pos), 0, extent - 1).astype(np.intp)
        return first, second, pos - floor, (pos >= 0) & (pos <= extent - 1)

    y0, y1, ly, vy = axis(norm[:, 1], norm[:, 3], h)
    x0, x1, lx, vx = axis(norm[:, 0], norm[:, 2], w)
    flat = img.reshape(-1, 3)
    r0, r1 = (y0 * w)[:, :, None], (y1 * w)[:, :, None]
    c0, c1 = x0[:, None, :], x1[:, None, :]
    wx = lx[:, None, :, None]
    top_left, bottom_left = flat[r0 + c0], flat[r1 + c0]
    top = top_left + (flat[r0 + c1] - top_left) * wx
    bottom = bottom_left + (flat[r1 + c1] - bottom_left) * wx
    out = top + (bottom - top) * ly[:, :, None, None]
    out[~(vy[:, :, None] & vx[:, None, :])] = 0.0
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _regress(boxes: F64, offsets: F32) -> F64:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += offsets * np.stack([w, h, w, h], axis=-1)
    return boxes


class MtcnnDetector:
    """The package's cascade (defaults: pyramid factor 0.709 from 12 / min_face_px, NMS 0.5 then
    0.7 over P-Net proposals, 0.7 after R-Net, 0.7 by the smaller area after O-Net); faces whose
    clipped box is smaller than min_face_px on both sides are dropped."""

    def __init__(
        self,
        pnet: Any,
        rnet: Any,
        onet: Any,
        *,
        min_face_px: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
        scale_factor: float = 0.709,
    ) -> None:
        if min_face_px < 1 or not 0.0 < scale_factor < 1.0:
            raise ValueError("min_face_px must be >= 1 and scale_factor in (0, 1)")
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.min_face_px = min_face_px
        self.thresholds = thresholds
        self.scale_factor = scale_factor

    def _scales(self, height: int, width: int) -> list[float]:
        count = round(-(np.log(min(height, width) / 12) / np.log(self.scale_factor) + 1))
        m = 12 / self.min_face_px
        return [float(m * self.scale_factor**k) for k in range(max(count, 0))]

    def _pnet(self, img: F32) -> F64:
        height, width = img.shape[:2]
        per_scale: list[F64] = []
        for scale in self._scales(height, width):
            sh, sw = int(height * scale), int(width * scale)
            if min(sh, sw) < 12:  # the package fails (and finds nothing) here
                continue
            scaled = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
            reg, prob = self.pnet.run(None, {"input": scaled.transpose(2, 0, 1)[None]})
            ys, xs = np.where(prob[0, 1] > self.thresholds[0])
            # 12-px cells at stride 2 from (1, 1), regressed by their 11-px width (as the package)
            cells = np.stack([xs * 2 + 1, ys * 2 + 1, xs * 2 + 12, ys * 2 + 12]).astype(np.float64)
            coords = cells + reg[0][:, ys, xs] * 11
            boxes = np.concatenate([coords, prob[0, 1, ys, xs][None]]).T
            boxes = _sort_desc(boxes)
            boxes[:, :4] /= scale
            per_scale.append(_nms(boxes, 0.5))
        if not per_scale:
            return np.empty((0, 5))
        return _square(_nms(_sort_desc(np.concatenate(per_scale)), 0.7))

    def detect(self, image_bgr: npt.NDArray[np.uint8]) -> list[Face]:
        """Faces in an HxWx3 BGR image, in ahv's order (order_faces: left to right)."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 BGR image, got shape {image_bgr.shape}")
        height, width = image_bgr.shape[:2]
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        img: F32 = (rgb.astype(np.float32) - np.float32(127.5)) / np.float32(128.0)
        boxes = self._pnet(img)
        if len(boxes) == 0:
            return []
        reg, prob = self.rnet.run(None, {"input": _crop_resize(img, boxes, 24)})
        boxes[:, 4] = prob[:, 1]
        boxes = _regress(boxes, reg)
        boxes = boxes[boxes[:, 4] > self.thresholds[1]]
        boxes = _square(_nms(_sort_desc(boxes), 0.7))
        if len(boxes) == 0:
            return []
        reg, marks, prob = self.onet.run(None, {"input": _crop_resize(img, boxes, 48)})
        w = boxes[:, 2:3] - boxes[:, 0:1] + 1
        h = boxes[:, 3:4] - boxes[:, 1:2] + 1
        lx = w * marks[:, :5] + boxes[:, 0:1] - 1
        ly = h * marks[:, 5:] + boxes[:, 1:2] - 1
        boxes[:, 4] = prob[:, 1]
        rows = np.concatenate([_regress(boxes, reg), lx, ly], axis=1)
        rows = rows[rows[:, 4] > self.thresholds[2]]
        rows = _nms(_sort_desc(rows), 0.7, method="min")
        rows[:, [0, 2]] = np.clip(rows[:, [0, 2]], 0, width - 1)
        rows[:, [1, 3]] = np.clip(rows[:, [1, 3]], 0, height - 1)
        faces = [
            Face(
                box=row[:4].astype(np.float32),
                score=float(row[4]),
                landmarks=np.stack([row[5:10], row[10:15]], axis=1).astype(np.float32),
            )
            for row in rows
            if max(row[2] - row[0], row[3] - row[1]) >= self.min_face_px
        ]
        return order_faces(faces)
