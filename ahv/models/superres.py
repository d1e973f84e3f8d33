"""Super-resolution (Real-ESRGAN family) run in overlapping tiles, and face restore
(GFPGAN/CodeFormer family) on aligned 512×512 crops.

Tiling. Each axis is cut into cores of `tile − 2·overlap` pixels; each core is run inside a
window of `tile` pixels (the whole axis when it is shorter) that reaches `overlap` pixels past
the core on both sides, shifted inward at the image's edges. Only the core of each window's
output is kept, so every output pixel comes from a window where it had at least `overlap`
pixels of context (or the image edge): a model whose receptive field fits in the overlap
gives the same pixels tiled as untiled, and no seams. All windows have the same size, so they
run `batch` at a time when the model takes a dynamic batch. Memory is bounded by the tile
size and batch, whatever the image size (plus the output image itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from ahv.models.face.align import umeyama
from ahv.models.face.paste import paste_back
from ahv.models.face.types import Face

Image = npt.NDArray[np.uint8]
# Windows are padded to a multiple of this: Real-ESRGAN x2/x1 unshuffle pixels by 2/4.
_MULTIPLE: Final = 4
# GFPGAN/CodeFormer's FFHQ 5-point template for a 512×512 crop (facexlib's face_template).
FFHQ_512: Final = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)
RESTORE_SIZE: Final = 512


def _is_fixed(value: Any) -> bool:
    return isinstance(value, int) and value > 0


def _windows(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(window start, core start, core end) along one axis; every window is min(tile,
    length) long."""
    window = min(tile, length)
    if window == length:
        return [(0, 0, length)]
    core = max(1, tile - 2 * overlap)
    out = []
    for start in range(0, length, core):
        end = min(length, start + core)
        out.append((min(max(0, start - overlap), length - window), start, end))
    return out


class SuperResolution:
    """`upscale(image_bgr)` → the image × `scale` (BGR or BGRA uint8; alpha is resized with
    Lanczos). `scale` is read from the model's shapes or learned from a probe run."""

    def __init__(self, session: Any, *, tile: int = 256, overlap: int = 16, batch: int = 4) -> None:
        if tile < 8 or overlap < 0 or batch < 1:
            raise ValueError(f"bad tiling: tile={tile} overlap={overlap} batch={batch}")
        self.session = session
        model_input = session.get_inputs()[0]
        shape = list(model_input.shape)
        if len(shape) != 4:
            raise ValueError(f"a super-resolution model takes NCHW, its input is {shape}")
        self.input_name: str = model_input.name
        self.dtype = np.float16 if "float16" in str(model_input.type) else np.float32
        self.fixed: tuple[int, int] | None = (
            (shape[2], shape[3]) if _is_fixed(shape[2]) and _is_fixed(shape[3]) else None
        )
        self.batch = 1 if _is_fixed(shape[0]) else batch
        tile = max(_MULTIPLE, tile - tile % _MULTIPLE)
        self.tile = (tile, tile) if self.fixed is None else self.fixed
        self.overlap = min(overlap, (min(self.tile) - 1) // 2)
        self.scale = self._detect_scale(shape, list(session.get_outputs()[0].shape))

    def _detect_scale(self, in_shape: list[Any], out_shape: list[Any]) -> int:
        if self.fixed is not None and len(out_shape) == 4 and _is_fixed(out_shape[2]):
            ratio = out_shape[2] / in_shape[2]
        else:
            height, width = self.fixed or (16, 16)
            probe = np.zeros((1, 3, height, width), dtype=self.dtype)
            out = self.session.run(None, {self.input_name: probe})[0]
            ratio = out.shape[2] / height
        if ratio < 1 or ratio != int(ratio):
            raise ValueError(f"the model's scale is {ratio}, not a whole number ≥ 1")
        return int(ratio)

    def _run(self, tiles: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        blob = np.ascontiguousarray(np.stack(tiles), dtype=self.dtype)
        out = self.session.run(None, {self.input_name: blob})[0]
        return np.asarray(out, dtype=np.float32)

    def upscale(self, image_bgr: Image, progress: Callable[[float], None] | None = None) -> Image:
        """`progress(fraction)` is called after each batch (it may raise to stop)."""
        height, width = image_bgr.shape[:2]
        colour = np.ascontiguousarray(image_bgr[..., :3])
        alpha = image_bgr[..., 3] if image_bgr.ndim == 3 and image_bgr.shape[2] == 4 else None
        # Pad (edge pixels repeated) to at least one window and a multiple of _MULTIPLE.
        tile_h, tile_w = self.tile
        pad_h = max(tile_h if self.fixed else 0, -(-height // _MULTIPLE) * _MULTIPLE)
        pad_w = max(tile_w if self.fixed else 0, -(-width // _MULTIPLE) * _MULTIPLE)
        padded = cv2.copyMakeBorder(
            colour, 0, pad_h - height, 0, pad_w - width, cv2.BORDER_REPLICATE
        )
        rgb = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        planar = np.ascontiguousarray(rgb.transpose(2, 0, 1))
        s = self.scale
        out = np.empty((pad_h * s, pad_w * s, 3), dtype=np.uint8)
        rows = _windows(pad_h, tile_h, self.overlap)
        cols = _windows(pad_w, tile_w, self.overlap)
        win_h, win_w = min(tile_h, pad_h), min(tile_w, pad_w)
        jobs = [(r, c) for r in rows for c in cols]
        for first in range(0, len(jobs), self.batch):
            chunk = jobs[first : first + self.batch]
            tiles = [planar[:, r[0] : r[0] + win_h, c[0] : c[0] + win_w] for r, c in chunk]
            result = self._run(tiles)
            for (row, col), tile_out in zip(chunk, result, strict=True):
                (wy, y0, y1), (wx, x0, x1) = row, col
                core = tile_out[:, (y0 - wy) * s : (y1 - wy) * s, (x0 - wx) * s : (x1 - wx) * s]
                pixels = np.clip(np.rint(core.transpose(1, 2, 0) * 255.0), 0, 255)
                out[y0 * s : y1 * s, x0 * s : x1 * s] = pixels[..., ::-1].astype(np.uint8)
            if progress is not None:
                progress(min(1.0, (first + len(chunk)) / len(jobs)))
        result_bgr = np.ascontiguousarray(out[: height * s, : width * s])
        if alpha is None:
            return result_bgr
        big_alpha = cv2.resize(alpha, (width * s, height * s), interpolation=cv2.INTER_LANCZOS4)
        return np.ascontiguousarray(np.dstack([result_bgr, big_alpha]), dtype=np.uint8)


def restore_matrix(landmarks: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """The 2×3 frame → 512 crop similarity onto the FFHQ template GFPGAN/CodeFormer use."""
    points = np.asarray(landmarks, dtype=np.float32)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must be 5×2, got {points.shape}")
    return umeyama(points, FFHQ_512)[:2, :]


class FaceRestorer:
    """`restore(image_bgr, faces, fidelity)`: each face aligned to 512×512, run through the
    model (RGB in [-1,1] NCHW, out the same), blended with its own crop by `fidelity`
    (0 = original, 1 = restored) and pasted back with the soft face mask.

    GFPGAN-family models take the crop alone. CodeFormer takes a second input, its fidelity
    weight `w` (`weight` in the common ONNX export, a double of shape [1]): as CodeFormer
    defines it, w = 0 gives the most restored face and w = 1 the one most faithful to the
    input, so it is fed `w = 1 − fidelity`, and `fidelity` means the same for both families
    (0 = unchanged … 1 = fully restored). The result is then blended by `fidelity` as for
    GFPGAN."""

    def __init__(self, session: Any) -> None:
        self.session = session
        inputs = session.get_inputs()
        self.input_name: str = inputs[0].name
        self.dtype = np.float16 if "float16" in str(inputs[0].type) else np.float32
        # Any further input is CodeFormer's w: (name, numpy dtype, shape as the model wants).
        self.weights: list[tuple[str, type[np.generic], tuple[int, ...]]] = [
            (
                i.name,
                np.float64 if "double" in str(i.type) else np.float32,
                tuple(d if isinstance(d, int) and d > 0 else 1 for d in list(i.shape or [])),
            )
            for i in inputs[1:]
        ]

    @property
    def takes_weight(self) -> bool:
        """Whether the model takes CodeFormer's fidelity weight w."""
        return bool(self.weights)

    def weight_feeds(self, fidelity: float) -> dict[str, npt.NDArray[Any]]:
        """CodeFormer's w = 1 − fidelity, in each weight input's dtype and shape."""
        return {
            name: np.full(shape, 1.0 - fidelity, dtype=dtype) for name, dtype, shape in self.weights
        }

    def restore_crop(self, crop_bgr: Image, fidelity: float = 1.0) -> Image:
        rgb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
        blob = np.ascontiguousarray(rgb.transpose(2, 0, 1)[None], dtype=self.dtype)
        feeds = {self.input_name: blob, **self.weight_feeds(fidelity)}
        out = self.session.run(None, feeds)[0]
        values = np.asarray(out, dtype=np.float32)[0].transpose(1, 2, 0)
        restored = np.clip(np.rint((values + 1.0) * 127.5), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(cv2.cvtColor(restored, cv2.COLOR_RGB2BGR))

    def restore(self, image_bgr: Image, faces: Sequence[Face], fidelity: float) -> Image:
        if not 0.0 <= fidelity <= 1.0:
            raise ValueError(f"fidelity must be in [0, 1], got {fidelity}")
        colour = np.ascontiguousarray(image_bgr[..., :3])
        out = colour.copy()
        if fidelity == 0.0:
            return image_bgr.copy()
        for face in faces:
            matrix = restore_matrix(face.landmarks)
            if not np.all(np.isfinite(matrix)):
                continue
            crop = np.asarray(
                cv2.warpAffine(colour, matrix, (RESTORE_SIZE, RESTORE_SIZE), borderValue=0.0),
                dtype=np.uint8,
            )
            restored = self.restore_crop(crop, fidelity)
            if fidelity < 1.0:
                restored = np.asarray(
                    cv2.addWeighted(restored, fidelity, crop, 1.0 - fidelity, 0.0),
                    dtype=np.uint8,
                )
            paste_back(colour, restored, matrix, into=out)
        if image_bgr.ndim == 3 and image_bgr.shape[2] == 4:
            return np.ascontiguousarray(np.dstack([out, image_bgr[..., 3]]), dtype=np.uint8)
        return out
