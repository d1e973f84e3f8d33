"""The classical (model-free) upscale: size planning, Lanczos resize and an unsharp mask."""

from __future__ import annotations

import math
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from ahv.errors import AhvError, invalid_payload

METHOD: Final = "lanczos"
DEFAULT_SCALE: Final = 2.0
# A radius of about one source pixel lifts the softness Lanczos leaves behind without haloing.
_SHARPEN_SIGMA: Final = 1.0

Pixels = npt.NDArray[np.uint8]


def plan_upscale(
    width: int,
    height: int,
    *,
    scale: float | None,
    max_side: int | None,
    max_output_pixels: int,
    field: str | None = None,
) -> tuple[int, int]:
    """Output (width, height); refuses an oversized result before any pixel is touched.

    The refusal names what set the output size: `field` when the caller gives one, else
    `payload.scale` or `payload.max_side` (whichever decided it), or, when neither was sent,
    plainly the output (at the default scale)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise invalid_payload(field or "payload.scale", "must be a positive number")
    if max_side is not None and max_side < 1:
        raise invalid_payload("payload.max_side", "must be at least 1")
    cause, default = field or "payload.scale", ""
    if scale is None and max_side is None:
        scale = DEFAULT_SCALE
        default = f" at the default scale {DEFAULT_SCALE:g}"
        cause = field or ""
    out_w, out_h = width, height
    if scale is not None:
        out_w, out_h = max(1, _round(width * scale)), max(1, _round(height * scale))
    if max_side is not None and (scale is None or max(out_w, out_h) > max_side):
        # Recompute from the source size rather than the scaled one: one rounding, not two.
        out_w, out_h = _fit_longest(width, height, max_side)
        cause = field or "payload.max_side"
    if out_w * out_h > max_output_pixels:
        raise AhvError(
            "image_too_large",
            f"{cause + ': ' if cause else ''}the output would be {out_w}x{out_h} "
            f"({out_w * out_h} pixels) from a {width}x{height} input{default}; the limit is "
            f"{max_output_pixels} output pixels",
            status=413,
        )
    return out_w, out_h


def resize_lanczos(pixels: Pixels, width: int, height: int) -> Pixels:
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    src_h, src_w = pixels.shape[:2]
    if (src_w, src_h) == (width, height):
        return pixels.copy()
    # Lanczos aliases badly when shrinking; area averaging is the right filter there.
    shrinking = width <= src_w and height <= src_h
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    if pixels.ndim == 3 and pixels.shape[2] == 4 and int(pixels[..., 3].min()) < 255:
        return _resize_premultiplied(pixels, width, height, interpolation)
    out = cv2.resize(pixels, (width, height), interpolation=interpolation)
    # cv2 drops a trailing single channel; keep the caller's layout.
    return np.ascontiguousarray(out, dtype=np.uint8).reshape(height, width, *pixels.shape[2:])


def _resize_premultiplied(pixels: Pixels, width: int, height: int, interpolation: int) -> Pixels:
    # Filtering straight alpha mixes the (arbitrary, often black) colour of fully transparent
    # pixels into visible edges as dark fringes; premultiplying weights colour by coverage.
    alpha = pixels[..., 3:4].astype(np.float32)
    premultiplied = np.concatenate([pixels[..., :3] * (alpha / 255.0), alpha], axis=2)
    resized = cv2.resize(premultiplied, (width, height), interpolation=interpolation)
    out_alpha = np.clip(resized[..., 3:4], 0.0, 255.0)
    colour = np.divide(
        resized[..., :3] * 255.0,
        out_alpha,
        out=np.zeros((height, width, 3), dtype=np.float32),
        where=out_alpha > 0.5,
    )
    result = np.empty((height, width, 4), dtype=np.uint8)
    result[..., :3] = np.clip(np.rint(colour), 0, 255)
    result[..., 3] = np.rint(out_alpha[..., 0])
    return result


def sharpen(pixels: Pixels, amount: float) -> Pixels:
    """Unsharp mask on the colour channels: out = src + amount·(src − blur(src))."""
    if not (math.isfinite(amount) and amount >= 0):
        raise ValueError(f"sharpen amount must be >= 0, got {amount}")
    if amount == 0:
        return pixels.copy()
    has_alpha = pixels.ndim == 3 and pixels.shape[2] == 4
    colour = np.ascontiguousarray(pixels[..., :3]) if has_alpha else pixels
    blurred = cv2.GaussianBlur(colour, (0, 0), _SHARPEN_SIGMA)
    # addWeighted on uint8 rounds and saturates, which is the clipping we want.
    sharp = np.asarray(cv2.addWeighted(colour, 1.0 + amount, blurred, -amount, 0), dtype=np.uint8)
    if not has_alpha:
        return np.ascontiguousarray(sharp).reshape(pixels.shape)
    out = pixels.copy()
    out[..., :3] = sharp
    return out


def _round(value: float) -> int:
    # Half-up, not Python's banker's rounding: 2.5 px must not become 2 on one image and 3
    # on the next.
    return math.floor(value + 0.5)


def _fit_longest(width: int, height: int, max_side: int) -> tuple[int, int]:
    if width >= height:
        return max_side, max(1, _round(height * max_side / width))
    return max(1, _round(width * max_side / height)), max_side
