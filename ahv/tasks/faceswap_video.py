"""`faceswap_video`: the face swap of every frame of a video, audio kept.

Frames stream through ahv.video.transcode (decode, models and encode in threads with bounded
queues), in batches of `video.batch_frames`.

Which faces are swapped, frame after frame (the documented rule):
- one source and no `target_faces_index`: every face of every frame gets the source face
  (the `max_faces` largest of each frame when set);
- otherwise the chosen target faces are numbered on the first frame where faces appear (left
  to right, as for images) and followed by identity: in each later frame, a face is taken for
  chosen face k when its ArcFace embedding is the closest to face k's look on that first frame
  (one-to-one, most similar pairs first) with cosine similarity of at least
  `video.track_similarity`. Other faces pass through unchanged.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from ahv.config import Config
from ahv.errors import AhvError
from ahv.imageops import sharpen
from ahv.imaging import decode_image
from ahv.models.face import ArcFace, Face
from ahv.tasks.base import TaskContext, TaskOutput, TaskSpec
from ahv.tasks.face_plan import FaceSwapPayload, plan_swaps, validate_payload
from ahv.tasks.faceswap import (
    FaceModels,
    big_enough,
    load_face_models,
    needed_models,
    shrink_to_max_side,
)
from ahv.video import probe_video, transcode

Image = npt.NDArray[np.uint8]
Embeddings = npt.NDArray[np.float32]


class FaceSwapVideoPayload(FaceSwapPayload, forbid_unknown_fields=True, kw_only=True):
    upscale: Literal[0, 1] = 0
    start_s: Annotated[float, msgspec.Meta(ge=0)] | None = None
    end_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


def _validate(payload: FaceSwapVideoPayload, config: Config) -> None:
    validate_payload("faceswap_video", payload, config)
    if payload.upscale:
        raise AhvError("invalid_payload", "payload.upscale: not supported for video", status=422)
    if payload.start_s is not None and payload.end_s is not None:
        if payload.end_s <= payload.start_s:
            raise AhvError("invalid_payload", "payload.end_s: must be after start_s", status=422)


class FaceTracker:
    """Finds, frame after frame, the target faces to swap and the source embedding of each."""

    def __init__(
        self, payload: FaceSwapVideoPayload, arcface: ArcFace, sources: Embeddings, *,
        source_areas: list[list[float]], similarity: float,
    ) -> None:  # fmt: skip
        self._payload = payload
        self._arcface = arcface
        self._source_areas = source_areas
        self._sources = sources  # one row per source image: its chosen face's embedding
        self._similarity = similarity
        self._every_face = len(source_areas) == 1 and payload.target_faces_index is None
        self.references: Embeddings | None = None  # chosen target faces, first frame with faces
        self._rows: list[int] = []  # source row for each reference
        self.frames_with_faces = 0
        self.frames_without_faces = 0

    def targets(self, frame: Image, faces: list[Face]) -> list[tuple[Face, int]]:
        """(face to swap, source row) for one frame."""
        if not faces:
            self.frames_without_faces += 1
            return []
        self.frames_with_faces += 1
        if self._every_face:
            chosen = _largest(faces, self._payload.max_faces)
            return [(face, 0) for face in chosen]
        if self.references is None:
            self._choose(frame, faces)
        assert self.references is not None
        found = self._arcface.embed(frame, faces)
        similarity = found @ self.references.T  # rows: faces here; columns: chosen faces
        pairs = sorted(np.ndindex(similarity.shape), key=lambda ij: -similarity[ij])
        taken_faces: set[int] = set()
        taken_refs: set[int] = set()
        result: list[tuple[Face, int]] = []
        for face_no, ref in pairs:
            if similarity[face_no, ref] < self._similarity:
                break
            if face_no in taken_faces or ref in taken_refs:
                continue
            taken_faces.add(face_no)
            taken_refs.add(ref)
            result.append((faces[face_no], self._rows[ref]))
        return result

    def _choose(self, frame: Image, faces: list[Face]) -> None:
        swaps = plan_swaps(
            self._payload,
            [_area(f) for f in faces],
            self._source_areas,
            multi=len(self._source_areas) > 1,
        )
        chosen = [faces[s.target_face] for s in swaps]
        self.references = self._arcface.embed(frame, chosen)
        self._rows = [s.source for s in swaps]


def _area(face: Face) -> float:
    return float((face.box[2] - face.box[0]) * (face.box[3] - face.box[1]))


def _largest(faces: list[Face], count: int) -> list[Face]:
    if not count or len(faces) <= count:
        return faces
    keep = sorted(range(len(faces)), key=lambda i: -_area(faces[i]))[:count]
    return [faces[i] for i in sorted(keep)]


def _source_embeddings(
    ctx: TaskContext, models: FaceModels, payload: FaceSwapVideoPayload, data: list[bytes]
) -> tuple[Embeddings, list[list[float]]]:
    limits = ctx.config.limits
    rows: list[Embeddings] = []
    areas: list[list[float]] = []
    for (field, _), raw in zip(payload.sources(), data, strict=True):
        image = decode_image(
            raw, max_pixels=limits.max_input_pixels, max_side=limits.max_side, field=field
        ).pixels[..., :3]
        image = np.ascontiguousarray(image)
        if models.nsfw is not None:
            models.nsfw.check(image, field)
        faces = models.detector.detect(image)
        if not faces:
            raise AhvError("no_face_detected", f"{field}: no face detected")
        areas.append([_area(f) for f in faces])
        index = len(rows)
        wanted = payload.swap_faces_index[index] if payload.swap_faces_index else None
        if wanted is None:
            wanted = max(range(len(faces)), key=lambda i: _area(faces[i]))
        if wanted >= len(faces):
            raise AhvError(
                "face_index_out_of_range",
                f"payload.swap_faces_index[{index}]: face {wanted} requested, {len(faces)} "
                f"faces detected in {field} (valid 0–{len(faces) - 1})",
            )
        rows.append(models.arcface.embed(image, [faces[wanted]])[0])
    return np.stack(rows).astype(np.float32), areas


def _swap_video(
    ctx: TaskContext, payload: FaceSwapVideoPayload, src: Path, source_data: list[bytes]
) -> TaskOutput:
    limits = ctx.config.video
    models = load_face_models(ctx)
    sources, source_areas = _source_embeddings(ctx, models, payload, source_data)
    tracker = FaceTracker(
        payload,
        models.arcface,
        sources,
        source_areas=source_areas,
        similarity=limits.track_similarity,
    )
    info = probe_video(
        src,
        max_duration_s=limits.max_duration_s,
        max_frames=limits.max_frames,
        max_pixels=limits.max_pixels,
        field="target_url",
    )
    begin_s = payload.start_s or 0.0
    stop_s = min(payload.end_s or info.duration_s, info.duration_s)
    if begin_s >= info.duration_s:
        raise AhvError(
            "invalid_payload",
            f"payload.start_s: {begin_s:g} s is past the end of the video "
            f"({info.duration_s:.2f} s)",
        )
    expected_frames = max(1, round(info.fps * (stop_s - begin_s)))
    ctx.progress(20)
    min_px = ctx.config.faceswap.min_face_px
    screened = models.nsfw is None

    def process(frames: list[Image]) -> list[Image]:
        nonlocal screened
        frames = [shrink_to_max_side(frame, payload.max_side) for frame in frames]
        if not screened and models.nsfw is not None:
            models.nsfw.check(frames[0], "target_url")  # the content filter sees the video too
            screened = True
        # Detection and tracking frame by frame; then every chosen face of the whole batch
        # goes through inswapper in one run.
        found = [
            tracker.targets(frame, big_enough(models.detector.detect(frame), min_px))
            for frame in frames
        ]
        out = models.swapper.swap_many(
            frames,
            [[face for face, _ in targets] for targets in found],
            [sources[[row for _, row in targets]] for targets in found],
        )
        if payload.sharpen > 0:  # frames without a swapped face pass through unchanged
            out = [
                sharpen(frame, payload.sharpen) if targets else frame
                for frame, targets in zip(out, found, strict=True)
            ]
        return out

    def on_frames(done: int) -> None:
        ctx.progress(20 + int(75 * min(1.0, done / expected_frames)))

    name, part = ctx.new_output("mp4")
    result = transcode(
        src,
        part,
        process,
        batch_size=limits.batch_frames,
        start_s=payload.start_s,
        end_s=payload.end_s,
        checkpoint=ctx.checkpoint,
        on_frames=on_frames,
    )
    if tracker.frames_with_faces == 0:
        raise AhvError("no_face_detected", "target_url: no face in any frame of the video")
    ctx.publish_output(name)
    return TaskOutput(
        filename=name,
        meta={
            "width": result.width,
            "height": result.height,
            "fps": round(result.fps, 3),
            "frames": result.frames,
            "duration_s": round(result.duration_s, 3),
            "has_audio": result.has_audio,
            "audio": result.audio,
            "frames_without_faces": tracker.frames_without_faces,
            "rotation_applied": info.rotation,
            "detector": ctx.config.faceswap.detector,
        },
    )


async def run_faceswap_video(ctx: TaskContext, payload: FaceSwapVideoPayload) -> TaskOutput:
    # The video goes to disk as it downloads (never whole in memory); sources are small.
    workdir = Path(await ctx.run_in_thread(tempfile.mkdtemp, dir=ctx.files_dir, prefix=".video-"))
    try:
        video = workdir / "input"
        with video.open("wb") as sink:
            await ctx.fetch(
                payload.target_url,
                field="target_url",
                max_bytes=ctx.config.video.max_bytes,
                sink=sink,
            )
        fetched = await asyncio.gather(
            *[ctx.fetch(url, field=field) for field, url in payload.sources()]
        )
        ctx.progress(10)
        sources = [f.data for f in fetched]
        return await ctx.run_in_thread(_swap_video, ctx, payload, video, sources)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)


FACESWAP_VIDEO = TaskSpec(
    name="faceswap_video",
    payload_type=FaceSwapVideoPayload,
    run=run_faceswap_video,
    url_fields=("target_url", "source_url"),
    list_url_fields=("source_urls",),
    direct_path="/faceswap/video",
    default_predict_s=60.0,
    validate=_validate,
    models=needed_models,
)
