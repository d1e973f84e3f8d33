"""Face models on ONNX Runtime: SCRFD and MTCNN detection, ArcFace embeddings, inswapper
swapping with a windowed soft-mask paste-back. numpy/cv2/onnxruntime only (insightface is the
reference in tests, never imported here)."""

from __future__ import annotations

from ahv.models.face.align import similarity_matrix, warp_crop
from ahv.models.face.arcface import ArcFace
from ahv.models.face.inswapper import InSwapper, load_emap
from ahv.models.face.mtcnn import MtcnnDetector, build_mtcnn_models
from ahv.models.face.paste import paste_back
from ahv.models.face.scrfd import ScrfdDetector
from ahv.models.face.types import Face, largest_face, order_faces

__all__ = [
    "ArcFace",
    "Face",
    "InSwapper",
    "MtcnnDetector",
    "ScrfdDetector",
    "build_mtcnn_models",
    "largest_face",
    "load_emap",
    "order_faces",
    "paste_back",
    "similarity_matrix",
    "warp_crop",
]
