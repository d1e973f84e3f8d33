#!/usr/bin/env python3
"""Soak: thousands of small jobs in a row, a tenth failing on bad input; nothing may leak.

What runs
    The real server (`python -m ahv serve`, a subprocess on 127.0.0.1, `--port 0`, its TMPDIR
    pointed at a directory of its own) with one CPU backend of `--slots` slots serving
    `upscale` (classical Lanczos). `--concurrency` clients each run jobs one after the other
    until `--jobs` are done: `POST /v1/jobs` for an `upscale` ×2 of a small PNG served from a
    local file server, then wait for the job's signed `job.finished` webhook at a local
    receiver. Every `--fail-every`-th job's input is a text file, which must end `failed`
    with `unsupported_media_type`, so the error paths are soaked too.

    The server's RSS and open file descriptors (from /proc) are read after `--warmup` jobs and
    at the end (and every 100 jobs, for the maximum).

Holds (exit status 1 if any fails)
    - RSS at the end is less than `--max-rss-growth-mb` (50) above RSS after the warm-up;
    - open file descriptors at the end are within `--max-fd-drift` (5) of the warm-up count;
    - no temporary file is left: nothing in the server's TMPDIR, no `*.part` file and no
      `.video-*` work dir in its files dir;
    - every job ended as planned (succeeded, or failed with `unsupported_media_type`), and
      its webhook arrived with a valid signature;
    - the server exits 0 on SIGTERM and logs no ERROR and no traceback.

Run from the repository root:

    python scripts/soak.py                             # 2,000 jobs: ~10-30 s
    python scripts/soak.py --jobs 200 --warmup 50      # the CI variant (tests/test_proof.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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
    AhvServer,
    LocalFiles,
    base_config,
    install_uvloop,
    open_fds,
    rss_mb,
    serve_local,
    signature_ok,
    tiny_png,
)


@dataclass
class Options:
    jobs: int = 2000
    warmup: int = 200
    concurrency: int = 2
    slots: int = 2
    fail_every: int = 10
    max_rss_growth_mb: float = 50.0
    max_fd_drift: int = 5
    workdir: Path | None = None


@dataclass
class Report:
    options: Options
    done: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    rss_warm_mb: float = 0.0
    rss_end_mb: float = 0.0
    rss_max_mb: float = 0.0
    fds_warm: int = 0
    fds_end: int = 0
    leftovers: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    failures: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        o = self.options
        return [
            f"soak: {self.done} jobs in a row ({o.concurrency} clients, {o.slots} slots), every "
            f"{o.fail_every}th on bad input, {self.wall_s:.0f} s "
            f"({self.done / max(self.wall_s, 1e-9):.1f} jobs/s)",
            f"  outcomes: {dict(sorted(self.outcomes.items()))}",
            f"  server RSS: after {o.warmup} jobs {self.rss_warm_mb:.1f} MB, end "
            f"{self.rss_end_mb:.1f} MB (growth {self.rss_end_mb - self.rss_warm_mb:+.1f} MB, "
            f"limit {o.max_rss_growth_mb:g}), max {self.rss_max_mb:.1f} MB",
            f"  open fds: after warm-up {self.fds_warm}, end {self.fds_end} "
            f"(drift {self.fds_end - self.fds_warm:+d}, limit ±{o.max_fd_drift})",
            f"  temp files left: {len(self.leftovers)}",
            "  holds: " + ("all hold" if not self.failures else "FAILED"),
            *(f"    - {failure}" for failure in self.failures),
        ]


class Receiver:
    """Resolves each job's future when its `job.finished` webhook arrives."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.early: dict[str, dict[str, Any]] = {}
        self.bad_signatures = 0

    def expect(self, job_id: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if job_id in self.early:  # the webhook beat the 202 to us
            future.set_result(self.early.pop(job_id))
        else:
            self.waiting[job_id] = future
        return future

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not signature_ok(request.headers, body):
            self.bad_signatures += 1
        doc = json.loads(body)
        future = self.waiting.pop(doc["job_id"], None)
        if future is None:
            self.early[doc["job_id"]] = doc
        elif not future.done():
            future.set_result(doc)
        return web.Response(text="ok")


# ONNX Runtime keeps one small session-id file in TMPDIR (`.ses`: an expiry time and an id),
# made by the first session of the process and reused: not one per job, and not ahv's.
_NOT_OURS = frozenset({".ses"})


def leftovers(server: AhvServer, files_dir: Path) -> list[str]:
    found = [str(p) for p in server.tmp_dir.iterdir() if p.name not in _NOT_OURS]
    found += [str(p) for p in files_dir.glob("*.part")]
    found += [str(p) for p in files_dir.glob(".video-*")]
    return found


async def run(options: Options) -> Report:
    report = Report(options=options)
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        if options.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ahv-soak-")))
        else:
            workdir = options.workdir
        config = base_config(
            workdir / "data",
            queue={"poll_interval_s": 0.2},
            backends=[{"name": "cpu", "slots": options.slots, "tasks": ["upscale"]}],
        )
        server = AhvServer(config, workdir / "server")
        files = LocalFiles()
        await files.start()
        receiver = Receiver()
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner, base = await serve_local(app)
        webhook = f"{base}/hook"
        good = [files.add(f"in{i}.png", tiny_png(64, 48, seed=i)) for i in range(8)]
        bad = files.add("notes.png", b"a text file, not an image\n" * 10)
        exit_status: int | None = None
        try:
            await asyncio.to_thread(server.start)
            counter = iter(range(options.jobs))

            async def client(session: aiohttp.ClientSession) -> None:
                for index in counter:
                    failing = index % options.fail_every == options.fail_every - 1
                    url = bad if failing else good[index % len(good)]
                    request = {
                        "task": "upscale",
                        "payload": {"image_url": url, "scale": 2},
                        "webhook_url": webhook,
                    }
                    async with session.post(
                        f"{server.url}/v1/jobs", json=request, headers={"X-API-Key": API_KEY}
                    ) as response:
                        answer = await response.json()
                        if response.status != 202:
                            report.failures.append(f"job {index}: HTTP {response.status} {answer}")
                            return
                    doc = await asyncio.wait_for(receiver.expect(answer["job_id"]), 60)
                    code = (doc.get("error") or {}).get("code")
                    outcome = f"{doc['status']}/{code}" if code else doc["status"]
                    report.outcomes[outcome] += 1
                    wanted = "failed/unsupported_media_type" if failing else "succeeded"
                    if outcome != wanted:
                        report.failures.append(f"job {index}: {outcome}, expected {wanted}")
                    report.done += 1
                    if report.done == options.warmup:
                        report.rss_warm_mb, report.fds_warm = (
                            rss_mb(server.pid),
                            open_fds(server.pid),
                        )
                    if report.done % 100 == 0:
                        report.rss_max_mb = max(report.rss_max_mb, rss_mb(server.pid))

            async with aiohttp.ClientSession() as session:
                await asyncio.gather(*(client(session) for _ in range(options.concurrency)))
            report.rss_end_mb, report.fds_end = rss_mb(server.pid), open_fds(server.pid)
            report.rss_max_mb = max(report.rss_max_mb, report.rss_end_mb)
            report.leftovers = leftovers(server, workdir / "data" / "files")
        finally:
            exit_status = await asyncio.to_thread(server.stop)
            await runner.cleanup()
            await files.stop()
        check(report, options, exit_status, receiver.bad_signatures, server.log_problems())
    report.wall_s = time.monotonic() - began
    return report


def check(
    report: Report, options: Options, exit_status: int | None, bad_sigs: int, problems: list[str]
) -> None:
    fail = report.failures
    if report.done != options.jobs:
        fail.append(f"{report.done} of {options.jobs} jobs done")
    growth = report.rss_end_mb - report.rss_warm_mb
    if growth >= options.max_rss_growth_mb:
        fail.append(f"RSS grew {growth:.1f} MB after the warm-up")
    if abs(report.fds_end - report.fds_warm) > options.max_fd_drift:
        fail.append(f"open fds went from {report.fds_warm} to {report.fds_end}")
    if report.leftovers:
        fail.append(f"temporary files left: {report.leftovers[:5]}")
    if bad_sigs:
        fail.append(f"{bad_sigs} webhooks with a bad signature")
    if exit_status != 0:
        fail.append(f"the server exited with {exit_status} on SIGTERM")
    fail.extend(f"server log: {line}" for line in problems[:10])


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    d = Options()
    parser.add_argument("--jobs", type=int, default=d.jobs)
    parser.add_argument("--warmup", type=int, default=d.warmup, help="jobs before the baseline")
    parser.add_argument("--concurrency", type=int, default=d.concurrency)
    parser.add_argument("--slots", type=int, default=d.slots)
    parser.add_argument("--fail-every", type=int, default=d.fail_every)
    parser.add_argument("--max-rss-growth-mb", type=float, default=d.max_rss_growth_mb)
    parser.add_argument("--max-fd-drift", type=int, default=d.max_fd_drift)
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.jobs or args.fail_every < 2:
        parser.error("need 1 <= --warmup < --jobs and --fail-every >= 2")
    return Options(**vars(args))


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    install_uvloop()
    report = asyncio.run(run(options))
    print("\n".join(report.lines()))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
