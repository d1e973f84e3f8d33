"""ArcFace 5-point alignment: the similarity transform onto insightface's template, and the
crop it defines.

`similarity_matrix` reproduces insightface's `face_align.estimate_norm` (skimage's Umeyama
estimate) in plain numpy, so ahv needs neither insightface nor scikit-image at run time.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

# insightface's arcface_dst: where the 5 points (left eye, right eye, nose, left mouth,
# right mouth) land in a 112×112 crop. Kept in float32 exactly as insightface stores it, so
# the scaled template matches theirs bit for bit.
ARCFACE_TEMPLATE: npt.NDArray[np.float32] = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def template(size: int) -> npt.NDArray[np.float32]:
    """The template for a size×size crop, as estimate_norm builds it: multiples of 112 scale
    it; other sizes (inswapper's 128) scale by size/128 and shift x right by 8·ratio, which
    centres the 112-wide template inside the wider crop."""
    if size % 112 == 0:
        ratio, shift_x = size / 112.0, 0.0
    elif size % 128 == 0:
        ratio = size / 128.0
        shift_x = 8.0 * ratio
    else:
        raise ValueError(f"alignment size must be a multiple of 112 or 128, got {size}")
    dst = ARCFACE_TEMPLATE * ratio  # stays float32, like insightface's
    dst[:, 0] += shift_x
    return dst


def umeyama(
    src: npt.NDArray[np.floating], dst: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst, as
    a 3×3 float64 homogeneous matrix: Umeyama 1991, the same steps as skimage's `_umeyama`
    with scale estimation. NaN when the points are degenerate.

    Like skimage, the means, covariance and SVD keep the inputs' dtype (float32 for SCRFD
    landmarks and the template): computing them in float64 would be more precise but differ
    from insightface's matrices by up to ~1e-4, and so shift every crop slightly."""
    src_a, dst_a = np.asarray(src), np.asarray(dst)
    num, dim = src_a.shape
    src_mean, dst_mean = src_a.mean(axis=0), dst_a.mean(axis=0)
    src_demean, dst_demean = src_a - src_mean, dst_a - dst_mean
    cov = dst_demean.T @ src_demean / num
    # A reflection in the covariance is undone by flipping the last singular direction.
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[dim - 1] = -1.0
    out = np.eye(dim + 1)
    u, s, v = np.linalg.svd(cov)
    rank = int(np.count_nonzero(s > s.max() * max(cov.shape) * np.finfo(float).eps))
    if rank == 0:
        return np.full((dim + 1, dim + 1), np.nan)
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(v) <= 0:
        flip = d.copy()
        flip[dim - 1] = -1.0
        out[:dim, :dim] = u @ np.diag(flip) @ v
    elif rank == dim - 1:
        out[:dim, :dim] = u @ v
    else:
        out[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d)
    out[:dim, dim] = dst_mean - scale * (out[:dim, :dim] @ src_mean)
    out[:dim, :dim] *= scale
    return out


def similarity_matrix64(landmarks: npt.NDArray[np.floating], size: int) -> npt.NDArray[np.float64]:
    """The 2×3 frame→crop transform in float64 (what the warps use internally)."""
    points = np.asarray(landmarks, dtype=np.float32)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must be 5×2, got {points.shape}")
    return umeyama(points, template(size))[:2, :]


def similarity_matrix(landmarks: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
    """The 2×3 matrix mapping image pixels onto the size×size aligned crop (insightface's
    `estimate_norm(landmarks, size)`)."""
    return similarity_matrix64(landmarks, size).astype(np.float32)


def warp_crop(
    image_bgr: npt.NDArray[np.uint8], matrix: npt.NDArray[np.floating], size: int
) -> npt.NDArray[np.uint8]:
    """The aligned size×size crop: bilinear warpAffine with a black (0) border, as insightface's
    `norm_crop`."""
    crop = cv2.warpAffine(
        image_bgr, np.asarray(matrix, dtype=np.float64), (size, size), borderValue=0.0
    )
    return np.asarray(crop, dtype=np.uint8)
