"""`remove_object`'s `mask_url`: read any image kind as a white-means-remove 0/255 mask.

Binarising, whatever the encoding (research/input-cases.md C17):
- the mask is decoded like every image (EXIF orientation applied, palette and CMYK
  converted, 16-bit scaled to 8 bits by /257, except a 16-bit plane of only 0 and 1, which
  becomes 0/255) and turned to gray;
- a mask whose values are then only 0 and 1 (a boolean label map saved as is) is white
  wherever it is 1; any other mask is white where gray > 127;
- transparent pixels are not painted: with an alpha channel, a pixel is white only where it
  is white and its alpha > 127.

Size: a mask of the image's size is used as it is. One of another size but the same aspect
ratio (the mask scaled to the image's width is within a pixel of its height, or the ratios
differ by under 1%) is resized with nearest-neighbour (`meta.mask_resized`); any other size
fails with `invalid_mask`, naming both sizes: stretching it would remove the wrong pixels.
"""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from ahv.errors import AhvError
from ahv.imaging import decode_image
from ahv.tasks.base import TaskContext

Image = npt.NDArray[np.uint8]
FIELD: Final = "mask_url"
# Largest relative difference of the width/height ratios still taken for the same aspect.
ASPECT_TOLERANCE: Final = 0.01


def binarise(pixels: Image, has_alpha: bool) -> Image:
    """0/255 from a decoded BGR or BGRA mask (see the module doc for the rule)."""
    colour = np.ascontiguousarray(pixels[..., :3]) if pixels.ndim == 3 else pixels
    gray = np.asarray(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)) if colour.ndim == 3 else colour
    white = gray > 0 if int(gray.max(initial=0)) <= 1 else gray > 127
    if has_alpha and pixels.ndim == 3 and pixels.shape[2] == 4:
        white &= pixels[..., 3] > 127
    return np.where(white, 255, 0).astype(np.uint8)


def same_aspect(mask_size: tuple[int, int], image_size: tuple[int, int]) -> bool:
    """Whether a (width, height) mask has the (width, height) image's aspect ratio, give or
    take the rounding of a resize."""
    mask_w, mask_h = mask_size
    width, height = image_size
    if abs(mask_h * width / mask_w - height) <= 1.0:
        return True
    return abs((mask_w / mask_h) / (width / height) - 1.0) < ASPECT_TOLERANCE


def read_mask(ctx: TaskContext, data: bytes, size: tuple[int, int]) -> tuple[Image, bool]:
    """The mask as 0/255 at `size` (width, height), and whether it had to be resized."""
    limits = ctx.config.limits
    decoded = decode_image(
        data, max_pixels=limits.max_input_pixels, max_side=limits.max_side, field=FIELD
    )
    return fit_to(binarise(decoded.pixels, decoded.has_alpha), size)


def fit_to(mask: Image, size: tuple[int, int], field: str = FIELD) -> tuple[Image, bool]:
    """`mask` at `size` (width, height): as it is, resized (nearest) when only its scale
    differs, else `invalid_mask` naming both sizes. Also whether it was resized."""
    mask_size = (mask.shape[1], mask.shape[0])
    if mask_size == size:
        return mask, False
    if not same_aspect(mask_size, size):
        raise AhvError(
            "invalid_mask",
            f"{field}: the mask is {mask_size[0]}x{mask_size[1]} but the image is "
            f"{size[0]}x{size[1]}; a mask must have the image's size or its aspect ratio",
        )
    return np.asarray(cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)), True
