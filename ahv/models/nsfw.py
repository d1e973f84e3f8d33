"""The content-filter hook: an ONNX image classifier named in ahv.toml (`faceswap.nsfw_model`).

The model takes N×3×H×W RGB floats in [0, 1] (H×W from the model, 224 when dynamic) and
returns N×K class scores; scores that are not probabilities already are softmaxed. An image
whose probability for `nsfw_class` reaches `nsfw_threshold` is refused with `nsfw_blocked`,
which ends the job as `rejected`.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from ahv.errors import AhvError

_DEFAULT_SIDE = 224


class NsfwFilter:
    def __init__(self, session: Any, *, threshold: float, class_index: int) -> None:
        self._session = session
        self._input = session.get_inputs()[0]
        shape = self._input.shape
        height, width = shape[2], shape[3]
        self._size = (
            width if isinstance(width, int) else _DEFAULT_SIDE,
            height if isinstance(height, int) else _DEFAULT_SIDE,
        )
        self._threshold = threshold
        self._class_index = class_index

    def probability(self, image_bgr: npt.NDArray[np.uint8]) -> float:
        resized = cv2.resize(image_bgr[..., :3], self._size, interpolation=cv2.INTER_AREA)
        blob = resized[..., ::-1].astype(np.float32).transpose(2, 0, 1)[None] / 255.0
        (scores,) = self._session.run(None, {self._input.name: blob})[:1]
        row = np.asarray(scores, dtype=np.float64).reshape(-1)
        if row.min() < 0 or abs(row.sum() - 1.0) > 1e-3:
            row = np.exp(row - row.max())
            row /= row.sum()
        if self._class_index >= row.size:
            raise AhvError(
                "model_unavailable",
                f"nsfw model has {row.size} classes; faceswap.nsfw_class is {self._class_index}",
            )
        return float(row[self._class_index])

    def check(self, image_bgr: npt.NDArray[np.uint8], field: str) -> None:
        probability = self.probability(image_bgr)
        if probability >= self._threshold:
            raise AhvError(
                "nsfw_blocked",
                f"{field}: refused by the content filter (score {probability:.2f})",
            )
