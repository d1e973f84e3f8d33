"""`remove_background`: a cut-out with alpha, from a matting model (`images.matting`).

The matte (U2Net/ISNet/BiRefNet/MODNet family, see ahv.models.matting) is computed on the
upright image as shown (transparent pixels over flat gray) and resized back to it. The result
is an RGBA PNG whose alpha is matte × 255, multiplied with the input's own alpha when it has
one; with `bg_color` it is a JPEG of the image composited over that flat colour instead.
"""

from __future__ import annotations

import re

import msgspec
import numpy as np
import numpy.typing as npt

from ahv.config import Config
from ahv.errors import AhvError, invalid_payload
from ahv.imaging import decode_image, encode_image, flatten_alpha
from ahv.models.matting import Matting
from ahv.tasks.base import TaskContext, TaskOutput, TaskSpec

_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")
_TRIPLE = re.compile(r"^\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*$")


class RemoveBackgroundPayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image_url: str
    bg_color: str | None = None


def parse_color(text: str, field: str = "payload.bg_color") -> tuple[int, int, int]:
    """(b, g, r) of "#rrggbb" or "r,g,b" (0–255 each)."""
    match = _HEX.match(text.strip())
    if match:
        value = int(match.group(1), 16)
        return value & 0xFF, (value >> 8) & 0xFF, value >> 16
    match = _TRIPLE.match(text)
    if match:
        red, green, blue = (int(v) for v in match.groups())
        if max(red, green, blue) <= 255:
            return blue, green, red
    raise invalid_payload(field, f'{text!r} is not a colour: use "#rrggbb" or "r,g,b" (0-255)')


def _validate(payload: RemoveBackgroundPayload, config: Config) -> None:
    if payload.bg_color is not None:
        parse_color(payload.bg_color)


def _needs(config: Config) -> list[str]:
    return [config.images.matting] if config.images.matting else []


def _unconfigured(config: Config) -> str | None:
    if config.images.matting:
        return None
    return "remove_background needs a matting model: set images.matting in ahv.toml"


def visible_matte(
    pixels: npt.NDArray[np.uint8], matte: npt.NDArray[np.float32], *, has_alpha: bool
) -> npt.NDArray[np.float32]:
    """The matte times the input's own alpha (0..1): what of each pixel the result shows."""
    alpha = matte.astype(np.float32)
    if has_alpha and pixels.ndim == 3 and pixels.shape[2] == 4:
        alpha = alpha * (pixels[..., 3].astype(np.float32) / 255.0)
    return alpha


def cut_out(
    pixels: npt.NDArray[np.uint8],
    matte: npt.NDArray[np.float32],
    *,
    has_alpha: bool,
    bg_bgr: tuple[int, int, int] | None,
) -> npt.NDArray[np.uint8]:
    """BGRA with the matte (times the input's alpha) as alpha, or BGR over the flat colour
    when `bg_bgr` is given."""
    alpha = visible_matte(pixels, matte, has_alpha=has_alpha)
    colour = np.ascontiguousarray(pixels[..., :3])
    if bg_bgr is None:
        out = np.empty((*colour.shape[:2], 4), dtype=np.uint8)
        out[..., :3] = colour
        out[..., 3] = np.clip(np.rint(alpha * 255.0), 0, 255).astype(np.uint8)
        return out
    background = np.array(bg_bgr, dtype=np.float32)
    weight = alpha[..., None]
    mixed = colour.astype(np.float32) * weight + background * (1.0 - weight)
    return np.asarray(np.clip(np.rint(mixed), 0, 255), dtype=np.uint8)


async def run_remove_background(ctx: TaskContext, payload: RemoveBackgroundPayload) -> TaskOutput:
    images = ctx.config.images
    if not images.matting:
        raise AhvError(
            "model_unavailable",
            "remove_background: no matting model configured (images.matting)",
            status=503,
        )
    bg_bgr = parse_color(payload.bg_color) if payload.bg_color is not None else None
    fetched = await ctx.fetch(payload.image_url, field="image_url")
    ctx.progress(20)
    limits = ctx.config.limits
    sessions = ctx.sessions
    assert sessions is not None, "the scheduler gives model tasks a session cache"

    def work() -> TaskOutput:
        image = decode_image(
            fetched.data,
            max_pixels=limits.max_input_pixels,
            max_side=limits.max_side,
            field="image_url",
        )
        ctx.progress(30)
        batching = ctx.config.batching
        session = (
            sessions.batched(
                images.matting,
                ctx.device,
                max_batch=batching.max_batch,
                max_wait_ms=batching.max_wait_ms,
            )
            if batching.enabled
            else sessions.get(images.matting, ctx.device)
        )
        matting = Matting(
            session,
            family=images.matting_family,
            size=images.matting_size,
        )
        matte = matting.matte(flatten_alpha(image.pixels))
        ctx.progress(70)
        pixels = cut_out(image.pixels, matte, has_alpha=image.has_alpha, bg_bgr=bg_bgr)
        ctx.checkpoint()
        encoded = encode_image(pixels, has_alpha=bg_bgr is None)
        ctx.progress(90)
        filename = ctx.save_output(encoded.data, encoded.extension)
        height, width = pixels.shape[:2]
        return TaskOutput(
            filename=filename,
            meta={
                "width": width,
                "height": height,
                # The share of the picture the result shows: hidden input pixels count 0.
                "foreground_fraction": round(
                    float(visible_matte(image.pixels, matte, has_alpha=image.has_alpha).mean()),
                    4,
                ),
                "model": images.matting,
                "family": matting.family,
                "format": encoded.extension,
                "has_alpha": bg_bgr is None,
                "bg_color": payload.bg_color,
            },
        )

    return await ctx.run_in_thread(work)


REMOVE_BACKGROUND = TaskSpec(
    name="remove_background",
    payload_type=RemoveBackgroundPayload,
    run=run_remove_background,
    url_fields=("image_url",),
    direct_path="/remove-background",
    default_predict_s=3.0,
    validate=_validate,
    models=_needs,
    unconfigured=_unconfigured,
)
