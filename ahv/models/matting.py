"""Foreground mattes from salient-object / portrait matting models on ONNX Runtime.

Families and what they expect (from their reference code):
- U2Net (rembg's u2net, u2netp, u2net_human_seg): 320×320, RGB/255 then ImageNet mean/std;
  7 outputs, the first is the fused map, min–max normalised by the reference.
- ISNet (DIS, rembg's isnet-general-use): 1024×1024, the same normalisation and min–max.
- BiRefNet: 1024×1024, ImageNet normalisation; the output is a logit map (sigmoid).
- MODNet: dynamic size (512 in its demos), (x − 127.5) / 127.5; the output is a matte in [0,1].

The first output is used, squeezed to H×W; values outside [0,1] are taken for logits and go
through a sigmoid; the matte is resized back to the image with bilinear interpolation.
"""

from __future__ import annotations

from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

FAMILIES: Final = ("u2net", "isnet", "birefnet", "modnet")
_IMAGENET_MEAN: Final = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD: Final = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_MIN_MAX: Final = frozenset({"u2net", "isnet"})

Matte = npt.NDArray[np.float32]


def _fixed_side(shape: list[Any]) -> tuple[int, int] | None:
    """(height, width) of an NCHW input when both are fixed numbers."""
    if len(shape) != 4:
        raise ValueError(f"a matting model takes an NCHW image, its input has shape {shape}")
    height, width = shape[2], shape[3]
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    return None


def guess_family(session: Any) -> str:
    """The family from the signature: a dynamic or 512 input is MODNet, 320 or several outputs
    is U2Net, else (1024, one output) ISNet, whose min–max step is harmless on BiRefNet."""
    fixed = _fixed_side(list(session.get_inputs()[0].shape))
    if fixed is None or fixed == (512, 512):
        return "modnet"
    if fixed == (320, 320) or len(session.get_outputs()) > 1:
        return "u2net"
    return "isnet"


class Matting:
    """`matte(image_bgr)`: float32 H×W in [0,1], 1 = foreground. Thread-safe."""

    def __init__(self, session: Any, *, family: str = "auto", size: int = 1024) -> None:
        if family != "auto" and family not in FAMILIES:
            raise ValueError(f"unknown matting family {family!r} (known: {', '.join(FAMILIES)})")
        self.session = session
        model_input = session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.dtype = np.float16 if "float16" in str(model_input.type) else np.float32
        fixed = _fixed_side(list(model_input.shape))
        self.input_size: tuple[int, int] = fixed if fixed is not None else (size, size)
        self.family = guess_family(session) if family == "auto" else family

    def _prepare(self, image_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        height, width = self.input_size
        colour = image_bgr[..., :3] if image_bgr.ndim == 3 else image_bgr
        if colour.ndim == 2:
            colour = np.asarray(cv2.cvtColor(colour, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
        rgb = cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_BGR2RGB)
        small = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
        if self.family == "modnet":
            normalised = (small - 127.5) / 127.5
        else:
            normalised = (small / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
        return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], dtype=np.float32)

    def matte(self, image_bgr: npt.NDArray[np.uint8]) -> Matte:
        height, width = image_bgr.shape[:2]
        blob = self._prepare(image_bgr).astype(self.dtype)
        first = self.session.run(None, {self.input_name: blob})[0]
        values = np.asarray(first, dtype=np.float32)
        values = values.reshape(values.shape[-2:]) if values.ndim >= 2 else values
        if values.ndim != 2:
            raise ValueError(f"matting output has shape {np.shape(first)}, expected an H×W map")
        values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
        if float(values.min()) < 0.0 or float(values.max()) > 1.0:
            values = (1.0 / (1.0 + np.exp(-np.clip(values, -60.0, 60.0)))).astype(np.float32)
        if self.family in _MIN_MAX:
            lo, hi = float(values.min()), float(values.max())
            values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
        matte = cv2.resize(
            values.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
        )
        return np.clip(np.asarray(matte, dtype=np.float32), 0.0, 1.0).reshape(height, width)
