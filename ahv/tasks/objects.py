"""`scan_objects` and `remove_object`: a YOLO detector's boxes, and inpainting an object away.

`scan_objects` decodes the image (EXIF orientation applied, so boxes are in the upright
picture's pixels; transparent pixels shown as flat gray, so nothing under alpha 0 is found),
runs the `objects.detector` model and returns the detections as JSON in `result.meta` (no
file, unless `draw` asks for an annotated JPEG).

`remove_object` builds a mask (white = remove) from `mask_url` (any encoding binarised, a mask
of another aspect ratio refused: ahv.tasks.masks), or from `prompt`: the boxes of the
detections whose class name matches, grown by `dilate_px`; then inpaints it with the
`objects.inpainter` LaMa model, or OpenCV's classical Telea method when none is configured.
Only masked pixels change; the result has the input's size exactly, and an alpha channel is
kept as it was.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Annotated, Any

import cv2
import msgspec
import numpy as np
import numpy.typing as npt

from ahv.config import Config
from ahv.errors import AhvError, invalid_payload
from ahv.imaging import decode_image, encode_image, flatten_alpha
from ahv.models.inpaint import CLASSICAL, LAMA, LamaInpainter, classical_inpaint
from ahv.models.yolo import Detection, YoloDetector
from ahv.tasks.base import TaskContext, TaskOutput, TaskSpec
from ahv.tasks.masks import read_mask

Image = npt.NDArray[np.uint8]
Score = Annotated[float, msgspec.Meta(ge=0, le=1)]
MAX_DILATE_PX = 256


class ScanPayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image_url: str
    # Keep only these class names (case-insensitive); None = all.
    classes: list[str] | None = None
    # Least score a detection needs; None = objects.min_score.
    min_score: Score | None = None
    # Also save a JPEG with the boxes drawn.
    draw: bool = False


class RemovePayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image_url: str
    # White = remove (> 127, or 1 in a 0/1 mask; ahv.tasks.masks). Exactly one of mask_url
    # and prompt.
    mask_url: str | None = None
    # Class names ("cat", "cat, dog" or ["cat", "dog"]) whose detected boxes are removed.
    prompt: str | list[str] | None = None
    # Pixels the mask is grown by; None = objects.mask_dilate_px for a prompt, 0 for a mask.
    dilate_px: Annotated[int, msgspec.Meta(ge=0, le=MAX_DILATE_PX)] | None = None


def prompt_labels(prompt: str | list[str] | None) -> list[str]:
    """The class names of a prompt, lower-cased, without blanks or repeats."""
    if prompt is None:
        return []
    parts = prompt.split(",") if isinstance(prompt, str) else prompt
    labels: list[str] = []
    for part in parts:
        label = part.strip().lower()
        if label and label not in labels:
            labels.append(label)
    return labels


def _validate_scan(payload: ScanPayload, config: Config) -> None:
    for i, name in enumerate(payload.classes or []):
        if not name.strip():
            raise invalid_payload(f"payload.classes[{i}]", "an empty class name")


def _validate_remove(payload: RemovePayload, config: Config) -> None:
    if (payload.mask_url is None) == (payload.prompt is None):
        raise invalid_payload("payload.mask_url", "give exactly one of mask_url or prompt")
    if payload.prompt is not None and not prompt_labels(payload.prompt):
        raise invalid_payload("payload.prompt", "no class name given")
    # A mask needs no detector, so the task stays available; a prompt would only fail later.
    if payload.prompt is not None and not config.objects.detector:
        raise AhvError(
            "model_unavailable",
            "payload.prompt: finding objects by prompt needs an object detector: set "
            "objects.detector in ahv.toml (or send mask_url instead)",
            status=422,
        )


def _scan_unconfigured(config: Config) -> str | None:
    if config.objects.detector:
        return None
    return "scan_objects needs an object detector: set objects.detector in ahv.toml"


def scan_models(config: Config) -> list[str]:
    detector = config.objects.detector
    return [detector] if detector else []


def remove_models(config: Config) -> list[str]:
    names = [config.objects.inpainter] if config.objects.inpainter else []
    return names + scan_models(config)


def load_detector(ctx: TaskContext, min_score: float | None = None) -> YoloDetector:
    objects = ctx.config.objects
    if not objects.detector:
        raise AhvError(
            "model_unavailable",
            f"{ctx.task}: no object detector is configured (set objects.detector to a YOLO "
            "model in [models.files])",
            status=503,
        )
    assert ctx.sessions is not None, "the scheduler gives model tasks a session cache"
    batching = ctx.config.batching
    session = (
        ctx.sessions.batched(
            objects.detector,
            ctx.device,
            max_batch=batching.max_batch,
            max_wait_ms=batching.max_wait_ms,
        )
        if batching.enabled
        else ctx.sessions.get(objects.detector, ctx.device)
    )
    return YoloDetector(
        session,
        names=list(objects.names),
        input_size=objects.input_size,
        score_threshold=objects.min_score if min_score is None else min_score,
        model=objects.detector,
    )


def object_rows(detections: list[Detection]) -> list[dict[str, Any]]:
    return [
        {
            "label": d.label,
            "score": round(d.score, 4),
            "box": [round(v, 1) for v in d.box],
        }
        for d in detections
    ]


def _colour(label: str) -> tuple[int, int, int]:
    seed = zlib.crc32(label.encode())
    return (64 + seed % 192, 64 + (seed >> 8) % 192, 64 + (seed >> 16) % 192)


def draw_detections(image: Image, detections: list[Detection]) -> Image:
    canvas = np.ascontiguousarray(image[..., :3]).copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    for d in detections:
        x1, y1, x2, y2 = (round(v) for v in d.box)
        colour = _colour(d.label)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = f"{d.label} {d.score:.2f}"
        scale = 0.4 * thickness
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y1 - th - base)
        cv2.rectangle(canvas, (x1, top), (x1 + tw, top + th + base), colour, -1)
        cv2.putText(
            canvas, text, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness
        )
    return canvas


def _decode(ctx: TaskContext, data: bytes, field: str) -> tuple[Image, bool]:
    limits = ctx.config.limits
    decoded = decode_image(
        data, max_pixels=limits.max_input_pixels, max_side=limits.max_side, field=field
    )
    return decoded.pixels, decoded.has_alpha


def scan(ctx: TaskContext, payload: ScanPayload, data: bytes) -> TaskOutput:
    pixels, _ = _decode(ctx, data, "image_url")
    image = flatten_alpha(pixels)
    height, width = image.shape[:2]
    ctx.progress(30)
    detector = load_detector(ctx, payload.min_score)
    ctx.checkpoint()
    wanted = None
    if payload.classes is not None:
        wanted = frozenset(name.strip().lower() for name in payload.classes)
    detections = detector.detect(image, classes=wanted)
    ctx.progress(80)
    meta: dict[str, Any] = {
        "width": width,
        "height": height,
        "objects": object_rows(detections),
        "count": len(detections),
        "detector": ctx.config.objects.detector,
    }
    filename = None
    if payload.draw:
        encoded = encode_image(draw_detections(image, detections), has_alpha=False)
        filename = ctx.save_output(encoded.data, encoded.extension)
        meta["format"] = encoded.extension
    return TaskOutput(filename=filename, meta=meta)


async def run_scan(ctx: TaskContext, payload: ScanPayload) -> TaskOutput:
    fetched = await ctx.fetch(payload.image_url, field="image_url")
    ctx.progress(15)
    return await ctx.run_in_thread(scan, ctx, payload, fetched.data)


def prompt_mask(ctx: TaskContext, image: Image, labels: list[str]) -> tuple[Image, list[Detection]]:
    detector = load_detector(ctx)
    # Filtered in the detector, before its 300-detection cap; all classes only for the error.
    chosen = detector.detect(image, classes=frozenset(labels))
    if not chosen:
        found = ", ".join(sorted({d.label for d in detector.detect(image)})) or "nothing"
        wanted = ", ".join(repr(label) for label in labels)
        raise AhvError("no_object_detected", f"prompt: no {wanted} found (found: {found})")
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    for d in chosen:
        x1, y1, x2, y2 = d.box
        mask[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = 255
    return mask, chosen


def dilate(mask: Image, pixels: int) -> Image:
    if pixels <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return np.asarray(cv2.dilate(mask, kernel), dtype=np.uint8)


def remove(
    ctx: TaskContext, payload: RemovePayload, data: bytes, mask_data: bytes | None
) -> TaskOutput:
    pixels, has_alpha = _decode(ctx, data, "image_url")
    image = np.ascontiguousarray(pixels[..., :3])
    height, width = image.shape[:2]
    ctx.progress(25)
    meta: dict[str, Any] = {"width": width, "height": height}
    if mask_data is not None:
        mask, meta["mask_resized"] = read_mask(ctx, mask_data, (width, height))
        if not mask.any():
            raise AhvError("invalid_mask", "mask_url: the mask is empty")
        default_dilate = 0
    else:
        mask, chosen = prompt_mask(ctx, flatten_alpha(pixels), prompt_labels(payload.prompt))
        meta["objects"] = object_rows(chosen)
        default_dilate = ctx.config.objects.mask_dilate_px
    grow = default_dilate if payload.dilate_px is None else payload.dilate_px
    mask = dilate(mask, grow)
    ctx.progress(50)
    inpainter = ctx.config.objects.inpainter
    if inpainter:
        assert ctx.sessions is not None, "the scheduler gives model tasks a session cache"
        model = LamaInpainter(ctx.sessions.get(inpainter, ctx.device))
        ctx.checkpoint()
        filled = model.inpaint(image, mask)
        method = LAMA
    else:
        ctx.checkpoint()
        filled = classical_inpaint(image, mask)
        method = CLASSICAL
    ctx.progress(85)
    result = np.concatenate([filled, pixels[..., 3:]], axis=2) if has_alpha else filled
    encoded = encode_image(np.ascontiguousarray(result), has_alpha=has_alpha)
    filename = ctx.save_output(encoded.data, encoded.extension)
    meta.update(
        method=method,
        mask_fraction=round(float(np.count_nonzero(mask)) / mask.size, 4),
        dilate_px=grow,
        format=encoded.extension,
        has_alpha=has_alpha,
    )
    return TaskOutput(filename=filename, meta=meta)


async def run_remove(ctx: TaskContext, payload: RemovePayload) -> TaskOutput:
    fetches = [ctx.fetch(payload.image_url, field="image_url")]
    if payload.mask_url is not None:
        fetches.append(ctx.fetch(payload.mask_url, field="mask_url"))
    fetched = await asyncio.gather(*fetches)
    ctx.progress(15)
    mask_data = fetched[1].data if len(fetched) > 1 else None
    return await ctx.run_in_thread(remove, ctx, payload, fetched[0].data, mask_data)


SCAN_OBJECTS = TaskSpec(
    name="scan_objects",
    payload_type=ScanPayload,
    run=run_scan,
    url_fields=("image_url",),
    direct_path="/scan-objects",
    default_predict_s=2.0,
    validate=_validate_scan,
    models=scan_models,
    unconfigured=_scan_unconfigured,
)

REMOVE_OBJECT = TaskSpec(
    name="remove_object",
    payload_type=RemovePayload,
    run=run_remove,
    url_fields=("image_url", "mask_url"),
    direct_path="/remove-object",
    default_predict_s=5.0,
    validate=_validate_remove,
    models=remove_models,
)
