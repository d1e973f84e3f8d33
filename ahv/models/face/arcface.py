"""ArcFace identity embeddings (InsightFace w600k_r50 and relatives) on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnxruntime

from ahv.models.face.align import similarity_matrix64, warp_crop
from ahv.models.face.types import Face

EMBEDDING_DIM = 512


def batch_is_dynamic(session: onnxruntime.InferenceSession) -> bool:
    """Whether the first input's batch axis is symbolic (or -1), so N crops can go through
    the model in one run instead of N."""
    shape = session.get_inputs()[0].shape
    return not shape or not isinstance(shape[0], int) or shape[0] <= 0


def l2_normalise(rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: npt.NDArray[np.float32] = (rows / np.maximum(norms, 1e-12)).astype(np.float32)
    return unit


class ArcFace:
    """One L2-normalised embedding per face; compare two with a dot product (cosine)."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self.session = session
        model_input = session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = session.get_outputs()[0].name
        side = model_input.shape[2] if len(model_input.shape) == 4 else None
        # The real models are 112×112; a symbolic side means the default.
        self.size = side if isinstance(side, int) and side > 0 else 112
        self.batched = batch_is_dynamic(session)

    def crops(
        self, image_bgr: npt.NDArray[np.uint8], faces: list[Face]
    ) -> list[npt.NDArray[np.uint8]]:
        """The aligned size×size crops the model sees (insightface's norm_crop)."""
        return [
            warp_crop(image_bgr, similarity_matrix64(face.landmarks, self.size), self.size)
            for face in faces
        ]

    def embed(self, image_bgr: npt.NDArray[np.uint8], faces: list[Face]) -> npt.NDArray[np.float32]:
        """(N, 512) unit rows, row i for faces[i]."""
        return self.embed_crops(self.crops(image_bgr, faces))

    def embed_crops(self, crops: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """(N, 512) unit rows for already aligned BGR crops."""
        if not crops:
            return np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        # BGR→RGB, (x − 127.5) / 127.5, NCHW.
        batch = np.stack(crops)[:, :, :, ::-1].transpose(0, 3, 1, 2).astype(np.float32)
        batch = (batch - 127.5) / 127.5
        if self.batched:
            raw = self.session.run([self.output_name], {self.input_name: batch})[0]
        else:  # fixed batch of one: a run per crop
            raw = np.concatenate(
                [self.session.run([self.output_name], {self.input_name: b[None]})[0] for b in batch]
            )
        return l2_normalise(np.asarray(raw, dtype=np.float32).reshape(len(crops), -1))
