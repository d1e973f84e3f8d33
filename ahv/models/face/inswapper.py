"""inswapper_128 face swapping on ONNX Runtime: every target face in one batched run, then
the soft-mask paste-back of paste.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime
from onnx import numpy_helper

from ahv.errors import AhvError
from ahv.models.face.align import similarity_matrix64, warp_crop
from ahv.models.face.arcface import batch_is_dynamic, l2_normalise
from ahv.models.face.paste import paste_back
from ahv.models.face.types import Face

CROP = 128


def _emap_cache(model_path: Path) -> Path:
    # Named after the model file's size and mtime: a replaced model never meets an old cache,
    # even when it was copied with its old timestamp kept (cp -p, rsync -t, tar).
    stat = model_path.stat()
    return model_path.with_name(f"{model_path.name}.emap-{stat.st_size}-{stat.st_mtime_ns}.npy")


def load_emap(model_path: Path) -> npt.NDArray[np.float32]:
    """inswapper's identity map: the graph's LAST initializer (512×512), which the graph never
    uses; the source embedding is projected through it before the model runs. Parsing a
    554 MB ONNX file takes seconds, so the matrix is cached as `<model>.emap.npy` beside it
    and reused while that file is newer than the model."""
    model_path = Path(model_path)
    try:
        cache = _emap_cache(model_path)
    except OSError as exc:
        raise AhvError("model_unavailable", f"cannot read {model_path}: {exc}", status=503) from exc
    try:
        emap = np.load(cache, allow_pickle=False)
        if emap.ndim == 2 and emap.shape[0] == emap.shape[1]:
            return np.asarray(emap, dtype=np.float32)
    except (OSError, ValueError, EOFError):
        pass  # no cache yet, or unreadable: rebuild it
    try:
        graph = onnx.load(str(model_path)).graph
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a bad file
        raise AhvError("model_unavailable", f"cannot read {model_path}: {exc}", status=503) from exc
    if not graph.initializer:
        raise AhvError("model_unavailable", f"{model_path} has no initializers", status=503)
    emap = np.asarray(numpy_helper.to_array(graph.initializer[-1]), dtype=np.float32)
    if emap.ndim != 2 or emap.shape[0] != emap.shape[1]:
        raise AhvError(
            "model_unavailable",
            f"{model_path}: last initializer is {emap.shape}, not the square emap of inswapper",
            status=503,
        )
    _write_atomic(cache, emap)
    return emap


def _write_atomic(path: Path, array: npt.NDArray[np.float32]) -> None:
    # Temp file in the same directory + rename: a concurrent reader sees the old cache or the
    # whole new one, never half a file. A read-only models dir just means no cache.
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        for stale in path.parent.glob(path.name.split(".emap-")[0] + ".emap-*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


class InSwapper:
    def __init__(
        self, session: onnxruntime.InferenceSession, emap: npt.NDArray[np.float32]
    ) -> None:
        self.session = session
        self.emap = np.asarray(emap, dtype=np.float32)
        names = [i.name for i in session.get_inputs()]
        if "target" not in names or "source" not in names:
            raise AhvError(
                "model_unavailable",
                f"not an inswapper model: inputs {names}, expected 'target' and 'source'",
                status=503,
            )
        self.output_name = session.get_outputs()[0].name
        self.batched = batch_is_dynamic(session)

    def latents(self, source_embeddings: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """normalise(normalise(embedding) @ emap), row by row."""
        dim = self.emap.shape[0]
        rows = l2_normalise(np.asarray(source_embeddings, dtype=np.float32).reshape(-1, dim))
        return l2_normalise(rows @ self.emap)

    def swap_crops(
        self, crops: list[npt.NDArray[np.uint8]], latents: npt.NDArray[np.float32]
    ) -> list[npt.NDArray[np.uint8]]:
        """Swapped 128×128 BGR crops for aligned BGR crops and their latents."""
        # RGB, x / 255, NCHW in; RGB [0, 1] out.
        target = np.stack(crops)[:, :, :, ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        if self.batched:
            feeds = {"target": target, "source": latents}
            pred = self.session.run([self.output_name], feeds)[0]
        else:
            pred = np.concatenate(
                [
                    self.session.run([self.output_name], {"target": t[None], "source": s[None]})[0]
                    for t, s in zip(target, latents, strict=True)
                ]
            )
        rgb = np.clip(255 * np.asarray(pred).transpose(0, 2, 3, 1), 0, 255).astype(np.uint8)
        return [np.ascontiguousarray(face[:, :, ::-1]) for face in rgb]

    def swap(
        self,
        image_bgr: npt.NDArray[np.uint8],
        targets: list[Face],
        source_embeddings: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.uint8]:
        """A copy of the image with targets[i] given the identity of source_embeddings[i] (one
        row for all targets is also accepted). All crops are cut from the input image, so a
        face's swap does not depend on its neighbours having been swapped first."""
        out = image_bgr.copy()
        if not targets:
            return out
        sources = np.asarray(source_embeddings, dtype=np.float32).reshape(-1, self.emap.shape[0])
        if sources.shape[0] == 1 and len(targets) > 1:
            sources = np.repeat(sources, len(targets), axis=0)
        if sources.shape[0] != len(targets):
            raise ValueError(f"{len(targets)} target faces but {sources.shape[0]} embeddings")
        return self.swap_many([image_bgr], [targets], [sources])[0]

    def swap_many(
        self,
        images: list[npt.NDArray[np.uint8]],
        targets: list[list[Face]],
        source_embeddings: list[npt.NDArray[np.float32]],
    ) -> list[npt.NDArray[np.uint8]]:
        """`swap` for several images (video frames) in ONE inswapper run over all their faces:
        targets[i][j] of images[i] gets the identity of source_embeddings[i][j]."""
        outs = [image.copy() for image in images]
        jobs = [
            (index, face, row)
            for index, (faces, rows) in enumerate(zip(targets, source_embeddings, strict=True))
            for face, row in zip(faces, rows, strict=True)
        ]
        if not jobs:
            return outs
        matrices = [similarity_matrix64(face.landmarks, CROP) for _, face, _ in jobs]
        crops = [warp_crop(images[i], m, CROP) for (i, _, _), m in zip(jobs, matrices, strict=True)]
        swapped = self.swap_crops(crops, self.latents(np.stack([row for _, _, row in jobs])))
        for (index, _, _), face, matrix in zip(jobs, swapped, matrices, strict=True):
            paste_back(images[index], face, matrix, into=outs[index])
        return outs
