"""`upscale`: enlarge an image by `scale` or to `max_side`, optionally sharpened.

With `images.upscaler` set, a super-resolution model (Real-ESRGAN family) enlarges the image
in overlapping tiles (ahv.models.superres), then Lanczos fits it to the planned size when the
requested scale is not the model's; without one the method is classical Lanczos.
`result.meta.method` names what ran (the model's name or "lanczos"). `face_restore` runs the
`images.restorer` model (GFPGAN/CodeFormer family) on every detected face of the result,
blended with the face by `fidelity` (a CodeFormer model is also fed w = 1 − fidelity, see
ahv.models.superres); `result.meta.faces_restored` lists the faces and, when there is at
least one, `result.meta.restorer` names the model. The output size is checked before any
model runs.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from ahv.config import Config
from ahv.errors import AhvError, invalid_payload
from ahv.imageops import METHOD, plan_upscale, resize_lanczos, sharpen
from ahv.imaging import decode_image, encode_image, flatten_alpha
from ahv.models.face import Face
from ahv.models.superres import FaceRestorer, SuperResolution
from ahv.tasks.base import TaskContext, TaskOutput, TaskSpec
from ahv.tasks.faceswap import load_face_detector


class UpscalePayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image_url: str
    scale: Literal[2, 4] | None = None
    max_side: Annotated[int, msgspec.Meta(ge=16)] | None = None
    sharpen: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.0
    face_restore: bool = False
    fidelity: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.7


def _validate(payload: UpscalePayload, config: Config) -> None:
    if payload.max_side is not None and payload.max_side > config.limits.max_side:
        raise invalid_payload(
            "payload.max_side", f"{payload.max_side} is over the limit {config.limits.max_side}"
        )
    # Refused at submit, not as a job that can only fail; upscale itself stays available.
    if payload.face_restore and not config.images.restorer:
        raise AhvError(
            "model_unavailable",
            "payload.face_restore: no face restore model configured: set images.restorer in "
            "ahv.toml (or leave face_restore false)",
            status=422,
        )


def _needs(config: Config) -> list[str]:
    images = config.images
    return [name for name in (images.upscaler, images.restorer) if name]


def _model_upscale(
    ctx: TaskContext, pixels: npt.NDArray[np.uint8], out_width: int, out_height: int
) -> npt.NDArray[np.uint8]:
    """The upscaler model's result (× its scale), fitted to the planned size with Lanczos."""
    images, sessions = ctx.config.images, ctx.sessions
    assert sessions is not None, "the scheduler gives model tasks a session cache"
    model = SuperResolution(
        sessions.get(images.upscaler, ctx.device),
        tile=images.tile_px,
        overlap=images.tile_overlap_px,
        batch=images.tile_batch,
    )
    scale = model.scale
    height, width = pixels.shape[:2]
    if width * scale * height * scale > ctx.config.limits.max_output_pixels:
        # The model's own result would pass the output limit (a small planned size on a big
        # input): shrink the input first so the model makes about the planned size.
        pixels = resize_lanczos(
            pixels,
            min(width, max(1, math.ceil(out_width / scale))),
            min(height, max(1, math.ceil(out_height / scale))),
        )
    enlarged = model.upscale(pixels, progress=lambda done: ctx.progress(40 + int(30 * done)))
    if enlarged.shape[:2] != (out_height, out_width):
        enlarged = resize_lanczos(enlarged, out_width, out_height)
    return enlarged


def _restore_faces(
    ctx: TaskContext,
    source: npt.NDArray[np.uint8],
    pixels: npt.NDArray[np.uint8],
    fidelity: float,
) -> tuple[npt.NDArray[np.uint8], list[Face]]:
    """Faces found on the (smaller) source, restored on the enlarged `pixels`; the faces in
    output coordinates."""
    sessions = ctx.sessions
    assert sessions is not None, "the scheduler gives model tasks a session cache"
    restorer = FaceRestorer(sessions.get(ctx.config.images.restorer, ctx.device))
    min_px = ctx.config.faceswap.min_face_px
    found = load_face_detector(ctx).detect(flatten_alpha(source))
    faces = [f for f in found if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= min_px]
    ctx.checkpoint()
    sx = pixels.shape[1] / source.shape[1]
    sy = pixels.shape[0] / source.shape[0]
    factor = np.array([sx, sy], dtype=np.float32)
    scaled = [
        Face(
            np.asarray(f.box, dtype=np.float32) * np.array([sx, sy, sx, sy], dtype=np.float32),
            f.score,
            np.asarray(f.landmarks, dtype=np.float32) * factor,
        )
        for f in faces
    ]
    return restorer.restore(pixels, scaled, fidelity), scaled


async def run_upscale(ctx: TaskContext, payload: UpscalePayload) -> TaskOutput:
    images = ctx.config.images
    if payload.face_restore and not images.restorer:
        raise AhvError(
            "model_unavailable",
            "face_restore: no face restore model configured (images.restorer)",
            status=503,
        )
    fetched = await ctx.fetch(payload.image_url, field="image_url")
    ctx.progress(20)
    limits = ctx.config.limits

    def work() -> TaskOutput:
        image = decode_image(
            fetched.data,
            max_pixels=limits.max_input_pixels,
            max_side=limits.max_side,
            field="image_url",
        )
        height, width = image.pixels.shape[:2]
        out_width, out_height = plan_upscale(
            width,
            height,
            scale=payload.scale,
            max_side=payload.max_side,
            max_output_pixels=limits.max_output_pixels,
        )
        ctx.progress(40)
        method = METHOD
        if images.upscaler and (out_width > width or out_height > height):
            pixels = _model_upscale(ctx, image.pixels, out_width, out_height)
            method = images.upscaler
        else:
            pixels = resize_lanczos(image.pixels, out_width, out_height)
        ctx.progress(70)
        extra: dict[str, Any] = {}
        if payload.face_restore:
            pixels, faces = _restore_faces(ctx, image.pixels, pixels, payload.fidelity)
            extra["faces_restored"] = [
                {"box": [round(float(v), 1) for v in f.box], "score": round(float(f.score), 4)}
                for f in faces
            ]
            if faces:
                extra["restorer"] = images.restorer
            ctx.progress(80)
        if payload.sharpen > 0:
            pixels = sharpen(pixels, payload.sharpen)
        ctx.checkpoint()
        encoded = encode_image(pixels, has_alpha=image.has_alpha)
        ctx.progress(90)
        filename = ctx.save_output(encoded.data, encoded.extension)
        return TaskOutput(
            filename=filename,
            meta={
                "width": out_width,
                "height": out_height,
                "method": method,
                "input_width": width,
                "input_height": height,
                "format": encoded.extension,
                "has_alpha": image.has_alpha,
                **extra,
            },
        )

    return await ctx.run_in_thread(work)


UPSCALE = TaskSpec(
    name="upscale",
    payload_type=UpscalePayload,
    run=run_upscale,
    url_fields=("image_url",),
    direct_path="/upscale",
    default_predict_s=3.0,
    validate=_validate,
    models=_needs,
)
