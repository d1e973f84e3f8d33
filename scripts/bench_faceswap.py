#!/usr/bin/env python3
"""Benchmark one face-swap request: ahv's pipeline against insightface's reference loop.

What is timed, per repetition (after warm-up), on the same tiny model files
(scripts/make_test_models.py) and the same photos:

- detect the target faces on insightface's t1.jpg (1280×886, 6 faces with the tiny detector);
- detect the faces on skimage's astronaut and embed the largest one (the source);
- swap every target face to the source identity, with paste-back.

ahv: ScrfdDetector → ArcFace.embed → InSwapper.swap (one batched inswapper run, paste-back
only within each face's window). insightface (FaceAnalysis-style): SCRFD.detect, ArcFaceONNX.get
on the source, then INSwapper.get(img, face, source, paste_back=True) face after face
(full-frame paste-back). Every ONNX Runtime session in both gets the same
intra_op_num_threads, and runs on CPU.

    python scripts/bench_faceswap.py [--reps 20] [--warmup 3] [--threads 4]

Needs insightface installed (`pip install --no-deps insightface`); ahv itself never imports it.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ahv.models.face import (  # noqa: E402
    ArcFace,
    InSwapper,
    ScrfdDetector,
    largest_face,
    load_emap,
)
from scripts.make_test_models import make_test_models  # noqa: E402

GOAL = 1.5
Image = npt.NDArray[np.uint8]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the tiny inswapper's unused emap initializer warns
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def build_ours(models: dict[str, Path], threads: int) -> Callable[[Image, Image], Image]:
    detector = ScrfdDetector(_session(models["det_10g"], threads))
    arcface = ArcFace(_session(models["w600k_r50"], threads))
    swapper = InSwapper(
        _session(models["inswapper_128"], threads), load_emap(models["inswapper_128"])
    )

    def run(target: Image, source: Image) -> Image:
        faces = detector.detect(target)
        embedding = arcface.embed(source, [largest_face(detector.detect(source))])
        return swapper.swap(target, faces, embedding)

    return run


def build_reference(models: dict[str, Path], threads: int) -> Callable[[Image, Image], Image]:
    from insightface.app.common import Face
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.inswapper import INSwapper
    from insightface.model_zoo.scrfd import SCRFD

    detector = SCRFD(str(models["det_10g"]), session=_session(models["det_10g"], threads))
    detector.prepare(ctx_id=-1, input_size=(640, 640))
    arcface = ArcFaceONNX(str(models["w600k_r50"]), _session(models["w600k_r50"], threads))
    swapper = INSwapper(str(models["inswapper_128"]), _session(models["inswapper_128"], threads))

    def faces(image: Image) -> list[Any]:
        boxes, kpss = detector.detect(image)
        return [Face(bbox=b[:4], kps=k, det_score=b[4]) for b, k in zip(boxes, kpss, strict=True)]

    def run(target: Image, source: Image) -> Image:
        targets = faces(target)
        found = faces(source)
        best = max(found, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        arcface.get(source, best)
        result = target
        for face in targets:
            result = swapper.get(result, face, best, paste_back=True)
        return result

    return run


def once(run: Callable[[Image, Image], Image], target: Image, source: Image) -> float:
    start = time.perf_counter()
    run(target, source)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4, help="intra_op threads, both sides")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)  # skimage's estimate, inside insightface
    cv2.setNumThreads(args.threads)

    target = cv2.imread(str(_package_dir("insightface") / "data" / "images" / "t1.jpg"))
    source = cv2.imread(str(_package_dir("skimage") / "data" / "astronaut.png"))
    with tempfile.TemporaryDirectory() as tmp:
        models = make_test_models(Path(tmp))
        ours, reference = build_ours(models, args.threads), build_reference(models, args.threads)
        n_faces = len(ScrfdDetector(_session(models["det_10g"], 1)).detect(target))
        for _ in range(args.warmup):
            a, b = ours(target, source), reference(target, source)
        diff = float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
        # Interleave the two so drift in machine load hits both alike.
        t_ours, t_ref = [], []
        for _ in range(args.reps):
            t_ref.append(once(reference, target, source))
            t_ours.append(once(ours, target, source))
    mine, theirs = statistics.median(t_ours), statistics.median(t_ref)
    speedup = theirs / mine
    print(
        f"image {target.shape[1]}x{target.shape[0]}, {n_faces} target faces, "
        f"{args.threads} intra-op threads, {args.reps} reps after {args.warmup} warm-up"
    )
    print(f"insightface reference loop: {theirs * 1000:8.1f} ms/image (median)")
    print(f"ahv pipeline:               {mine * 1000:8.1f} ms/image (median)")
    print(f"mean |ahv - insightface| per pixel: {diff:.4f}")
    verdict = "meets" if speedup >= GOAL else "MISSES"
    print(f"speedup: {speedup:.2f}x ({verdict} the {GOAL}x goal)")
    return 0 if speedup >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
