"""Cross-job batching (ahv.models.batching): concurrent runs of one model gathered into one
session run, unit-tested on tiny ONNX models, and through the real server."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ahv.models.batching import BatchedSession
from tests import media as fixtures
from tests.conftest import Api, MediaServer


def make_conv(path: Path, *, batch: int | str = "N", size: int | str = 32) -> Path:
    """A 3×3 conv + sigmoid on NCHW (3 → 1 channels), batch axis `batch`."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(1, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["logit"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["logit"], ["out"]),
        ],
        "tiny_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 1, size, size])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


class Counting:
    """A session that counts its runs and the batch sizes it was given."""

    def __init__(self, session: Any, fail: bool = False) -> None:
        self.session = session
        self.fail = fail
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, output_names: Any, feeds: dict[str, Any], *args: Any) -> Any:
        with self.lock:
            self.sizes.append(int(next(iter(feeds.values())).shape[0]))
        if self.fail:
            raise RuntimeError("the model broke")
        return self.session.run(output_names, feeds, *args)


def load(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def inputs(count: int, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(1, 3, size, size)).astype(np.float32) for _ in range(count)]


def call_together(batched: Any, feeds: list[np.ndarray]) -> list[Any]:
    barrier = threading.Barrier(len(feeds))

    def one(x: np.ndarray) -> Any:
        barrier.wait()
        try:
            return batched.run(None, {"input": x})
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(feeds)) as pool:
        return list(pool.map(one, feeds))


def test_concurrent_runs_are_batched_with_the_same_results(tmp_path: Path) -> None:
    session = load(make_conv(tmp_path / "conv.onnx"))
    counting = Counting(session)
    batched = BatchedSession(counting, max_batch=8, max_wait_ms=50)
    assert batched.batching and batched.get_inputs()[0].name == "input"
    feeds = inputs(8)
    results = call_together(batched, feeds)
    for x, result in zip(feeds, results, strict=True):
        (expected,) = session.run(None, {"input": x})
        assert result[0].shape == (1, 1, 32, 32)
        np.testing.assert_allclose(result[0], expected, rtol=1e-5, atol=1e-6)
    assert len(counting.sizes) < 8 and sum(counting.sizes) == 8
    stats = batched.stats()
    assert stats["batches"] == len(counting.sizes) and stats["items"] == 8
    assert stats["mean_batch"] > 1


def test_max_batch_caps_a_run(tmp_path: Path) -> None:
    counting = Counting(load(make_conv(tmp_path / "conv.onnx")))
    batched = BatchedSession(counting, max_batch=3, max_wait_ms=50)
    results = call_together(batched, inputs(8))
    assert all(not isinstance(r, Exception) for r in results)
    assert max(counting.sizes) <= 3 and sum(counting.sizes) == 8


def test_different_shapes_are_not_mixed(tmp_path: Path) -> None:
    session = load(make_conv(tmp_path / "conv.onnx", size="S"))
    counting = Counting(session)
    batched = BatchedSession(counting, max_batch=8, max_wait_ms=30)
    feeds = inputs(3, 32) + inputs(3, 16)
    results = call_together(batched, feeds)
    for x, result in zip(feeds, results, strict=True):
        np.testing.assert_allclose(result[0], session.run(None, {"input": x})[0], atol=1e-6)
    assert sum(counting.sizes) == 6 and len(counting.sizes) >= 2


def test_an_error_is_raised_in_every_caller(tmp_path: Path) -> None:
    counting = Counting(load(make_conv(tmp_path / "conv.onnx")), fail=True)
    batched = BatchedSession(counting, max_batch=8, max_wait_ms=50)
    results = call_together(batched, inputs(6))
    assert all(isinstance(r, RuntimeError) and "broke" in str(r) for r in results)
    assert sum(counting.sizes) == 6 and len(counting.sizes) < 6
    # The wrapper still works afterwards.
    counting.fail = False
    assert batched.run(None, {"input": inputs(1)[0]})[0].shape == (1, 1, 32, 32)


def test_fixed_batch_models_pass_through(tmp_path: Path) -> None:
    counting = Counting(load(make_conv(tmp_path / "fixed.onnx", batch=1)))
    batched = BatchedSession(counting, max_batch=8, max_wait_ms=50)
    assert not batched.batching
    started = time.perf_counter()
    results = call_together(batched, inputs(4))
    assert time.perf_counter() - started < 2
    assert counting.sizes == [1, 1, 1, 1]
    assert all(r[0].shape == (1, 1, 32, 32) for r in results)
    assert batched.stats() == {"batches": 4, "items": 4, "mean_batch": 1.0}


def test_a_lone_caller_waits_at_most_max_wait(tmp_path: Path) -> None:
    counting = Counting(load(make_conv(tmp_path / "conv.onnx")))
    batched = BatchedSession(counting, max_batch=8, max_wait_ms=20)
    x = inputs(1)[0]
    batched.run(None, {"input": x})  # warm up
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        batched.run(None, {"input": x})
        timings.append(time.perf_counter() - started)
    assert 0.015 <= min(timings) and max(timings) < 0.2
    no_wait = BatchedSession(counting, max_batch=8, max_wait_ms=0)
    started = time.perf_counter()
    no_wait.run(None, {"input": x})
    assert time.perf_counter() - started < 0.015


class Slow(Counting):
    """A session whose runs take `run_s` and that records how many ran at once."""

    def __init__(self, session: Any, run_s: float) -> None:
        super().__init__(session)
        self.run_s = run_s
        self.running = 0
        self.most_at_once = 0

    def run(self, output_names: Any, feeds: dict[str, Any], *args: Any) -> Any:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.run_s)
            return super().run(output_names, feeds, *args)
        finally:
            with self.lock:
                self.running -= 1


def test_calls_that_arrive_during_a_run_make_the_next_batch(tmp_path: Path) -> None:
    session = load(make_conv(tmp_path / "conv.onnx"))
    slow = Slow(session, run_s=0.3)
    batched = BatchedSession(slow, max_batch=8, max_wait_ms=0)
    feeds = inputs(8)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(batched.run, None, {"input": feeds[0]})
        time.sleep(0.1)  # the first call runs alone (no wait); the others queue behind it
        rest = [pool.submit(batched.run, None, {"input": x}) for x in feeds[1:]]
        results = [first.result(), *(future.result() for future in rest)]
    assert slow.sizes == [1, 7], slow.sizes
    assert slow.most_at_once == 1
    for x, result in zip(feeds, results, strict=True):
        np.testing.assert_allclose(result[0], session.run(None, {"input": x})[0], atol=1e-6)
    assert batched.stats() == {"batches": 2, "items": 8, "mean_batch": 4.0}


def test_the_oldest_call_goes_first_and_groups_do_not_mix(tmp_path: Path) -> None:
    session = load(make_conv(tmp_path / "conv.onnx", size="S"))
    slow = Slow(session, run_s=0.2)
    batched = BatchedSession(slow, max_batch=3, max_wait_ms=0)
    small, large = inputs(4, 16), inputs(3, 32)
    order: list[tuple[int, ...]] = []
    with ThreadPoolExecutor(8) as pool:
        busy = pool.submit(batched.run, None, {"input": small[0]})
        time.sleep(0.05)
        queued = []
        for x in [large[0], small[1], large[1], small[2], small[3], large[2]]:
            queued.append(pool.submit(batched.run, None, {"input": x}))
            time.sleep(0.01)
        for future in [busy, *queued]:
            order.append(future.result()[0].shape)
    # Alone first; then the oldest queued call's group (large, 3 of them), then the small ones
    # (3 fit in one run of max_batch 3).
    assert slow.sizes == [1, 3, 3], slow.sizes
    assert slow.most_at_once == 1
    assert order[0] == (1, 1, 16, 16) and order[1] == (1, 1, 32, 32)


# -- through the server ---------------------------------------------------------------------


@pytest.fixture
def matting_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(1, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input.1", "w"], ["logit"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["logit"], ["d0"]),
        ],
        "batch_matting",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 320, 320])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, ["N", 1, 320, 320])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (directory / "batch_matting.onnx").write_bytes(model.SerializeToString())
    return directory


async def test_concurrent_jobs_are_batched_on_the_server(
    start_server: Any, matting_dir: Path, media: MediaServer
) -> None:
    api: Api = await start_server(
        models={
            "dir": str(matting_dir),
            "files": {"batch_matting": {"file": "batch_matting.onnx"}},
        },
        images={"matting": "batch_matting"},
        batching={"max_batch": 8, "max_wait_ms": 50},
        backends=[{"name": "cpu", "slots": 8, "tasks": ["remove_background"]}],
    )
    url = media.add("a.png", fixtures.astronaut_png())
    jobs = [await api.submit("remove_background", {"image_url": url}) for _ in range(16)]
    docs = await asyncio.gather(*(api.wait(job["job_id"], timeout_s=60) for job in jobs))
    assert all(doc["status"] == "succeeded" for doc in docs), docs
    assert len({doc["result"]["meta"]["foreground_fraction"] for doc in docs}) == 1
    _, diag, _ = await api.call("GET", "/diag/backends")
    stats = diag["backends"][0]["batching"]["batch_matting"]
    assert stats["items"] == 16 and stats["batches"] < 16 and stats["mean_batch"] > 1, stats


async def test_concurrent_detections_are_batched_on_the_server(
    start_server: Any, tmp_path: Path, media: MediaServer
) -> None:
    from scripts.tiny_models_objects import make_yolo

    models = tmp_path / "detectors"
    models.mkdir()
    make_yolo(models / "yolo_dyn.onnx", dynamic=True)
    api: Api = await start_server(
        models={"dir": str(models), "files": {"yolo_dyn": {"file": "yolo_dyn.onnx"}}},
        objects={"detector": "yolo_dyn"},
        batching={"max_batch": 8, "max_wait_ms": 50},
        backends=[{"name": "cpu", "slots": 8, "tasks": ["scan_objects"]}],
    )
    url = media.add("a.png", fixtures.astronaut_png())
    alone = await api.wait((await api.submit("scan_objects", {"image_url": url}))["job_id"])
    assert alone["status"] == "succeeded", alone["error"]
    expected = alone["result"]["meta"]["objects"]
    assert expected, "the tiny detector finds the astronaut's bright areas"
    jobs = [await api.submit("scan_objects", {"image_url": url}) for _ in range(12)]
    docs = await asyncio.gather(*(api.wait(job["job_id"], timeout_s=60) for job in jobs))
    assert all(doc["status"] == "succeeded" for doc in docs), docs
    # A batched run gives every job exactly what it gets alone.
    assert all(doc["result"]["meta"]["objects"] == expected for doc in docs)
    _, diag, _ = await api.call("GET", "/diag/backends")
    stats = diag["backends"][0]["batching"]["yolo_dyn"]
    assert stats["items"] == 13 and stats["batches"] < 13 and stats["mean_batch"] > 1, stats
