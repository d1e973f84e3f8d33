"""Foreground mattes from salient-object / portrait matting models on ONNX Runtime.

Families, as their reference code runs them (rembg's sessions, the DIS, BiRefNet and MODNet
repositories, FaceFusion's background remover):

- U2Net (u2net, u2netp, u2net_human_seg): `input.1` [1,3,320,320] → 7 maps [1,1,320,320]
  (`1959`…`1965`, d0…d6, sigmoid applied); input RGB/255 with ImageNet mean/std; matte = the
  first map, min–max normalised.
- ISNet (DIS, isnet-general-use): `input_image` [1,3,1024,1024] → several side maps, the first
  `output_image` [1,1,1024,1024], sigmoid applied; input RGB/255 − 0.5 (std 1, DIS's own
  inference); matte = the first map, min–max normalised.
- BiRefNet: `input_image` [1,3,1024,1024] (or dynamic H, W) → one logit map (`output_image`,
  `output` in the dynamic export); input RGB/255 with ImageNet mean/std; matte = its sigmoid.
- MODNet: `input` [N,3,H,W] with H and W dynamic → `output` [N,1,H,W], a matte in [0,1];
  input (RGB − 127.5)/127.5; matte = the output as is.

The matte is the first output squeezed to H×W; a U2Net/ISNet/MODNet output with values outside
[0,1] is taken for logits and goes through a sigmoid first. It is resized back to the image
with bilinear interpolation. A model with a dynamic input size gets `size`×`size`.

Auto-detection (`guess_family`) reads only the signature:
- dynamic H/W: `input_image` (BiRefNet's exports keep that name) → BiRefNet, else MODNet;
- 320×320 or 7+ outputs → U2Net;
- `input_image` with one output → BiRefNet, with several → ISNet;
- 512×512 (FaceFusion's fixed MODNet export) → MODNet;
- anything else fixed → ISNet (its min–max is the safe guess for an unknown map).

What the signature cannot tell apart, so `images.matting_family` must name it: a re-export
that renames the tensors (FaceFusion's files all take `input`) or keeps only one output (a
single-output ISNet looks like BiRefNet; a 1024 U2Net with one output like ISNet); a MODNet
exported at a fixed size other than 512; a BiRefNet exported under other names (it is then
taken for ISNet or MODNet); and a dynamic model named like neither.
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
_BIREFNET_INPUT: Final = "input_image"
_U2NET_OUTPUTS: Final = 7

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
    """The family from the signature (input name and size, output count); see the module doc
    for the rules and for what they cannot tell apart."""
    model_input = session.get_inputs()[0]
    outputs = len(session.get_outputs())
    named_like_birefnet = model_input.name == _BIREFNET_INPUT
    fixed = _fixed_side(list(model_input.shape))
    if fixed is None:
        return "birefnet" if named_like_birefnet else "modnet"
    if fixed == (320, 320) or outputs >= _U2NET_OUTPUTS:
        return "u2net"
    if named_like_birefnet:
        return "birefnet" if outputs == 1 else "isnet"
    if fixed == (512, 512):
        return "modnet"
    return "isnet"


def normalise(rgb: npt.NDArray[np.float32], family: str) -> npt.NDArray[np.float32]:
    """The family's input normalisation of an H×W×3 RGB image in 0..255."""
    if family == "modnet":
        return (rgb - 127.5) / 127.5
    if family == "isnet":
        return rgb / 255.0 - 0.5
    return (rgb / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD


def _sigmoid(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (1.0 / (1.0 + np.exp(-np.clip(values, -60.0, 60.0)))).astype(np.float32)


def postprocess(values: npt.NDArray[np.float32], family: str) -> npt.NDArray[np.float32]:
    """The matte in [0,1] from the model's first output (H×W), as the family's reference does."""
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=60.0, neginf=-60.0)
    if family == "birefnet" or float(values.min()) < 0.0 or float(values.max()) > 1.0:
        values = _sigmoid(values)
    if family in _MIN_MAX:
        lo, hi = float(values.min()), float(values.max())
        values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return values


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
        normalised = normalise(small, self.family)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], dtype=np.float32)

    def matte(self, image_bgr: npt.NDArray[np.uint8]) -> Matte:
        height, width = image_bgr.shape[:2]
        blob = self._prepare(image_bgr).astype(self.dtype)
        first = self.session.run(None, {self.input_name: blob})[0]
        values = np.asarray(first, dtype=np.float32)
        values = values.reshape(values.shape[-2:]) if values.ndim >= 2 else values
        if values.ndim != 2:
            raise ValueError(f"matting output has shape {np.shape(first)}, expected an H×W map")
        matte = cv2.resize(
            postprocess(values, self.family), (width, height), interpolation=cv2.INTER_LINEAR
        )
        return np.clip(np.asarray(matte, dtype=np.float32), 0.0, 1.0).reshape(height, width)
