#!/usr/bin/env python3
"""Overload: job submissions at a fixed rate far above what the backends can run.

What runs
    The real server (`python -m ahv serve`, a subprocess on 127.0.0.1, `--port 0`) whose only
    backend is slow: `--slots` slots of the test-only `sleep` task (tests/plugin_tasks.py),
    each job sleeping `--job-s` seconds, so the backends run `slots / job_s` jobs a second,
    and whose queue is small (`queue.max_depth` = `--max-depth`). An open-loop load generator
    sends `POST /v1/jobs` at `--rate` a second for `--duration-s` seconds: each request is sent
    at its scheduled time whether or not earlier ones were answered, and its latency counts
    from that scheduled time (so a stalled server cannot hide its stall by slowing the sender
    down). Every second a sampler reads `queue_depth` from `GET /diag/backends` and the
    server's RSS and open file descriptors from /proc.

Holds (exit status 1 if any fails)
    - every answer is 202 or the documented 429, and every 429 carries `Retry-After` (whole
      seconds >= 1) and the error body `{"ok": false, "error": {"code", "message"}}` with the
      code `queue_full`: the run's key has no rate limit and no queue limit of its own, so a
      `rate_limited` (or any other code) would be a wrong answer; no other status, no
      connection error;
    - the queue really filled: there were 429s, and the sampled queue depth reached
      `queue.max_depth` at least once (else the run did not test overload);
    - the sampled queue depth never exceeds `queue.max_depth`;
    - server RSS at the end is within `--max-rss-growth-mb` of its value after the first
      tenth of the run (memory bounded while refusing work);
    - after a SIGTERM stop, the SQLite file holds one job per 202 (each acknowledged job is
      durable) and the server exited 0;
    - the generator kept up: it sent at least 80 % of the planned requests on time (else the
      run says nothing about the server);
    - the server logs no ERROR and no traceback.

Figures: answers by status (and 429s by error code), p50/p99 submit latency (all, 202 only,
429 only), max queue depth, RSS start/max/end, open fds start/end.

Run from the repository root:

    python scripts/load.py                               # 500/s for 60 s: ~75 s
    python scripts/load.py --duration-s 5 --rate 200      # the CI variant (tests/test_proof.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.proofkit import (
    API_KEY,
    AhvServer,
    base_config,
    install_uvloop,
    open_fds,
    percentile,
    rss_mb,
)


@dataclass
class Options:
    rate: float = 500.0
    duration_s: float = 60.0
    max_depth: int = 100
    slots: int = 2
    job_s: float = 0.5
    connections: int = 256
    max_rss_growth_mb: float = 50.0
    workdir: Path | None = None


@dataclass
class Answer:
    status: str
    latency_ms: float
    problem: str | None = None  # a 429 without Retry-After or the error shape, a bad body
    code: str | None = None  # a 429's error code


@dataclass
class Report:
    options: Options
    answers: list[Answer] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    late: int = 0  # requests sent more than 100 ms after their scheduled time
    rows: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def statuses(self) -> Counter[str]:
        return Counter(a.status for a in self.answers)

    @property
    def codes(self) -> Counter[str]:
        """The 429s by error code."""
        return Counter(str(a.code) for a in self.answers if a.status == "429")

    def latency(self, status: str | None = None) -> tuple[float, float]:
        values = [a.latency_ms for a in self.answers if status is None or a.status == status]
        return percentile(values, 0.50), percentile(values, 0.99)

    def lines(self) -> list[str]:
        o = self.options
        capacity = o.slots / o.job_s
        lines = [
            f"load: {o.rate:g} submissions/s for {o.duration_s:g} s (open loop) against "
            f"{o.slots} slots x {o.job_s:g} s jobs = {capacity:g} jobs/s, "
            f"queue.max_depth {o.max_depth}",
            f"  answers: {dict(sorted(self.statuses.items()))} ({self.late} sent > 100 ms late), "
            f"429 codes: {dict(sorted(self.codes.items()))}",
        ]
        for label, status in (("all", None), ("202", "202"), ("429", "429")):
            p50, p99 = self.latency(status)
            lines.append(f"  submit latency {label:>3}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        if self.rss:
            warm = self.rss[max(0, len(self.rss) // 10)]
            lines.append(
                f"  server RSS: start {self.rss[0]:.1f} MB, after warm-up {warm:.1f} MB, "
                f"max {max(self.rss):.1f} MB, end {self.rss[-1]:.1f} MB"
            )
        if self.fds:
            lines.append(
                f"  open fds: start {self.fds[0]}, max {max(self.fds)}, end {self.fds[-1]}"
            )
        lines.append(f"  max sampled queue depth: {max(self.depths, default=0)}")
        lines.append(
            f"  jobs in SQLite after stop: {self.rows} (202 answers: {self.statuses['202']})"
        )
        lines.append("  holds: " + ("all hold" if not self.failures else "FAILED"))
        lines.extend(f"    - {failure}" for failure in self.failures)
        return lines


def server_config(data_dir: Path, options: Options) -> dict[str, Any]:
    return base_config(
        data_dir,
        queue={"max_depth": options.max_depth, "poll_interval_s": 0.1},
        backends=[{"name": "cpu", "slots": options.slots, "tasks": ["sleep"]}],
    )


def judge(headers: Any, raw: bytes) -> tuple[str | None, str | None]:
    """A 429 answer's error code, and what is wrong with it (None when it is as documented:
    `queue_full`, the only limit this run sets)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None, f"429 body is not JSON: {raw[:100]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    retry_after = headers.get("Retry-After", "")
    if not retry_after.isdigit() or int(retry_after) < 1:
        return code, f"429 without a valid Retry-After: {retry_after!r}"
    if (
        set(body) != {"ok", "error"}
        or body["ok"] is not False
        or not isinstance(error, dict)
        or set(error) != {"code", "message"}
        or not error["message"]
    ):
        return code, f"429 body not in the documented shape: {body}"
    if code != "queue_full":
        return code, f"429 with code {code!r}, not queue_full (no other limit is set): {body}"
    return code, None


async def send(
    session: aiohttp.ClientSession, url: str, body: bytes, scheduled: float, report: Report
) -> None:
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    problem = code = None
    try:
        async with session.post(url, data=body, headers=headers) as response:
            raw = await response.read()
            status = str(response.status)
            if response.status == 429:
                code, problem = judge(response.headers, raw)
            elif response.status == 202:
                if "job_id" not in json.loads(raw):
                    problem = f"202 without a job_id: {raw[:100]!r}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        status = type(exc).__name__
    report.answers.append(Answer(status, (time.perf_counter() - scheduled) * 1000, problem, code))


async def sample(server: AhvServer, report: Report, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                report.rss.append(rss_mb(server.pid))
                report.fds.append(open_fds(server.pid))
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    f"{server.url}/diag/backends", headers={"X-API-Key": API_KEY}
                ) as response:
                    report.depths.append(int((await response.json())["queue_depth"]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def drive(server: AhvServer, options: Options, report: Report) -> None:
    request = {"task": "sleep", "payload": {"seconds": options.job_s, "steps": 5}}
    body = json.dumps(request).encode()
    url = f"{server.url}/v1/jobs"
    total = int(options.rate * options.duration_s)
    connector = aiohttp.TCPConnector(limit=options.connections)
    timeout = aiohttp.ClientTimeout(total=30)
    stop = asyncio.Event()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        sampler = asyncio.create_task(sample(server, report, stop))
        pending: set[asyncio.Task[None]] = set()
        started = time.perf_counter()
        for i in range(total):
            scheduled = started + i / options.rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                report.late += 1
            task = asyncio.create_task(send(session, url, body, scheduled, report))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        stop.set()
        await sampler


def check(report: Report, options: Options, exit_status: int | None, problems: list[str]) -> None:
    fail = report.failures
    other = {s: n for s, n in report.statuses.items() if s not in ("202", "429")}
    if other:
        fail.append(f"answers other than 202/429: {other}")
    bad = [a.problem for a in report.answers if a.problem]
    if bad:
        fail.append(f"{len(bad)} answers not as documented, e.g. {bad[0]}")
    if max(report.depths, default=0) > options.max_depth:
        fail.append(f"queue depth {max(report.depths)} > max_depth {options.max_depth}")
    # Without a full queue the run says nothing about overload.
    if not report.statuses["429"] or max(report.depths, default=0) < options.max_depth:
        fail.append(
            f"the queue never filled: {report.statuses['429']} 429s, max sampled depth "
            f"{max(report.depths, default=0)} < max_depth {options.max_depth}"
        )
    if report.rss:
        growth = report.rss[-1] - report.rss[max(0, len(report.rss) // 10)]
        if growth > options.max_rss_growth_mb:
            fail.append(f"RSS grew {growth:.1f} MB after warm-up")
    if report.rows != report.statuses["202"]:
        fail.append(f"{report.rows} jobs in SQLite for {report.statuses['202']} 202 answers")
    if exit_status != 0:
        fail.append(f"the server exited with {exit_status} on SIGTERM")
    planned = int(options.rate * options.duration_s)
    if report.late > 0.2 * planned:
        fail.append(f"the load generator fell behind: {report.late} of {planned} sent late")
    fail.extend(f"server log: {line}" for line in problems[:10])


async def run(options: Options) -> Report:
    report = Report(options=options)
    with contextlib.ExitStack() as stack:
        if options.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ahv-load-")))
        else:
            workdir = options.workdir
        server = AhvServer(server_config(workdir / "data", options), workdir / "server")
        try:
            await asyncio.to_thread(server.start)
            await drive(server, options, report)
        finally:
            exit_status = await asyncio.to_thread(server.stop)
        conn = sqlite3.connect(workdir / "data" / "ahv.sqlite3")
        try:
            report.rows = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        finally:
            conn.close()
        check(report, options, exit_status, server.log_problems())
    return report


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    d = Options()
    parser.add_argument("--rate", type=float, default=d.rate, help="submissions a second")
    parser.add_argument("--duration-s", type=float, default=d.duration_s)
    parser.add_argument("--max-depth", type=int, default=d.max_depth, help="queue.max_depth")
    parser.add_argument("--slots", type=int, default=d.slots)
    parser.add_argument("--job-s", type=float, default=d.job_s, help="seconds each job runs")
    parser.add_argument("--connections", type=int, default=d.connections)
    parser.add_argument("--max-rss-growth-mb", type=float, default=d.max_rss_growth_mb)
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration_s <= 0 or args.max_depth < 1:
        parser.error("--rate, --duration-s and --max-depth must be positive")
    return Options(**vars(args))


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    install_uvloop()
    report = asyncio.run(run(options))
    print("\n".join(report.lines()))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
