#!/usr/bin/env python3
"""Benchmark the two latencies ahv adds around a job: dispatch (queued -> running on a free
slot) and webhook (finished -> delivered), each against a floor measured in the same run.

What is measured
    The real server (`python -m ahv serve`, a subprocess on 127.0.0.1, `--port 0`) with one
    CPU backend of `--slots` slots serving the test-only `sleep` task (tests/plugin_tasks.py)
    with `seconds = 0`, so a job ends as soon as it starts. `--jobs` jobs (default 500) are
    submitted one at a time, `--interval-ms` apart (default 20 ms, far more than a job takes,
    so a slot is always free when one arrives), each with a `webhook_url` on a receiver in
    this process that notes the arrival time of each delivery.

    - dispatch latency = `started_at` - `queued_at` of each job document (ISO times with
      microseconds): the submit's group commit, the scheduler's wake-up and the claim.
    - webhook latency = arrival at the receiver - `finished_at`: the outbox write is in the
      job's final transaction; this is the sender's wake-up, the outbox read and the POST.

    Floors, in the same run, on the same machine:
    - dispatch floor: ahv's own store (ahv.store.Store on a fresh SQLite file in this process,
      the server's durability settings) doing `enqueue` then `claim` back to back, `--jobs`
      times, the job stamped as the server stamps it (queued before the enqueue, started as
      the claim begins): the durable enqueue any dispatch waits for, with no HTTP handler,
      scheduler or wake-up in between;
    - webhook floor: a bare aiohttp POST of a job-sized body from this process to the same
      receiver, one at a time: send -> arrival.

    The figures: p50/p99 of each, and p50 ahv / p50 floor. Both processes share the machine's
    cores; on a busy box the tails (p99) move most.

Run from the repository root:

    python scripts/bench_latency.py                   # ~30 s
    python scripts/bench_latency.py --jobs 2000 --slots 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.proofkit import (
    API_KEY,
    AhvServer,
    base_config,
    install_uvloop,
    percentile,
    serve_local,
)


@dataclass
class Latencies:
    dispatch_ms: list[float] = field(default_factory=list)
    webhook_ms: list[float] = field(default_factory=list)
    dispatch_floor_ms: list[float] = field(default_factory=list)
    webhook_floor_ms: list[float] = field(default_factory=list)


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        arrived = time.time()
        body = json.loads(await request.read())
        self.arrivals[body["job_id"]] = arrived
        self.changed.set()
        return web.Response(text="ok")

    async def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.arrivals) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(self.arrivals)} of {count} webhooks arrived")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 0.5)
            except TimeoutError:
                pass


def epoch_s(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text).timestamp()


async def measure_ahv(args: argparse.Namespace, workdir: Path, result: Latencies) -> None:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner, base = await serve_local(app)
    webhook = f"{base}/hook"
    config = base_config(
        workdir / "data",
        backends=[{"name": "cpu", "slots": args.slots, "tasks": ["sleep"]}],
        queue={"max_depth": 100_000},
    )
    server = AhvServer(config, workdir / "server")
    try:
        await asyncio.to_thread(server.start)
        headers = {"X-API-Key": API_KEY}
        request = {"task": "sleep", "payload": {"seconds": 0, "steps": 1}, "webhook_url": webhook}
        ids: list[str] = []
        async with aiohttp.ClientSession() as session:
            for i in range(args.warmup + args.jobs):
                async with session.post(
                    f"{server.url}/v1/jobs", json=request, headers=headers
                ) as response:
                    answer = await response.json()
                    if response.status != 202:
                        raise RuntimeError(f"submit: HTTP {response.status} {answer}")
                if i >= args.warmup:
                    ids.append(answer["job_id"])
                await asyncio.sleep(args.interval_ms / 1000)
            await receiver.wait_for(args.warmup + args.jobs, timeout_s=60)
            for job_id in ids:
                async with session.get(
                    f"{server.url}/v1/jobs/{job_id}", headers=headers
                ) as response:
                    doc = await response.json()
                queued, started = epoch_s(doc["queued_at"]), epoch_s(doc["started_at"])
                finished = epoch_s(doc["finished_at"])
                result.dispatch_ms.append((started - queued) * 1000)
                result.webhook_ms.append((receiver.arrivals[job_id] - finished) * 1000)
            body = json.dumps({"event": "job.finished", **doc}).encode()
            # The webhook floor: the same receiver, a bare POST of the same size.
            for i in range(args.warmup + args.jobs):
                sent = time.time()
                marker = f"floor-{i}"
                payload = body.replace(doc["job_id"].encode(), marker.encode())
                async with session.post(webhook, data=payload) as response:
                    await response.read()
                if i >= args.warmup:
                    result.webhook_floor_ms.append((receiver.arrivals[marker] - sent) * 1000)
                await asyncio.sleep(args.interval_ms / 1000)
    finally:
        await asyncio.to_thread(server.stop)
        await runner.cleanup()


async def measure_store_floor(args: argparse.Namespace, workdir: Path, result: Latencies) -> None:
    from ahv.jobs import QUEUED, JobRow
    from ahv.store import Store
    from ahv.timeutil import now_us

    store = Store(workdir / "floor" / "ahv.sqlite3")
    await store.open()
    try:
        for i in range(args.warmup + args.jobs):
            now = now_us()
            job = JobRow(
                id=f"{i:032x}",
                owner="bench",
                task="sleep",
                status=QUEUED,
                priority=5,
                rank_ms=now // 1000,
                payload=b'{"seconds":0,"steps":1}',
                max_attempts=3,
                created_us=now,
                queued_us=now,
                predict_time=1.0,
            )
            # Stamped as ahv stamps a job: queued before the enqueue, started as the claim
            # begins (the `now_us` it is given becomes started_at).
            await store.enqueue(job)
            started = now_us()
            claimed = await store.claim(["sleep"], "cpu-1", started, lambda task, s=started: s)
            assert claimed is not None and claimed.id == job.id
            if i >= args.warmup:
                result.dispatch_floor_ms.append((started - now) / 1000)
            await asyncio.sleep(args.interval_ms / 1000)
    finally:
        await store.close()


def line(label: str, values: list[float], floor: list[float]) -> str:
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    f50, f99 = percentile(floor, 0.5), percentile(floor, 0.99)
    return (
        f"{label:<10} ahv p50 {p50:7.2f} ms  p99 {p99:7.2f} ms   "
        f"floor p50 {f50:6.2f} ms  p99 {f99:6.2f} ms   ahv/floor p50 {p50 / f50:5.2f}x"
    )


async def run(args: argparse.Namespace) -> Latencies:
    result = Latencies()
    with tempfile.TemporaryDirectory(prefix="ahv-latency-") as tmp:
        await measure_ahv(args, Path(tmp), result)
        await measure_store_floor(args, Path(tmp), result)
    return result


def report(args: argparse.Namespace, result: Latencies) -> list[str]:
    return [
        f"latency: {args.jobs} jobs (after {args.warmup} warm-up), one every "
        f"{args.interval_ms:g} ms, {args.slots} free slots, sleep task of 0 s",
        line("dispatch", result.dispatch_ms, result.dispatch_floor_ms),
        line("webhook", result.webhook_ms, result.webhook_floor_ms),
        "  dispatch = started_at - queued_at; floor = the same stamps around Store.enqueue then"
        " Store.claim called back to back",
        "  webhook = arrival - finished_at; floor = a bare aiohttp POST to the same receiver",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.warmup < 0 or args.slots < 1:
        parser.error("--jobs and --slots must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_uvloop()
    result = asyncio.run(run(args))
    print("\n".join(report(args, result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
