#!/usr/bin/env python3
"""GPU check for the face pipeline: run on a machine with CUDA (well under 5 minutes).

    python scripts/gpu_check.py [--device cuda:0] [--reps 20]

It builds the tiny test models (scripts/make_test_models.py) and the MTCNN graphs into a
temporary models dir, opens every session through ahv's own SessionCache on the device, and:
1. asserts that CUDAExecutionProvider is the active provider of each session (no silent CPU
   run), printing what is active otherwise;
2. times the whole pipeline on insightface's t1.jpg (6 faces: MTCNN detect, ArcFace on the
   astronaut source, one batched inswapper run, paste-back) on the device and on the CPU,
   and prints both (median ms per image) and their ratio.
Exit status: 0 when CUDA is active for every session, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ahv.config import ModelsConfig  # noqa: E402
from ahv.models.face import (  # noqa: E402
    ArcFace,
    InSwapper,
    MtcnnDetector,
    build_mtcnn_models,
    largest_face,
    load_emap,
)
from ahv.models.registry import ModelRegistry  # noqa: E402
from ahv.models.sessions import SessionCache  # noqa: E402
from scripts.make_test_models import make_test_models  # noqa: E402


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def time_pipeline(cache: SessionCache, models_dir: Path, device: str, reps: int) -> float:
    mtcnn = build_mtcnn_models(models_dir)
    detector = MtcnnDetector(*(cache.get_file(mtcnn[k], device) for k in ("pnet", "rnet", "onet")))
    arcface = ArcFace(cache.get("w600k_r50", device))
    swapper = InSwapper(
        cache.get("inswapper_128", device), load_emap(models_dir / "inswapper_128.onnx")
    )
    target = cv2.imread(str(package_file("insightface", "data", "images", "t1.jpg")))
    source = cv2.imread(str(package_file("skimage", "data", "astronaut.png")))
    times = []
    for rep in range(reps + 3):
        began = time.perf_counter()
        faces = detector.detect(target)
        embedding = arcface.embed(source, [largest_face(detector.detect(source))])
        swapper.swap(target, faces, embedding.repeat(len(faces), axis=0))
        if rep >= 3:  # warm-up first
            times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp)
        make_test_models(models_dir)
        files = {n: {"file": f"{n}.onnx"} for n in ("w600k_r50", "inswapper_128")}
        config = msgspec.convert({"dir": tmp, "files": files}, ModelsConfig)
        cache = SessionCache(ModelRegistry(config), gpu_mem_limit_mb=2048)
        gpu_ms = time_pipeline(cache, models_dir, args.device, args.reps)
        cpu_ms = time_pipeline(cache, models_dir, "cpu", args.reps)
        status = cache.status()
        print(f"sessions: {status}")
        degraded = cache.degraded(args.device)
        print(
            f"{args.device}: {gpu_ms:.1f} ms per image; cpu: {cpu_ms:.1f} ms per image; "
            f"cpu/{args.device} = {cpu_ms / gpu_ms:.2f}"
        )
        if degraded:
            print(f"FAIL: {args.device} is degraded: {degraded}")
            return 1
        print(f"OK: CUDAExecutionProvider active on {args.device}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
