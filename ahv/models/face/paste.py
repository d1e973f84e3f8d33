"""Paste a swapped face crop back into the frame with insightface's soft mask, computed only
around the face.

insightface's `INSwapper.get(paste_back=True)` warps the crop, a white mask and a diff mask
to the FULL frame, then erodes, blurs and blends full-frame float images: for a 1280×886
photo that is most of the swap's time. The mask is zero farther than (erosion + blur) pixels
from the warped crop, so doing the same steps inside that window gives the same pixels (up
to the fixed-point rounding of warpAffine's offset start) and leaves every other pixel
untouched.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

# insightface's constants: mask values above this are snapped to full (255); erosion kernel
# is max(size // 10, 10), blur kernel 2·max(size // 20, 5) + 1, size = √(h·w) of the mask.
_MASK_SNAP = 20
_ERODE_DIV, _ERODE_MIN = 10, 10
_BLUR_DIV, _BLUR_MIN = 20, 5


def _kernels(mask_size: int) -> tuple[int, int]:
    """(erosion kernel side, Gaussian kernel side) for a mask of this size."""
    blur_half = max(mask_size // _BLUR_DIV, _BLUR_MIN)
    return max(mask_size // _ERODE_DIV, _ERODE_MIN), 2 * blur_half + 1


def paste_window(
    matrix: npt.NDArray[np.floating], crop_shape: tuple[int, int], frame_shape: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the frame window outside which paste_back changes nothing, or None
    when the crop lands entirely outside the frame."""
    crop_h, crop_w = crop_shape
    frame_h, frame_w = frame_shape
    inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    corners = np.array([[0, 0], [crop_w, 0], [0, crop_h], [crop_w, crop_h]], dtype=np.float64)
    frame_pts = corners @ inverse[:, :2].T + inverse[:, 2]
    # Bilinear sampling reaches one pixel past the crop's edge; 2 more is a safe bound.
    qx0, qy0 = np.floor(frame_pts.min(axis=0)) - 2
    qx1, qy1 = np.ceil(frame_pts.max(axis=0)) + 2
    # The erosion and the blur reach at most their kernel sizes for the largest mask that
    # fits this box; beyond that the mask is exactly 0 in insightface's full-frame version.
    erode, blur = _kernels(int(math.sqrt(max(0.0, (qx1 - qx0) * (qy1 - qy0)))))
    margin = max(erode, blur) + 2
    x0, y0 = max(0, int(qx0) - margin), max(0, int(qy0) - margin)
    x1, y1 = min(frame_w, int(qx1) + margin + 1), min(frame_h, int(qy1) + margin + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def paste_back(
    image_bgr: npt.NDArray[np.uint8],
    crop_bgr: npt.NDArray[np.uint8],
    matrix: npt.NDArray[np.floating],
    *,
    into: npt.NDArray[np.uint8] | None = None,
) -> npt.NDArray[np.uint8]:
    """Blend `crop_bgr` (the aligned crop that `matrix`, frame→crop, produced) back into the
    frame. Returns a new image, or writes into `into` (same shape as image_bgr, typically a
    copy of it with earlier faces already pasted) and returns it: the blend is against
    `into`'s current pixels, as insightface pastes faces one after another."""
    out = image_bgr.copy() if into is None else into
    if out.shape != image_bgr.shape:
        raise ValueError(f"into has shape {out.shape}, image {image_bgr.shape}")
    crop_h, crop_w = crop_bgr.shape[:2]
    window = paste_window(matrix, (crop_h, crop_w), (out.shape[0], out.shape[1]))
    if window is None:
        return out
    x0, y0, x1, y1 = window
    # Sampling the crop for window pixel (u, v) = frame pixel (u + x0, v + y0): the frame→crop
    # matrix with its translation moved by the window origin, used as the inverse map.
    local = np.asarray(matrix, dtype=np.float64).copy()
    local[:, 2] += local[:, :2] @ np.array([x0, y0], dtype=np.float64)
    size = (x1 - x0, y1 - y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    fake = cv2.warpAffine(crop_bgr, local, size, flags=flags, borderValue=0.0)
    white = np.full((crop_h, crop_w), 255, dtype=np.float32)
    mask = cv2.warpAffine(white, local, size, flags=flags, borderValue=0.0)
    mask[mask > _MASK_SNAP] = 255
    full = mask == 255
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    if rows.size == 0:
        return out  # only a sliver of the crop's border is in the frame
    mask_size = int(np.sqrt((rows[-1] - rows[0]) * (cols[-1] - cols[0])))
    erode, blur = _kernels(mask_size)
    mask = cv2.erode(mask, np.ones((erode, erode), dtype=np.uint8), iterations=1)
    mask = cv2.GaussianBlur(mask, (blur, blur), 0)
    # Blend only where alpha > 0: elsewhere insightface's expression gives back the frame's
    # own pixels exactly, so skipping them changes nothing and saves most of the float work.
    live = mask > 0
    rows, cols = np.flatnonzero(live.any(axis=1)), np.flatnonzero(live.any(axis=0))
    if rows.size == 0:
        return out
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    alpha = (mask[r0:r1, c0:c1] / 255)[:, :, None]
    region = out[y0 + r0 : y0 + r1, x0 + c0 : x0 + c1]
    # The same float32 expression and truncation as insightface's fake_merged.
    merged = alpha * fake[r0:r1, c0:c1] + (1 - alpha) * region.astype(np.float32)
    region[...] = merged.astype(np.uint8)
    return out
