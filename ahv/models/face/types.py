"""The detected-face record shared by the detector, the embedder and the swapper."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt


class Face(NamedTuple):
    """One detection, in pixel coordinates of the image it was found in."""

    box: npt.NDArray[np.float32]  # (4,): x1, y1, x2, y2
    score: float
    # (5, 2): left eye, right eye, nose, left mouth corner, right mouth corner (image left/
    # right as SCRFD reports them); the ArcFace alignment template uses the same order.
    landmarks: npt.NDArray[np.float32]


def _centre(face: Face) -> tuple[float, float]:
    x1, y1, x2, y2 = (float(v) for v in face.box[:4])
    return (x1 + x2) / 2.0, (y1 + y2) / 2.0


def order_faces(faces: list[Face]) -> list[Face]:
    """The documented stable order: left to right by box centre x, ties by centre y (top
    first), then by score (highest first). Callers that say "face 0, face 1" mean this order,
    which does not depend on detector scores the way insightface's score order does."""

    def key(face: Face) -> tuple[float, float, float]:
        cx, cy = _centre(face)
        return cx, cy, -face.score

    return sorted(faces, key=key)


def box_area(face: Face) -> float:
    x1, y1, x2, y2 = (float(v) for v in face.box[:4])
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def largest_face(faces: list[Face]) -> Face:
    """The face with the largest box area (the first in the list wins ties)."""
    if not faces:
        raise ValueError("largest_face() of no faces")
    return max(faces, key=box_area)
