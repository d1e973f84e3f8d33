"""`upscale`: enlarge an image by `scale` or to `max_side`, optionally sharpened.

Until a super-resolution model is installed the method is classical Lanczos, and
`result.meta.method` says so.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ahv.config import Config
from ahv.errors import invalid_payload
from ahv.imageops import METHOD, plan_upscale, resize_lanczos, sharpen
from ahv.imaging import decode_image, encode_image
from ahv.tasks.base import TaskContext, TaskOutput, TaskSpec


class UpscalePayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image_url: str
    scale: Literal[2, 4] | None = None
    max_side: Annotated[int, msgspec.Meta(ge=16)] | None = None
    sharpen: Annotated[float, msgspec.Meta(ge=0, le=5)] = 0.0


def _validate(payload: UpscalePayload, config: Config) -> None:
    if payload.max_side is not None and payload.max_side > config.limits.max_side:
        raise invalid_payload(
            "payload.max_side", f"{payload.max_side} is over the limit {config.limits.max_side}"
        )


async def run_upscale(ctx: TaskContext, payload: UpscalePayload) -> TaskOutput:
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
        pixels = resize_lanczos(image.pixels, out_width, out_height)
        ctx.progress(70)
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
                "method": METHOD,
                "input_width": width,
                "input_height": height,
                "format": encoded.extension,
                "has_alpha": image.has_alpha,
            },
        )

    return await ctx.run_in_thread(work)


UPSCALE = TaskSpec(
    name="upscale",
    payload_type=UpscalePayload,
    run=run_upscale,  # type: ignore[arg-type]
    url_fields=("image_url",),
    direct_path="/upscale",
    default_predict_s=3.0,
    validate=_validate,  # type: ignore[arg-type]
)
