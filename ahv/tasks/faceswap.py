"""`faceswap` and `faceswap_multi`: source faces onto chosen faces of a target image.

The pipeline: fetch the images, decode them (the core's robust decoder), shrink the target to
`max_side`, refuse NSFW inputs when a filter is configured, detect faces, embed the source
faces (ArcFace, one batched call), swap every chosen target face (inswapper, one batched call)
with soft paste-back, optionally enlarge with the upscale task's code, encode.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ahv.config import Config
from ahv.errors import AhvError
from ahv.imageops import METHOD, plan_upscale, resize_lanczos, sharpen
from ahv.imaging import decode_image, encode_image, flatten_alpha
from ahv.models.face import (
    ArcFace,
    Face,
    InSwapper,
    MtcnnDetector,
    ScrfdDetector,
    build_mtcnn_models,
    load_emap,
)
from ahv.models.nsfw import NsfwFilter
from ahv.tasks.base import TaskContext, TaskOutput, TaskSpec
from ahv.tasks.face_plan import FaceSwapPayload, Swap, plan_swaps, validate_payload

Image = npt.NDArray[np.uint8]
MTCNN = "mtcnn"


@dataclass
class FaceModels:
    detector: MtcnnDetector | ScrfdDetector
    arcface: ArcFace
    swapper: InSwapper
    nsfw: NsfwFilter | None


def needed_models(config: Config) -> list[str]:
    """Model names (in [models.files]) the face tasks need; MTCNN is built, not configured."""
    face = config.faceswap
    names = [face.recognizer, face.swapper]
    if face.detector != MTCNN:
        names.append(face.detector)
    if face.nsfw_model:
        names.append(face.nsfw_model)
    return names


def load_face_detector(ctx: TaskContext) -> MtcnnDetector | ScrfdDetector:
    """The face detector of [faceswap]: MTCNN (built offline) or an SCRFD model."""
    sessions = ctx.sessions
    assert sessions is not None, "the scheduler gives model tasks a session cache"
    face, device = ctx.config.faceswap, ctx.device
    if face.detector == MTCNN:
        paths = build_mtcnn_models(Path(ctx.config.models.dir))
        return MtcnnDetector(
            sessions.get_file(paths["pnet"], device),
            sessions.get_file(paths["rnet"], device),
            sessions.get_file(paths["onet"], device),
            min_face_px=face.min_face_px,
        )
    return ScrfdDetector(
        sessions.get(face.detector, device),
        input_size=(face.det_size, face.det_size),
        score_threshold=face.score_threshold,
    )


def load_face_models(ctx: TaskContext) -> FaceModels:
    """Sessions come from the shared cache: loaded once per (model, device), then reused."""
    sessions = ctx.sessions
    assert sessions is not None, "the scheduler gives face tasks a session cache"
    face, device = ctx.config.faceswap, ctx.device
    detector = load_face_detector(ctx)
    swapper_path = sessions.registry.require(face.swapper)
    nsfw = None
    if face.nsfw_model:
        nsfw = NsfwFilter(
            sessions.get(face.nsfw_model, device),
            threshold=face.nsfw_threshold,
            class_index=face.nsfw_class,
        )
    return FaceModels(
        detector=detector,
        arcface=ArcFace(sessions.get(face.recognizer, device)),
        swapper=InSwapper(sessions.get(face.swapper, device), load_emap(swapper_path)),
        nsfw=nsfw,
    )


def big_enough(faces: list[Face], min_px: int) -> list[Face]:
    return [f for f in faces if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= min_px]


def _face_rows(faces: list[Face], scale: float = 1.0) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "box": [round(float(v) * scale, 1) for v in face.box],
            "score": round(float(face.score), 4),
        }
        for i, face in enumerate(faces)
    ]


def shrink_to_max_side(pixels: Image, max_side: int) -> Image:
    height, width = pixels.shape[:2]
    if max(height, width) <= max_side:
        return pixels
    ratio = max_side / max(height, width)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    return np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def swap_images(
    ctx: TaskContext, payload: FaceSwapPayload, target_data: bytes, source_data: list[bytes]
) -> TaskOutput:
    limits = ctx.config.limits
    decode = partial(decode_image, max_pixels=limits.max_input_pixels, max_side=limits.max_side)
    fields = [name for name, _ in payload.sources()]
    target = decode(target_data, field="target_url")
    # Sources are only looked at, never returned: the picture as shown is all that counts.
    sources = [
        flatten_alpha(decode(data, field=field).pixels)
        for data, field in zip(source_data, fields, strict=True)
    ]
    pixels = shrink_to_max_side(target.pixels, payload.max_side)
    _output_size(ctx, payload, pixels)  # refuse a too large result before any model runs
    alpha = pixels[..., 3:] if target.has_alpha else None
    image = np.ascontiguousarray(pixels[..., :3])
    # Faces are looked for in the target as shown (a face under alpha 0 is not there) and
    # swapped into its colour channels; the alpha is carried through. The content filter sees
    # the colour channels: they are what the result file holds, hidden or not.
    shown = flatten_alpha(pixels)
    ctx.progress(30)
    models = load_face_models(ctx)
    if models.nsfw is not None:
        models.nsfw.check(image, "target_url")
        for source, field in zip(sources, fields, strict=True):
            models.nsfw.check(source[..., :3], field)
    ctx.checkpoint()
    min_px = ctx.config.faceswap.min_face_px
    target_faces = big_enough(models.detector.detect(shown), min_px)
    source_faces = [big_enough(models.detector.detect(s[..., :3]), min_px) for s in sources]
    ctx.progress(50)
    _require_faces(target_faces, "target_url")
    for faces, field in zip(source_faces, fields, strict=True):
        _require_faces(faces, field)
    swaps = plan_swaps(
        payload,
        [_area(f) for f in target_faces],
        [[_area(f) for f in faces] for faces in source_faces],
        multi=ctx.task == "faceswap_multi",
    )
    ctx.checkpoint()
    embeddings = _embed_sources(models.arcface, sources, source_faces, swaps)
    ctx.progress(70)
    swapped = models.swapper.swap(image, [target_faces[s.target_face] for s in swaps], embeddings)
    ctx.checkpoint()
    return _finish(ctx, payload, swapped, alpha, target_faces, source_faces, swaps)


def _output_size(ctx: TaskContext, payload: FaceSwapPayload, pixels: Image) -> tuple[int, int]:
    height, width = pixels.shape[:2]
    if not payload.upscale:
        return width, height
    return plan_upscale(
        width,
        height,
        scale=2,
        max_side=None,
        max_output_pixels=ctx.config.limits.max_output_pixels,
        field="payload.upscale",
    )


def _area(face: Face) -> float:
    return float((face.box[2] - face.box[0]) * (face.box[3] - face.box[1]))


def _require_faces(faces: list[Face], field: str) -> None:
    if not faces:
        raise AhvError("no_face_detected", f"{field}: no face detected")


def _embed_sources(
    arcface: ArcFace, sources: list[Image], source_faces: list[list[Face]], swaps: list[Swap]
) -> npt.NDArray[np.float32]:
    rows = np.zeros((len(swaps), 512), dtype=np.float32)
    for number, source in enumerate(sources):
        wanted = sorted({s.source_face for s in swaps if s.source == number})
        if not wanted:
            continue
        faces = [source_faces[number][i] for i in wanted]
        embedded = dict(zip(wanted, arcface.embed(source[..., :3], faces), strict=True))
        for row, swap in enumerate(swaps):
            if swap.source == number:
                rows[row] = embedded[swap.source_face]
    return rows


def _finish(
    ctx: TaskContext,
    payload: FaceSwapPayload,
    swapped: Image,
    alpha: Image | None,
    target_faces: list[Face],
    source_faces: list[list[Face]],
    swaps: list[Swap],
) -> TaskOutput:
    result = swapped if alpha is None else np.concatenate([swapped, alpha], axis=2)
    width = result.shape[1]
    scale = 1.0
    if payload.upscale:
        out_width, out_height = _output_size(ctx, payload, result)
        result = resize_lanczos(result, out_width, out_height)
        scale = out_width / width
    if payload.sharpen > 0:
        result = sharpen(result, payload.sharpen)
    encoded = encode_image(np.ascontiguousarray(result), has_alpha=alpha is not None)
    ctx.progress(90)
    filename = ctx.save_output(encoded.data, encoded.extension)
    out_height, out_width = result.shape[:2]
    return TaskOutput(
        filename=filename,
        meta={
            "width": out_width,
            "height": out_height,
            "faces": {
                "target": _face_rows(target_faces, scale),
                "sources": [_face_rows(faces) for faces in source_faces],
            },
            "swapped": [s._asdict() for s in swaps],
            "detector": ctx.config.faceswap.detector,
            "upscaled": bool(payload.upscale),
            "method": METHOD if payload.upscale else None,
        },
    )


async def run_faceswap(ctx: TaskContext, payload: FaceSwapPayload) -> TaskOutput:
    fetches = [ctx.fetch(payload.target_url, field="target_url")]
    fetches += [ctx.fetch(url, field=field) for field, url in payload.sources()]
    fetched = await asyncio.gather(*fetches)
    ctx.progress(15)
    data = [f.data for f in fetched]
    return await ctx.run_in_thread(swap_images, ctx, payload, data[0], data[1:])


def _spec(name: str) -> TaskSpec:
    return TaskSpec(
        name=name,
        payload_type=FaceSwapPayload,
        run=run_faceswap,
        url_fields=("target_url", "source_url"),
        list_url_fields=("source_urls",),
        direct_path=None,
        default_predict_s=5.0,
        validate=partial(validate_payload, name),
        models=needed_models,
    )


FACESWAP = _spec("faceswap")
FACESWAP_MULTI = _spec("faceswap_multi")
