"""YOLO-family object detectors (Ultralytics v8 / v11 ONNX exports).

Input: `images` [1, 3, S, S] RGB in [0, 1], the picture letterboxed the Ultralytics way
(resized keeping its aspect, centred, padded with gray 114). Output: [1, 4 + C, N], for
each of the N anchors the box centre, width and height in input pixels followed by the C
class scores (already sigmoid-activated, no objectness). Detections are filtered by score,
reduced by class-wise non-maximum suppression and mapped back to the image's pixels.

Class names: Ultralytics stores them in the model's metadata as `names`, a dict-like string
`{0: 'person', 1: 'bicycle', ...}`; when a model has none, the configured list is used.

The output layout is checked when the detector is made (the dimensions the model declares) and
on every run (the array it gives): it must be [1, 4 + C, N] with more anchors than rows (N >
4 + C; real exports have thousands) and, when class names are known, C of them. Anything else
(a transposed `[1, N, 4 + C]` export, another task's model) would otherwise decode silently
into no detections or garbage, so it is `model_unavailable` naming the model and both shapes.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

from ahv.errors import AhvError

Image = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]
PAD_VALUE = 114


class Detection(NamedTuple):
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels


class Letterbox(NamedTuple):
    """How an image was placed into the model's input: input = image * ratio + (left, top)."""

    ratio: float
    left: int
    top: int


def parse_names(text: str) -> list[str]:
    """Class names from Ultralytics metadata (`{0: 'person', ...}`) or a plain list string."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    if isinstance(value, dict):
        try:
            ordered = sorted((int(k), str(v)) for k, v in value.items())
        except (TypeError, ValueError):
            return []
        names = [""] * (ordered[-1][0] + 1 if ordered else 0)
        for index, name in ordered:
            if index >= 0:
                names[index] = name
        return [name or str(i) for i, name in enumerate(names)]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []


def metadata_names(session: Any) -> list[str]:
    """The class names in an ONNX Runtime session's model metadata ([] when none)."""
    try:
        custom = session.get_modelmeta().custom_metadata_map
    except Exception:  # onnxruntime raises its own types; no metadata is not an error
        return []
    text = custom.get("names") if isinstance(custom, dict) else None
    return parse_names(text) if isinstance(text, str) else []


def _dims(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


def check_layout(shape: Sequence[Any], *, names: list[str], names_from: str, model: str) -> None:
    """Refuse (`model_unavailable`) an output that is not [1, 4 + C, N] with N > 4 + C and, when
    `names` is not empty, C == len(names). Dimensions that are not ints (a model's symbolic
    ones) are not judged; the run-time shape is checked again."""
    dims = [d if isinstance(d, int) and not isinstance(d, bool) else None for d in shape]
    rows, anchors = (dims[-2], dims[-1]) if len(dims) >= 2 else (None, None)
    expected_rows = 4 + len(names) if names else None
    problems = []
    if len(dims) not in (2, 3) or (len(dims) == 3 and dims[0] not in (1, None)):
        problems.append("it is not [1, rows, anchors]")
    if rows is not None and rows < 5:
        problems.append(f"{rows} rows are fewer than 4 box values and a class")
    elif rows is not None and anchors is not None and anchors <= rows:
        problems.append(f"{anchors} anchors are not more than its {rows} rows (transposed?)")
    if expected_rows is not None and rows is not None and rows != expected_rows:
        problems.append(f"{names_from} has {len(names)} class names, so {expected_rows} rows")
    if not problems:
        return
    wanted = f"[1, {expected_rows}, N]" if expected_rows is not None else "[1, 4 + C, N]"
    raise AhvError(
        "model_unavailable",
        f"model {model!r} is not a YOLOv8/v11 detection export: its output is {_dims(shape)}, "
        f"expected {wanted} with more anchors N than rows ({'; '.join(problems)})",
        status=503,
    )


def letterbox(image: Image, size: tuple[int, int]) -> tuple[Image, Letterbox]:
    """`image` (H×W×3) resized into `size` (width, height) keeping its aspect, centred on
    gray 114, as Ultralytics' LetterBox(auto=False, center=True) does."""
    height, width = image.shape[:2]
    out_w, out_h = size
    ratio = min(out_w / width, out_h / height)
    new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    pad_w, pad_h = (out_w - new_w) / 2, (out_h - new_h) / 2
    left, right = round(pad_w - 0.1), round(pad_w + 0.1)
    top, bottom = round(pad_h - 0.1), round(pad_h + 0.1)
    if (new_w, new_h) != (width, height):
        image = np.asarray(
            cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
        )
    padded = cv2.copyMakeBorder(
        image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    return np.asarray(padded, dtype=np.uint8), Letterbox(ratio, left, top)


def nms(boxes: Floats, scores: Floats, iou_threshold: float) -> list[int]:
    """Indexes kept by greedy non-maximum suppression, best score first. boxes: N×4 x1y1x2y2."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    keep: list[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        x1 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        union = areas[best] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
        order = rest[iou <= iou_threshold]
    return keep


def decode_output(
    output: npt.NDArray[Any],
    *,
    names: list[str],
    placement: Letterbox,
    image_size: tuple[int, int],
    score_threshold: float,
    nms_iou: float,
    max_detections: int = 300,
    classes: frozenset[str] | None = None,
) -> list[Detection]:
    """Detections from a raw [1, 4+C, N] (or [4+C, N]) output, in image pixels (clipped to
    `image_size` = (width, height)), best score first; NMS is per class. `classes` (lower-case
    names) keeps only those classes, before NMS and the `max_detections` cap, so that other
    classes cannot crowd the wanted ones out."""
    rows = np.asarray(output, dtype=np.float32)
    if rows.ndim == 3:
        rows = rows[0]
    if rows.ndim != 2 or rows.shape[0] < 5:
        raise ValueError(f"unexpected YOLO output shape {tuple(np.shape(output))}")
    preds = rows.T  # N × (4 + C)
    class_scores = preds[:, 4:]
    best = np.argmax(class_scores, axis=1)
    scores = class_scores[np.arange(len(preds)), best]
    chosen = scores >= score_threshold
    if classes is not None:
        wanted = [i for i in range(class_scores.shape[1]) if _label(names, i).lower() in classes]
        chosen &= np.isin(best, wanted)
    if not np.any(chosen):
        return []
    preds, kinds, scores = preds[chosen], best[chosen], scores[chosen].astype(np.float32)
    cx, cy, w, h = preds[:, 0], preds[:, 1], preds[:, 2], preds[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - placement.left) / placement.ratio
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - placement.top) / placement.ratio
    width, height = image_size
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    # Class-wise NMS in one pass: each class's boxes are shifted far from the others'.
    offset = (kinds.astype(np.float32) * (max(width, height) + 1.0))[:, None]
    keep = nms(boxes + offset, scores, nms_iou)[:max_detections]
    found = []
    for i in keep:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            continue
        found.append(Detection(_label(names, int(kinds[i])), float(scores[i]), (x1, y1, x2, y2)))
    return found


def _label(names: list[str], index: int) -> str:
    return names[index] if index < len(names) else str(index)


class YoloDetector:
    """One ONNX Runtime session of a YOLOv8/v11 detector. Safe to share between threads."""

    def __init__(
        self,
        session: Any,
        *,
        names: list[str],
        input_size: int = 640,
        score_threshold: float = 0.25,
        nms_iou: float = 0.45,
        model: str = "detector",
    ) -> None:
        self.session = session
        self.model = model
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        shape = list(model_input.shape)
        fixed_h = shape[2] if len(shape) == 4 and isinstance(shape[2], int) else None
        fixed_w = shape[3] if len(shape) == 4 and isinstance(shape[3], int) else None
        self.input_wh = (fixed_w or input_size, fixed_h or input_size)
        from_metadata = metadata_names(session)
        self.names = from_metadata or list(names)
        # Where the names came from, for the layout check's message.
        self.names_from = "the model's metadata" if from_metadata else "objects.names"
        self._check(session.get_outputs()[0].shape)
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou

    def detect(self, image_bgr: Image, classes: frozenset[str] | None = None) -> list[Detection]:
        """Detections, best first; `classes` (lower-case names) keeps only those (before the
        300-detection cap)."""
        height, width = image_bgr.shape[:2]
        padded, placement = letterbox(np.ascontiguousarray(image_bgr[..., :3]), self.input_wh)
        rgb = padded[..., ::-1].astype(np.float32) / 255.0
        blob = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])
        (output, *_) = self.session.run(None, {self.input_name: blob})
        self._check(np.shape(output))
        return decode_output(
            output,
            names=self.names,
            placement=placement,
            image_size=(width, height),
            score_threshold=self.score_threshold,
            nms_iou=self.nms_iou,
            classes=classes,
        )

    def _check(self, shape: Sequence[Any]) -> None:
        check_layout(shape, names=self.names, names_from=self.names_from, model=self.model)
