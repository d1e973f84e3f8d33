#!/usr/bin/env python3
"""Benchmark a video face swap: ahv.video.transcode (threaded decode / process / encode with
bounded queues, batched inswapper) against a naive serial loop, in one run.

Both use the same tiny model files (scripts/make_test_models.py, ONNX Runtime on CPU with the
same intra-op threads), the same clip (made here with PyAV: skimage's astronaut moving over a
background), the same source identity (ArcFace run once) and the same encoder settings
(libx264 via ahv.video_probe.add_h264_stream / yuv420_frame).

- naive: decode one frame, detect, swap (InSwapper.swap), encode it, repeat.
- ahv: transcode() with a process that detects on every frame of the batch, then runs
  inswapper ONCE over all faces of all the batch's frames (InSwapper.swap_crops) and pastes
  each face back into its frame.

    python scripts/bench_video.py [--frames 240] [--size 640x360] [--batch 8] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ahv.models.face import (  # noqa: E402
    ArcFace,
    Face,
    InSwapper,
    ScrfdDetector,
    largest_face,
    load_emap,
    paste_back,
)
from ahv.models.face.align import similarity_matrix64, warp_crop  # noqa: E402
from ahv.models.face.inswapper import CROP  # noqa: E402
from ahv.video import transcode  # noqa: E402
from ahv.video_probe import add_h264_stream, yuv420_frame  # noqa: E402
from scripts.make_test_models import make_test_models  # noqa: E402

GOAL = 2.0
Image = npt.NDArray[np.uint8]


def astronaut() -> Image:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-image is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "astronaut.png"
    return np.asarray(cv2.imread(str(path)), dtype=np.uint8)


def make_clip(path: Path, frames: int, width: int, height: int, fps: int = 30) -> None:
    side = min(width, height) * 3 // 4
    face = cv2.resize(astronaut(), (side, side))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.empty((height, width, 3), np.uint8)
            image[:] = (60 + i % 40, 100, 150)
            x = int((width - side) * (0.5 + 0.5 * np.sin(i / 15)))
            y = int((height - side) * (0.5 + 0.5 * np.cos(i / 23)))
            image[y : y + side, x : x + side] = face
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the tiny inswapper's unused emap initializer warns
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class Models:
    def __init__(self, paths: dict[str, Path], threads: int) -> None:
        self.detector = ScrfdDetector(session(paths["det_10g"], threads))
        self.arcface = ArcFace(session(paths["w600k_r50"], threads))
        self.swapper = InSwapper(
            session(paths["inswapper_128"], threads), load_emap(paths["inswapper_128"])
        )
        source = astronaut()
        self.embedding = self.arcface.embed(source, [largest_face(self.detector.detect(source))])
        self.latent = self.swapper.latents(self.embedding)


def naive(models: Models, src: Path, dst: Path) -> int:
    """One frame at a time: decode, detect, swap, encode."""
    count = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        vin = inp.streams.video[0]
        tb = vin.time_base or Fraction(1, 90000)
        stream = None
        for frame in inp.decode(vin):
            image = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
            faces = models.detector.detect(image)
            swapped = models.swapper.swap(image, faces, models.embedding) if faces else image
            if stream is None:
                size = (image.shape[1], image.shape[0])
                stream = add_h264_stream(out, size, vin.average_rate or Fraction(30), tb)
            encoded = yuv420_frame(swapped, (stream.width, stream.height))
            encoded.pts, encoded.time_base = frame.pts, tb
            out.mux(stream.encode(encoded))
            count += 1
        if stream is not None:
            out.mux(stream.encode(None))
    return count


def batched_process(models: Models) -> Callable[[list[Image]], list[Image]]:
    def process(frames: list[Image]) -> list[Image]:
        found: list[tuple[int, Face, npt.NDArray[np.float64]]] = []
        for index, frame in enumerate(frames):
            for face in models.detector.detect(frame):
                found.append((index, face, similarity_matrix64(face.landmarks, CROP)))
        if not found:
            return frames
        crops = [warp_crop(frames[i], matrix, CROP) for i, _, matrix in found]
        latents = np.repeat(models.latent, len(crops), axis=0)
        swapped = models.swapper.swap_crops(crops, latents)  # one inswapper run
        out = [frame.copy() for frame in frames]
        for (index, _, matrix), crop in zip(found, swapped, strict=True):
            paste_back(frames[index], crop, matrix, into=out[index])
        return out

    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    cv2.setNumThreads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / "clip.mp4"
        make_clip(src, args.frames, width, height)
        models = Models(make_test_models(work / "models"), args.threads)
        faces = len(models.detector.detect(np.asarray(next(iter(_frames(src))))))
        process = batched_process(models)
        transcode(src, work / "warm.mp4", process, batch_size=args.batch)  # warm-up both
        naive(models, src, work / "warm2.mp4")

        started = time.perf_counter()
        count_naive = naive(models, src, work / "naive.mp4")
        t_naive = time.perf_counter() - started
        started = time.perf_counter()
        result = transcode(src, work / "ahv.mp4", process, batch_size=args.batch)
        t_ahv = time.perf_counter() - started
    fps_naive, fps_ahv = count_naive / t_naive, result.frames / t_ahv
    ratio = fps_ahv / fps_naive
    print(
        f"clip {args.frames} frames {width}x{height}, ~{faces} faces/frame (tiny detector), "
        f"batch {args.batch}, {args.threads} intra-op threads, {os.cpu_count()} CPUs"
    )
    print(f"naive serial loop:   {fps_naive:7.1f} frames/s ({t_naive:.2f} s)")
    print(f"ahv transcode:       {fps_ahv:7.1f} frames/s ({t_ahv:.2f} s)")
    verdict = "meets" if ratio >= GOAL else "MISSES"
    print(f"speedup: {ratio:.2f}x ({verdict} the {GOAL:g}x goal)")
    return 0 if ratio >= GOAL else 1


def _frames(path: Path) -> list[Image]:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return [np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)]


if __name__ == "__main__":
    sys.exit(main())
