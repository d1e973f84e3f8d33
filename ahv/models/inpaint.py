"""Inpainting: a LaMa-family ONNX model, or OpenCV's classical Telea method.

LaMa exports take `image` [1, 3, H, W] RGB in [0, 1] and `mask` [1, 1, H, W] (1 = fill) and
give [1, 3, H, W] RGB, in [0, 255] for most exports, in [0, 1] for some: the range is read
from the values. A model with a fixed input (the common 512×512 export) gets the picture
resized in and the result resized back; a dynamic one gets it padded (reflected) to a
multiple of 8 and cropped back. Either way the result is exactly the input's size, and only
the masked pixels change: everything outside the mask is the input, byte for byte.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
LAMA = "lama"
CLASSICAL = "cv2_inpaint_telea"
CLASSICAL_RADIUS = 5
MULTIPLE = 8


def classical_inpaint(image: Image, mask: Image) -> Image:
    """OpenCV's Telea inpainting (radius 5) of the pixels where `mask` is non-zero."""
    binary = np.where(mask > 0, 255, 0).astype(np.uint8)
    filled = cv2.inpaint(
        np.ascontiguousarray(image[..., :3]), binary, CLASSICAL_RADIUS, cv2.INPAINT_TELEA
    )
    return np.asarray(filled, dtype=np.uint8)


def _fixed_size(shape: list[Any]) -> tuple[int, int] | None:
    """(width, height) of a model input with fixed spatial dims, else None."""
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
        if shape[2] > 0 and shape[3] > 0:
            return shape[3], shape[2]
    return None


class LamaInpainter:
    """One ONNX Runtime session of a LaMa-style inpainting model; safe to share."""

    def __init__(self, session: Any) -> None:
        self.session = session
        inputs = list(session.get_inputs())
        by_name = {i.name.lower(): i for i in inputs}
        image_input = by_name.get("image")
        mask_input = by_name.get("mask")
        if image_input is None or mask_input is None:
            if len(inputs) != 2:
                raise ValueError("a LaMa model has two inputs, `image` and `mask`")
            # Unnamed exports: the 3-channel input is the image.
            first, second = inputs
            image_input, mask_input = (
                (first, second) if list(first.shape)[1:2] != [1] else (second, first)
            )
        self.image_name = image_input.name
        self.mask_name = mask_input.name
        self.fixed = _fixed_size(list(image_input.shape))

    def inpaint(self, image_bgr: Image, mask_u8: Image) -> Image:
        """`image_bgr` (H×W×3) with the pixels where `mask_u8` > 0 filled in; H×W×3 out."""
        image = np.ascontiguousarray(image_bgr[..., :3])
        height, width = image.shape[:2]
        mask = (mask_u8 > 0).astype(np.uint8)
        if self.fixed is not None:
            model_image = cv2.resize(image, self.fixed, interpolation=cv2.INTER_AREA)
            model_mask = cv2.resize(mask, self.fixed, interpolation=cv2.INTER_NEAREST)
            # Nothing masked may be lost by the shrink: grow the shrunk mask by a pixel.
            model_mask = cv2.dilate(model_mask, np.ones((3, 3), np.uint8))
        else:
            pad_h, pad_w = -height % MULTIPLE, -width % MULTIPLE
            model_image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101)
            model_mask = cv2.copyMakeBorder(mask, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        out = self._run(np.asarray(model_image, np.uint8), np.asarray(model_mask, np.uint8))
        if self.fixed is not None:
            out = np.asarray(cv2.resize(out, (width, height), interpolation=cv2.INTER_CUBIC))
        else:
            out = out[:height, :width]
        return np.where(mask[..., None] > 0, out, image).astype(np.uint8)

    def _run(self, image: Image, mask: Image) -> Image:
        rgb = image[..., ::-1].astype(np.float32) / 255.0
        feeds = {
            self.image_name: np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]),
            self.mask_name: np.ascontiguousarray(mask.astype(np.float32)[None, None]),
        }
        (output, *_) = self.session.run(None, feeds)
        result = np.asarray(output, dtype=np.float32)[0].transpose(1, 2, 0)
        if float(np.nanmax(result, initial=0.0)) <= 1.5:  # [0, 1] exports
            result = result * 255.0
        result = np.nan_to_num(result, nan=0.0)
        return np.ascontiguousarray(np.clip(result.round(), 0, 255).astype(np.uint8)[..., ::-1])
