#!/usr/bin/env python3
"""Benchmark cross-job batching: throughput of concurrent `remove_background` jobs with
`[batching]` on against off, in one run.

What is measured
    Jobs per second of `--jobs` (default 32) concurrent blocking `POST /remove-background`
    requests (one connection each), for `--rounds` (default 3) rounds after one warm-up round
    that is not counted; every answer must be 200 with status "succeeded".

The servers: the real one, `python -m ahv serve --config <tmp toml> --port 0`, started as a
subprocess (found through its `ahv listening on http://HOST:PORT` line), once with
`batching.enabled = true` and once with `false`, otherwise identical: one cpu backend with
`--slots` (default 8) slots serving remove_background, batching.max_batch = `--max-batch`
(default 8), max_wait_ms = `--max-wait-ms` (default 5). The servers never run at the same
time; with `--rounds` they are interleaved (on, off, on, off, ...) each started fresh.

The model, built here with onnx.helper (ir_version 8): a small matting net with a dynamic
batch axis, 320×320 RGB in, four 3×3 convolutions (3→16→16→16→1 channels, ReLU between,
sigmoid out), about 1 GFLOP per image: tiny but with realistic compute per image, unlike the
one-conv test model. ONNX Runtime uses its defaults (intra-op threads = cores) on both sides:
unbatched, the slots' concurrent runs each ask for all cores and oversubscribe them, which is
a real effect of running jobs side by side, and batched, one run uses them all.

The input image (a 640×480 PNG) is served by this script from 127.0.0.1
(`fetch.allowed_networks` lets it in). The result is the ratio on/off against a goal of 1.5.
Exit status is 0 whatever the ratio; 1 when a server fails to start.

What bounds the ratio, printed too: the model alone, in this process on the same device,
timed per image at batch 1 and at batch `--max-batch` (the most a batcher can gain on the
model), and the share of a job's time that the model takes (fetch, decode, PNG encode and the
queue do not batch). `--device cuda:0` runs both servers' backend and that model timing on a
GPU, where batching is meant to pay.

Run from the repository root:

    python scripts/bench_batching.py                 # ~1 min
    python scripts/bench_batching.py --rounds 5 --slots 16
    python scripts/bench_batching.py --device cuda:0   # on a GPU box
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.bench_submit import API_KEY, WEBHOOK_SECRET, BenchError, Server  # noqa: E402

GOAL = 1.5
MODEL = "bench_matting"


def make_model(path: Path, size: int = 320, width: int = 16) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    channels = [3, width, width, width, 1]
    nodes = []
    weights = []
    current = "input.1"
    for index, (cin, cout) in enumerate(itertools.pairwise(channels)):
        w = rng.normal(scale=1.0 / np.sqrt(cin * 9), size=(cout, cin, 3, 3)).astype(np.float32)
        weights += [
            numpy_helper.from_array(w, f"w{index}"),
            numpy_helper.from_array(np.zeros(cout, np.float32), f"b{index}"),
        ]
        out = f"c{index}"
        nodes.append(
            helper.make_node("Conv", [current, f"w{index}", f"b{index}"], [out], pads=[1] * 4)
        )
        last = index == len(channels) - 2
        nodes.append(helper.make_node("Sigmoid" if last else "Relu", [out], [f"a{index}"]))
        current = f"a{index}"
    nodes.append(helper.make_node("Identity", [current], ["d0"]))
    graph = helper.make_graph(
        nodes,
        "bench_matting",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["N", 1, size, size])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def model_ms_per_image(path: Path, device: str, batch: int, repeats: int = 20) -> float:
    """Median ms per image of the bench model alone at `batch` images a run on `device`."""
    from ahv.models.sessions import preload_cuda_libraries, providers_for

    if device.startswith("cuda"):
        preload_cuda_libraries()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=providers_for(device))
    feed = np.random.default_rng(0).random((batch, 3, 320, 320), dtype=np.float32)
    name = session.get_inputs()[0].name
    for _ in range(3):
        session.run(None, {name: feed})
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {name: feed})
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000.0 / batch


def make_image() -> bytes:
    y, x = np.mgrid[0:480, 0:640]
    image = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    cv2.circle(image, (320, 240), 150, (30, 200, 60), -1)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return bytes(encoded.tobytes())


def config(data_dir: Path, models_dir: Path, *, enabled: bool, args: argparse.Namespace) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = 0
data_dir = {json.dumps(str(data_dir))}
shutdown_grace_s = 0

[[keys]]
name = "bench"
key = "{API_KEY}"
role = "client"
webhook_secret = "{WEBHOOK_SECRET}"

[queue]
max_depth = 100000

[fetch]
allowed_networks = ["127.0.0.1/32"]

[models]
dir = {json.dumps(str(models_dir))}

[models.files.{MODEL}]
file = "{MODEL}.onnx"

[images]
matting = "{MODEL}"

[batching]
enabled = {"true" if enabled else "false"}
max_batch = {args.max_batch}
max_wait_ms = {args.max_wait_ms}

[[backends]]
name = "bench"
device = "{args.device}"
slots = {args.slots}
tasks = ["remove_background"]
"""


async def one_round(base: str, image_url: str, jobs: int) -> float:
    """Seconds for `jobs` concurrent blocking remove_background jobs, all succeeded."""
    headers = {"X-API-Key": API_KEY}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.post(
                base + "/remove-background", json={"image_url": image_url}, headers=headers
            ) as response:
                doc = await response.json()
                if response.status != 200 or doc.get("status") != "succeeded":
                    raise RuntimeError(f"job failed: {response.status} {doc}")

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(jobs)))
        return time.perf_counter() - started


async def diag(base: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(base + "/diag/backends", headers={"X-API-Key": API_KEY}) as response,
    ):
        rows = (await response.json())["backends"]
        return dict(rows[0].get("batching", {}).get(MODEL, {}))


async def measure(
    name: str, workdir: Path, models_dir: Path, image_url: str, args: argparse.Namespace
) -> tuple[float, dict[str, Any]]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    path = run_dir / "ahv.toml"
    path.write_text(config(run_dir / "data", models_dir, enabled=name == "on", args=args))
    argv = [sys.executable, "-m", "ahv", "serve", "--config", str(path)]
    server = Server(f"ahv-{name}", [*argv, "--port", "0", "--host", "127.0.0.1"], run_dir)
    try:
        base = await asyncio.to_thread(server.start)
        await one_round(base, image_url, args.jobs)  # warm-up: model load, first runs
        seconds = await one_round(base, image_url, args.jobs)
        stats = await diag(base)
    finally:
        server.stop()
    return args.jobs / seconds, stats


async def main_async(args: argparse.Namespace) -> int:
    image = make_image()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/png")

    app = web.Application()
    app.router.add_get("/in.png", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    image_url = f"http://127.0.0.1:{port}/in.png"
    results: dict[str, list[float]] = {"on": [], "off": []}
    last: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="ahv-bench-batching-") as tmp:
            workdir = Path(tmp)
            models_dir = workdir / "models"
            models_dir.mkdir()
            make_model(models_dir / f"{MODEL}.onnx")
            single_ms = model_ms_per_image(models_dir / f"{MODEL}.onnx", args.device, 1)
            batch_ms = model_ms_per_image(models_dir / f"{MODEL}.onnx", args.device, args.max_batch)
            for round_index in range(args.rounds):
                for name in ("on", "off"):
                    rate, stats = await measure(name, workdir, models_dir, image_url, args)
                    results[name].append(rate)
                    last[name] = stats
                    print(
                        f"round {round_index + 1} batching {name:3}: {rate:6.2f} jobs/s  "
                        f"(batching stats: {stats})",
                        flush=True,
                    )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await runner.cleanup()
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    ratio = on / off
    print()
    print(
        f"{args.jobs} concurrent remove_background jobs, {args.slots} slots, "
        f"max_batch {args.max_batch}, max_wait_ms {args.max_wait_ms}, {args.rounds} rounds"
    )
    print(f"batching on : {on:6.2f} jobs/s (median)  mean batch {last['on'].get('mean_batch')}")
    print(f"batching off: {off:6.2f} jobs/s (median)")
    print(
        f"the model alone on {args.device}: {single_ms:.2f} ms/image at batch 1, "
        f"{batch_ms:.2f} ms/image at batch {args.max_batch} ({single_ms / batch_ms:.2f}x: "
        "the most batching can gain on the model)"
    )
    print(
        f"the model's share of an unbatched job: {single_ms / (1000.0 / off) * 100:.0f}% "
        f"of the {1000.0 / off:.1f} ms per job (the rest does not batch)"
    )
    verdict = "meets" if ratio >= GOAL else "below"
    print(f"ratio on/off: {ratio:.2f}x ({verdict} the {GOAL}x goal)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu", help="the backend's device: cpu or cuda:N")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
