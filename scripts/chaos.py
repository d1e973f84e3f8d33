#!/usr/bin/env python3
"""Crash safety: a stream of jobs, a flaky webhook receiver, and `kill -9` of the server at
random moments, again and again. Nothing may be lost.

What runs
    The real server (`python -m ahv serve`, a subprocess on 127.0.0.1, `--port 0`) with one CPU
    backend of `--slots` slots serving image tasks with tiny ONNX models (`upscale` classical,
    `remove_background` with a tiny matting model, `scan_objects` with a tiny YOLO, all written
    by scripts/make_test_models.py's builders), the test-only `sleep` task (0.2-1.5 s, from
    tests/plugin_tasks.py) so that jobs are running when the kills land, and a tenth of jobs
    whose input is not an image (they must end `failed` with `unsupported_media_type`).
    Inputs come from a local file server in this process. Every job has a `webhook_url` on a
    flaky receiver, also in this process: it answers 500 to `--fail-rate` of the deliveries
    and sleeps past `webhooks.timeout_s` on `--timeout-rate` of them; it verifies every
    signature and records every delivery with its `webhook-id`.

    `--jobs` submissions are spread over the run at `--rate` a second, each with an
    `Idempotency-Key`, so a submission cut by a kill is retried safely (the figures say how
    many needed it, and how many of those had been committed before the kill). Meanwhile the
    server is killed with SIGKILL `--kills` times, after a random `--min-gap-s`..`--max-gap-s`
    each time, and started again on the same data dir (the port may change). Each kill waits
    (up to `--max-gap-s` more) for a `sleep` job that is running with at least 0.3 s of work
    left, so that kills land on running jobs: those jobs are known to have been cut. Then the
    script waits until every job is final and every webhook delivered, stops the server
    (SIGTERM), and checks the holds through the API, by reading the SQLite file and the
    server log.

Holds (exit status 1 if any fails)
    - 0 jobs lost: every acknowledged submission's job is there (API and SQLite), and each
      idempotency key made exactly one job;
    - 0 jobs left non-final (`queued` or `running`);
    - every job has exactly one final status: API = SQLite = every webhook body; the status
      is the expected one: `succeeded`, or `failed` with `unsupported_media_type` for the bad
      inputs. The one exception is `failed`/`worker_lost`, and only for a job whose attempts
      are all spent (attempts = max_attempts) and were all cut by kills (the server log shows
      a "requeued after a crash" for each earlier attempt, and attempts <= kills);
    - every job seen running when a kill landed ran again (attempts > 1), or is such a
      `worker_lost`: crash recovery requeues what a kill cut off;
    - every job has one `job.finished` outbox event, delivered at least once (a 2xx from the
      receiver), and every delivery of it carries that one `webhook-id` and a valid signature;
    - the server logs no ERROR and no traceback.

Figures: duplicate deliveries per 1,000 jobs (accepted deliveries beyond the first), and
re-executions per 1,000 jobs (jobs with attempts > 1: runs cut off by a kill and run again).

Run from the repository root:

    python scripts/chaos.py                           # 20 kills, 1,000 jobs: ~2.5-3 min
    python scripts/chaos.py --kills 3 --jobs 60       # the CI variant (tests/test_proof.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.proofkit import (
    API_KEY,
    FINAL,
    AhvServer,
    LocalFiles,
    base_config,
    serve_local,
    signature_ok,
    tiny_png,
)

TASKS = ["upscale", "remove_background", "scan_objects", "sleep"]
# A kill waits for a `sleep` job with at least this much work left, so that it surely cuts it.
CUT_MARGIN_S = 0.3
_CRASH_REQUEUE = re.compile(r"job ([0-9a-f]+): requeued after a crash")


@dataclass
class Options:
    kills: int = 20
    jobs: int = 1000
    rate: float = 0.0  # submissions a second; 0 = spread over the expected kill period
    slots: int = 3
    seed: int = 1
    min_gap_s: float = 1.0
    max_gap_s: float = 5.0
    fail_rate: float = 0.1
    timeout_rate: float = 0.05
    timeout_s: float = 900.0
    workdir: Path | None = None


@dataclass
class Delivery:
    job_id: str
    webhook_id: str
    status: str
    outcome: str  # ok (2xx answered), 500, timeout (slept past the sender's limit)
    signature_ok: bool


@dataclass
class Expected:
    task: str
    payload: dict[str, Any]
    status: str
    code: str | None = None


@dataclass
class Report:
    options: Options
    jobs: int = 0
    kills: int = 0
    lost: int = 0
    non_final: int = 0
    wrong_status: int = 0
    undelivered: int = 0
    duplicate_deliveries: int = 0
    reexecuted_jobs: int = 0
    extra_attempts: int = 0
    worker_lost: int = 0  # failed/worker_lost with every attempt cut by a kill
    cut: set[str] = field(default_factory=set)  # jobs seen running when a kill landed
    kills_on_running: int = 0
    submits_retried: int = 0
    submits_replayed: int = 0
    deliveries: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    expected: Counter[str] = field(default_factory=Counter)  # the plan's final statuses
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    def per_1000(self, count: int) -> float:
        return 1000.0 * count / self.jobs if self.jobs else 0.0

    def lines(self) -> list[str]:
        o = self.options
        return [
            f"chaos: {self.jobs} jobs, {self.kills} kills (SIGKILL), {o.slots} slots, "
            f"receiver 500 {o.fail_rate:.0%} / timeout {o.timeout_rate:.0%}, {self.wall_s:.0f} s",
            f"  jobs lost: {self.lost}",
            f"  jobs left non-final: {self.non_final}",
            f"  jobs with a wrong or second final status: {self.wrong_status}",
            f"  final webhooks never delivered: {self.undelivered}",
            f"  final statuses: {dict(sorted(self.statuses.items()))}",
            f"  duplicate deliveries: {self.duplicate_deliveries} "
            f"({self.per_1000(self.duplicate_deliveries):.1f} per 1,000 jobs)",
            f"  re-executions: {self.reexecuted_jobs} jobs "
            f"({self.per_1000(self.reexecuted_jobs):.1f} per 1,000 jobs), "
            f"{self.extra_attempts} extra attempts",
            f"  kills that landed on a running sleep job: {self.kills_on_running} of "
            f"{self.kills} ({len(self.cut)} jobs cut); worker_lost (all attempts cut): "
            f"{self.worker_lost}",
            f"  submissions retried after a kill: {self.submits_retried} "
            f"({self.submits_replayed} of them had been committed: idempotent replay)",
            f"  webhook attempts seen by the receiver: {dict(sorted(self.deliveries.items()))}",
            "  holds: " + ("all hold" if not self.failures else "FAILED"),
            *(f"    - {failure}" for failure in self.failures),
        ]


class FlakyReceiver:
    """Records every delivery; answers 500 or stalls past the sender's timeout at random."""

    def __init__(self, rng: random.Random, options: Options, stall_s: float) -> None:
        self.rng = rng
        self.options = options
        self.stall_s = stall_s
        self.deliveries: list[Delivery] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        doc = json.loads(body)
        roll = self.rng.random()
        outcome = "ok"
        if roll < self.options.fail_rate:
            outcome = "500"
        elif roll < self.options.fail_rate + self.options.timeout_rate:
            outcome = "timeout"
        self.deliveries.append(
            Delivery(
                job_id=doc["job_id"],
                webhook_id=request.headers.get("webhook-id", ""),
                status=doc["status"],
                outcome=outcome,
                signature_ok=signature_ok(request.headers, body),
            )
        )
        if outcome == "500":
            return web.Response(status=500)
        if outcome == "timeout":
            await asyncio.sleep(self.stall_s)
        return web.Response(text="ok")


@dataclass
class Live:
    """The server as the submitters see it: its URL, and whether it is up."""

    server: AhvServer
    up: asyncio.Event = field(default_factory=asyncio.Event)


def make_models(directory: Path) -> None:
    from scripts.tiny_models_images import make_matting
    from scripts.tiny_models_objects import make_yolo

    directory.mkdir(parents=True, exist_ok=True)
    make_matting(directory / "tiny_matting.onnx")
    make_yolo(directory / "tiny_yolo.onnx")


def server_config(data_dir: Path, models_dir: Path, options: Options) -> dict[str, Any]:
    return base_config(
        data_dir,
        queue={"poll_interval_s": 0.1, "retry_base_s": 0.1, "retry_max_s": 1.0, "max_attempts": 10},
        webhooks={
            "timeout_s": 1.0,
            "retry_base_s": 0.2,
            "retry_max_s": 2.0,
            "max_attempts": 30,
            "flush_on_shutdown_s": 0,
        },
        models={
            "dir": str(models_dir),
            "files": {n: {"file": f"{n}.onnx"} for n in ("tiny_matting", "tiny_yolo")},
        },
        images={"matting": "tiny_matting"},
        objects={"detector": "tiny_yolo"},
        backends=[{"name": "cpu", "slots": options.slots, "tasks": TASKS}],
    )


def plan_jobs(rng: random.Random, count: int, files: LocalFiles) -> list[Expected]:
    images = [files.add(f"img{i}.png", tiny_png(48 + 8 * i, 32 + 4 * i, seed=i)) for i in range(4)]
    not_image = files.add("notes.png", b"this is a text file, not an image\n" * 20)
    plan = []
    for i in range(count):
        image = images[i % len(images)]
        roll = rng.random()
        if i % 10 == 9:
            plan.append(
                Expected("upscale", {"image_url": not_image}, "failed", "unsupported_media_type")
            )
        elif roll < 0.35:
            plan.append(Expected("upscale", {"image_url": image, "scale": 2}, "succeeded"))
        elif roll < 0.55:
            plan.append(Expected("remove_background", {"image_url": image}, "succeeded"))
        elif roll < 0.7:
            plan.append(Expected("scan_objects", {"image_url": image}, "succeeded"))
        else:
            seconds = round(rng.uniform(0.2, 1.5), 2)
            plan.append(Expected("sleep", {"seconds": seconds, "steps": 10}, "succeeded"))
    return plan


@dataclass
class Submitted:
    job_ids: dict[int, str] = field(default_factory=dict)
    retried: int = 0
    replayed: int = 0
    refused: list[str] = field(default_factory=list)


async def submit_one(
    session: aiohttp.ClientSession,
    live: Live,
    index: int,
    body: bytes,
    done: Submitted,
) -> None:
    """Submit until acknowledged; a kill mid-request is retried with the same key."""
    headers = {
        "X-API-Key": API_KEY,
        "Content-Type": "application/json",
        "Idempotency-Key": f"chaos-{index}",
    }
    tries = 0
    while True:
        await live.up.wait()
        tries += 1
        try:
            async with session.post(
                f"{live.server.url}/v1/jobs", data=body, headers=headers
            ) as response:
                answer = await response.json(content_type=None)
                if response.status in (200, 202):
                    done.job_ids[index] = answer["job_id"]
                    if tries > 1:
                        done.retried += 1
                        done.replayed += response.status == 200
                    return
                if response.status not in (429, 503):
                    done.refused.append(f"job {index}: HTTP {response.status} {answer}")
                    return
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
            pass  # the server was killed under us: wait until it is back, send again
        await asyncio.sleep(0.05)


async def submit_all(
    live: Live, plan: list[Expected], webhook: str, rate: float, done: Submitted
) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = []
        started = time.monotonic()
        for index, job in enumerate(plan):
            # Open loop at `rate`: a submission stuck on a kill does not hold up the next.
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            request = {"task": job.task, "payload": job.payload, "webhook_url": webhook}
            body = json.dumps(request).encode()
            tasks.append(asyncio.create_task(submit_one(session, live, index, body, done)))
        await asyncio.gather(*tasks)


async def running_sleep_jobs(
    session: aiohttp.ClientSession, live: Live, plan: list[Expected], done: Submitted
) -> list[str]:
    """Ids of `sleep` jobs running now with at least CUT_MARGIN_S of their sleep left."""
    seconds = {
        job_id: float(plan[index].payload["seconds"])
        for index, job_id in list(done.job_ids.items())
        if plan[index].task == "sleep"
    }
    try:
        async with session.get(
            f"{live.server.url}/v1/jobs",
            params={"status": "running", "limit": "100"},
            headers={"X-API-Key": API_KEY},
        ) as response:
            listing = await response.json()
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
        return []
    now_ms = time.time() * 1000
    return [
        doc["job_id"]
        for doc in listing.get("jobs", [])
        if doc["job_id"] in seconds
        and doc.get("started_at_ms")
        # The sleep starts after started_at, so it ends no sooner than this.
        and doc["started_at_ms"] + 1000 * seconds[doc["job_id"]] - now_ms > 1000 * CUT_MARGIN_S
    ]


async def kill_loop(
    live: Live,
    options: Options,
    rng: random.Random,
    plan: list[Expected],
    done: Submitted,
    report: Report,
) -> int:
    """SIGKILL the server `options.kills` times. Each kill waits (up to max_gap_s more) for
    a sleep job with work left, so that the run surely cuts running jobs; those are recorded
    in `report.cut`, and must run again."""
    kills = 0
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(options.kills):
            await asyncio.sleep(rng.uniform(options.min_gap_s, options.max_gap_s))
            deadline = time.monotonic() + options.max_gap_s
            cut: list[str] = []
            while not cut and time.monotonic() < deadline:
                cut = await running_sleep_jobs(session, live, plan, done)
                if not cut:
                    await asyncio.sleep(0.05)
            live.up.clear()
            live.server.kill9()
            kills += 1
            report.cut.update(cut)
            report.kills_on_running += bool(cut)
            await asyncio.to_thread(live.server.start)
            live.up.set()
    return kills


async def wait_settled(
    live: Live, receiver: FlakyReceiver, job_ids: set[str], timeout_s: float
) -> list[str]:
    """Wait until no job is queued or running, no webhook pending, and every job's webhook
    was accepted; the problems left when `timeout_s` runs out."""
    deadline = time.monotonic() + timeout_s
    problems: list[str] = []
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(
                f"{live.server.url}/stats", headers={"X-API-Key": API_KEY}
            ) as response:
                stats = await response.json()
            counts, hooks = stats["counts"], stats["webhooks"]
            accepted = {d.job_id for d in receiver.deliveries if d.outcome == "ok"}
            problems = []
            if counts.get("queued", 0) or counts.get("running", 0):
                problems.append(f"jobs not final: {counts}")
            if hooks.get("pending", 0):
                problems.append(f"webhooks pending: {hooks}")
            if job_ids - accepted:
                problems.append(f"{len(job_ids - accepted)} jobs without an accepted webhook")
            if not problems:
                return []
            await asyncio.sleep(0.25)
    return problems


async def read_documents(live: Live, job_ids: list[str]) -> dict[str, dict[str, Any] | None]:
    docs: dict[str, dict[str, Any] | None] = {}
    async with aiohttp.ClientSession() as session:
        for job_id in job_ids:
            async with session.get(
                f"{live.server.url}/v1/jobs/{job_id}", headers={"X-API-Key": API_KEY}
            ) as response:
                docs[job_id] = await response.json() if response.status == 200 else None
    return docs


def read_sqlite(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        jobs = {
            row["id"]: dict(row)
            for row in conn.execute(
                "SELECT id, idempotency_key, status, attempts, max_attempts, error FROM jobs"
            ).fetchall()
        }
        outbox: dict[str, list[dict[str, Any]]] = {}
        for row in conn.execute(
            "SELECT job_id, event_id, event, state FROM outbox WHERE event = 'job.finished'"
        ).fetchall():
            outbox.setdefault(row["job_id"], []).append(dict(row))
    finally:
        conn.close()
    return jobs, outbox


def check_outcome(
    report: Report,
    job: Expected,
    job_id: str,
    row: dict[str, Any],
    api_status: str,
    crash_requeues: int,
) -> None:
    """The job's final status is the planned one, the same in the API; a job a kill cut
    ran again."""
    status = row["status"]
    code = json.loads(row["error"])["code"] if row["error"] else None
    wanted = status == job.status and code == job.code
    # worker_lost is right only when kills cut every one of the job's attempts: each
    # earlier attempt was requeued after a crash, and the last one was cut too.
    lost_worker = (
        status == "failed"
        and code == "worker_lost"
        and row["attempts"] == row["max_attempts"] <= report.kills
        and crash_requeues == row["attempts"] - 1
    )
    report.worker_lost += lost_worker
    if api_status != status or not (wanted or lost_worker):
        report.wrong_status += 1
        report.failures.append(
            f"job {job_id} ({job.task}): API {api_status}, SQLite {status} {code} "
            f"after {row['attempts']} of {row['max_attempts']} attempts "
            f"({crash_requeues} requeued after a crash), "
            f"expected {job.status} {job.code or ''}".rstrip()
        )
    if job_id in report.cut and row["attempts"] < 2 and not lost_worker:
        report.failures.append(
            f"job {job_id} was cut by a kill but never ran again: {status} {code}"
        )


def check(
    report: Report,
    plan: list[Expected],
    done: Submitted,
    docs: dict[str, dict[str, Any] | None],
    jobs: dict[str, dict[str, Any]],
    outbox: dict[str, list[dict[str, Any]]],
    deliveries: list[Delivery],
    server_log: str,
) -> None:
    fail = report.failures
    crash_requeues = Counter(_CRASH_REQUEUE.findall(server_log))
    fail.extend(done.refused)
    by_key = Counter(row["idempotency_key"] for row in jobs.values())
    doubled = [key for key, n in by_key.items() if n > 1]
    if doubled:
        fail.append(f"idempotency keys with more than one job: {doubled[:5]}")
    if len(jobs) != len(done.job_ids):
        fail.append(f"{len(jobs)} jobs in SQLite for {len(done.job_ids)} submissions")
    seen: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        seen.setdefault(delivery.job_id, []).append(delivery)
        report.deliveries[delivery.outcome] += 1
    for index, job in enumerate(plan):
        job_id = done.job_ids.get(index)
        row = jobs.get(job_id or "")
        doc = docs.get(job_id or "")
        if job_id is None or row is None or doc is None:
            report.lost += 1
            fail.append(f"job {index} ({job_id}) lost")
            continue
        status = row["status"]
        report.statuses[status] += 1
        if status not in FINAL:
            report.non_final += 1
            fail.append(f"job {job_id} left {status}")
        if row["attempts"] > 1:
            report.reexecuted_jobs += 1
            report.extra_attempts += row["attempts"] - 1
        hooks = seen.get(job_id, [])
        events = outbox.get(job_id, [])
        check_outcome(report, job, job_id, row, doc["status"], crash_requeues[job_id])
        if {h.status for h in hooks} - {status}:
            report.wrong_status += 1
            fail.append(f"job {job_id}: webhooks say {sorted({h.status for h in hooks})}")
        accepted = [h for h in hooks if h.outcome == "ok"]
        if not accepted or len(events) != 1 or events[0]["state"] != "delivered":
            report.undelivered += 1
            fail.append(f"job {job_id}: {len(accepted)} accepted deliveries, outbox {events}")
        report.duplicate_deliveries += max(0, len(accepted) - 1)
        ids = {h.webhook_id for h in hooks}
        if events and ids != {events[0]["event_id"]}:
            fail.append(f"job {job_id}: webhook-ids {sorted(ids)} for one event")
        if not all(h.signature_ok for h in hooks):
            fail.append(f"job {job_id}: a delivery with a bad signature")


async def run(options: Options) -> Report:
    """One chaos run; the report holds the figures and the failed holds."""
    rng = random.Random(options.seed)
    report = Report(options=options)
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        if options.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ahv-chaos-")))
        else:
            workdir = options.workdir
        await asyncio.to_thread(make_models, workdir / "models")
        server = AhvServer(
            server_config(workdir / "data", workdir / "models", options), workdir / "server"
        )
        receiver = FlakyReceiver(rng, options, stall_s=1.5)
        files = LocalFiles()
        await files.start()
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        hook_runner, hook_base = await serve_local(app)
        webhook = f"{hook_base}/hook"
        live = Live(server)
        try:
            await asyncio.to_thread(server.start)
            live.up.set()
            plan = plan_jobs(rng, options.jobs, files)
            report.expected.update(job.status for job in plan)
            mean_gap_s = (options.min_gap_s + options.max_gap_s) / 2
            rate = options.rate or max(1.0, options.jobs / max(1.0, options.kills * mean_gap_s))
            done = Submitted()
            kills_task = asyncio.create_task(kill_loop(live, options, rng, plan, done, report))
            await submit_all(live, plan, webhook, rate, done)
            report.kills = await kills_task
            report.jobs = len(plan)
            report.submits_retried, report.submits_replayed = done.retried, done.replayed
            problems = await wait_settled(
                live, receiver, set(done.job_ids.values()), options.timeout_s
            )
            report.failures.extend(problems)
            docs = await read_documents(live, list(done.job_ids.values()))
            exit_status = await asyncio.to_thread(server.stop)
            if exit_status != 0:
                report.failures.append(f"the server exited with {exit_status} on SIGTERM")
            jobs, outbox = read_sqlite(workdir / "data" / "ahv.sqlite3")
            server_log = server.log_path.read_text(errors="replace")
            check(report, plan, done, docs, jobs, outbox, receiver.deliveries, server_log)
            report.failures.extend(f"server log: {line}" for line in server.log_problems()[:10])
        finally:
            server.stop()
            await hook_runner.cleanup()
            await files.stop()
    report.wall_s = time.monotonic() - began
    return report


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    defaults = Options()
    parser.add_argument("--kills", type=int, default=defaults.kills, help="SIGKILLs of the server")
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help="jobs submitted")
    parser.add_argument("--rate", type=float, default=0.0, help="submissions a second")
    parser.add_argument("--slots", type=int, default=defaults.slots, help="backend slots")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--min-gap-s", type=float, default=defaults.min_gap_s)
    parser.add_argument("--max-gap-s", type=float, default=defaults.max_gap_s)
    parser.add_argument("--fail-rate", type=float, default=defaults.fail_rate)
    parser.add_argument("--timeout-rate", type=float, default=defaults.timeout_rate)
    parser.add_argument("--timeout-s", type=float, default=defaults.timeout_s)
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.kills < 0 or args.min_gap_s > args.max_gap_s:
        parser.error("--jobs >= 1, --kills >= 0, --min-gap-s <= --max-gap-s")
    return Options(**{k: v for k, v in vars(args).items()})


def main(argv: list[str] | None = None) -> int:
    report = asyncio.run(run(parse_args(argv)))
    print("\n".join(report.lines()))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
