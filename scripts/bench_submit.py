#!/usr/bin/env python3
"""Benchmark durable `POST /v1/jobs`: ahv against a bare aiohttp+SQLite ceiling, same run.

What is measured
    Requests per second, and p50/p99 latency, of job submissions with `--concurrency`
    (default 64) concurrent clients on loopback, for `--seconds` (default 10) after a
    `--warmup` (default 2 s) whose requests are not counted. Every answer must be 202; any
    other status, and any connection error, is counted as an error and listed.

The two servers, each a subprocess started fresh (new data directory) for each measurement,
and never running at the same time:

- ceiling: a minimal aiohttp app on uvloop (this file, run with `--baseline-server`) with one
  POST handler that parses the JSON body and inserts one row (id, body) into a SQLite file in
  WAL mode with synchronous=NORMAL (ahv's own durability setting), committing before it
  answers 202. Written the plain, common way: aiosqlite, one connection, execute + commit per
  request. No auth, no validation, no queue bookkeeping: the most a Python server can do.
- ahv: the real server, `python -m ahv serve --config <tmp toml> --port 0`, found through the
  `ahv listening on http://HOST:PORT` line it prints. Its config: a temporary data_dir, one
  client key, queue.max_depth 10,000,000, and one backend with one slot serving `upscale`.
  The benchmark submits `upscale` jobs whose `image_url` points at a loopback socket that
  this script holds open and never accepts on (`fetch.allowed_networks` lets 127.0.0.1 in).
  So the first job claimed occupies the only slot for the whole run (its download waits
  without ever getting data), and every later job stays queued: the server does just what a
  busy production server does on submit (auth, validation, URL check, ETA and queue
  position, group-committed insert), with no background retry churn. A stand-in for
  "the GPU is busy"; failing jobs (e.g. an unreachable image_url) would instead add a claim
  and a finish transaction per job, which is not what is being measured here.

Both servers get byte-identical requests from the same load generator (aiohttp client on
uvloop, one connection per client). After each measurement the server is stopped and its
SQLite file is counted: the number of rows must equal the number of 202 answers (acked =
durable). Lines the servers log at WARNING or above are printed at the end, and so are the
CPU cores the server process (all threads) and the load generator used in the measured window,
which tell a CPU-bound run from one that waits.

The result is the ratio ahv/ceiling of throughput, against a goal of 0.7. The load generator
and the server share the machine's cores (two on the reference box), so absolute numbers
understate both servers; the ratio is what to compare. Anything else running on the machine
moves single runs by 10-20 %; `--rounds 2` or more interleaves the servers and pools the runs.
Exit status is 0 whatever the ratio (this is a report); 1 when a server fails to start.

Run from the repository root:

    python scripts/bench_submit.py                      # ~30 s
    python scripts/bench_submit.py --rounds 2           # ceiling, ahv, ceiling, ahv
    python scripts/bench_submit.py --seconds 20 --concurrency 128
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
API_KEY = "bench-key-0123456789abcdef"
WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
GOAL = 0.7
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
# `[^\s"]`: with --log-format json the line is JSON and the URL ends at its closing quote.
LISTENING = re.compile(r"listening on (http://[^\s\"]+)")
LOG_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")


class BenchError(Exception):
    """A server could not be started; the message says which and why."""


# -- the ceiling: a bare aiohttp + aiosqlite insert handler ----------------------------------


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve_baseline(db_path: str, host: str, port: int) -> None:
    import aiosqlite

    db = await aiosqlite.connect(db_path)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    await db.commit()

    async def submit(request: web.Request) -> web.Response:
        body = await request.json()
        job_id = uuid.uuid4().hex
        await db.execute("INSERT INTO jobs (id, body) VALUES (?, ?)", (job_id, json.dumps(body)))
        await db.commit()
        return web.json_response({"job_id": job_id, "status": "queued"}, status=202)

    app = web.Application()
    app.router.add_post("/v1/jobs", submit)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    print(f"baseline listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await db.close()


# -- server subprocesses ---------------------------------------------------------------------


class Server:
    """A server subprocess whose stdout/stderr go to files in `workdir`."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start the process; return its base URL once it says it is listening."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = LISTENING.search(self.stdout_path.read_text(errors="replace"))
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with status {self.proc.returncode} before listening:\n"
                    + self.tail()
                )
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not print its listening line in time:\n" + self.tail())

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def tail(self, lines: int = 20) -> str:
        text = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        if not self.stderr_path.exists():
            return []
        text = self.stderr_path.read_text(errors="replace")
        return [line for line in text.splitlines() if LOG_PROBLEM.search(line)]


def ahv_config(data_dir: Path) -> str:
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
max_depth = 10000000
task_timeout_s = 3600

[webhooks]
flush_on_shutdown_s = 0

[fetch]
allowed_networks = ["127.0.0.1/32"]
read_timeout_s = 3600
total_timeout_s = 3600

[[backends]]
name = "cpu"
device = "cpu"
slots = 1
tasks = ["upscale"]
"""


def count_rows(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


# -- the load generator ----------------------------------------------------------------------


@dataclass
class Measurement:
    name: str
    window_s: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # every request, warm-up included
    acked: int = 0  # 202 answers, warm-up included
    rows: int | None = None  # rows in the server's SQLite file after it stopped
    row_detail: str = ""
    server_cpu: float | None = None  # CPU cores the server used in the window
    client_cpu: float | None = None  # CPU cores the load generator used in the window
    log_problems: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != "202")

    @property
    def rate(self) -> float:
        return self.requests / self.window_s if self.window_s else 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..1)."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values), max(1, math.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a process has used; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def drive(
    name: str,
    url: str,
    body: bytes,
    *,
    server_pid: int,
    concurrency: int,
    warmup_s: float,
    seconds: float,
) -> Measurement:
    """`concurrency` clients POST `body` back to back; count what finishes in the window."""
    result = Measurement(name=name, window_s=seconds)
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    start = time.perf_counter()
    t0, t1 = start + warmup_s, start + warmup_s + seconds

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while (sent := time.perf_counter()) < t1:
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = str(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status = type(exc).__name__
                done = time.perf_counter()
                result.statuses[status] += 1
                if status == "202":
                    result.acked += 1
                if t0 <= done < t1:
                    result.latencies_ms.append((done - sent) * 1000.0)

        async def cpu_meter() -> None:
            await asyncio.sleep(t0 - time.perf_counter())
            server_0, client_0 = process_cpu_s(server_pid), time.process_time()
            await asyncio.sleep(t1 - time.perf_counter())
            server_1, client_1 = process_cpu_s(server_pid), time.process_time()
            if server_0 is not None and server_1 is not None:
                result.server_cpu = (server_1 - server_0) / seconds
            result.client_cpu = (client_1 - client_0) / seconds

        await asyncio.gather(cpu_meter(), *(client() for _ in range(concurrency)))
    return result


# -- one measurement of each server ----------------------------------------------------------


def job_body(stall_port: int) -> bytes:
    request = {
        "task": "upscale",
        "payload": {"image_url": f"http://127.0.0.1:{stall_port}/input.png", "scale": 2},
    }
    return json.dumps(request).encode()


def measure(kind: str, label: str, args: argparse.Namespace, body: bytes) -> Measurement:
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp:
        workdir = Path(tmp)
        if kind == "ahv":
            config_path = workdir / "ahv.toml"
            config_path.write_text(ahv_config(workdir / "data"))
            argv = [sys.executable, "-m", "ahv", "serve", "--config", str(config_path)]
            argv += ["--port", "0", "--host", "127.0.0.1"]
            db_path = workdir / "data" / "ahv.sqlite3"
        else:
            db_path = workdir / "baseline.sqlite3"
            argv = [sys.executable, str(Path(__file__).resolve()), "--baseline-server"]
            argv += ["--db", str(db_path)]
        server = Server(kind, argv, workdir)
        try:
            base = server.start()
            assert server.proc is not None
            result = asyncio.run(
                drive(
                    label,
                    f"{base}/v1/jobs",
                    body,
                    server_pid=server.proc.pid,
                    concurrency=args.concurrency,
                    warmup_s=args.warmup,
                    seconds=args.seconds,
                )
            )
        finally:
            server.stop()
        result.log_problems = server.log_problems()
        if db_path.exists():
            result.rows = count_rows(db_path, "SELECT COUNT(*) FROM jobs")[0][0]
            if kind == "ahv":
                by_status = count_rows(
                    db_path, "SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status"
                )
                result.row_detail = ", ".join(f"{s} {n}" for s, n in by_status)
        return result


# -- the report ------------------------------------------------------------------------------


def row(
    label: str, rate: float, latencies: list[float], errors: int, cpu: str = "", durable: str = ""
) -> str:
    ordered = sorted(latencies)
    p50, p99 = percentile(ordered, 0.50), percentile(ordered, 0.99)
    line = f"{label:<14}{rate:>9.0f}{p50:>9.2f}{p99:>9.2f}{errors:>8}{cpu:>13}  {durable}"
    return line.rstrip()


def cpu_cell(result: Measurement) -> str:
    def cores(value: float | None) -> str:
        return "?" if value is None else f"{value:.2f}"

    return f"{cores(result.server_cpu)} / {cores(result.client_cpu)}"


def combined(results: list[Measurement]) -> tuple[float, list[float], int]:
    window = sum(r.window_s for r in results)
    latencies = [x for r in results for x in r.latencies_ms]
    return len(latencies) / window, latencies, sum(r.errors for r in results)


def report(args: argparse.Namespace, ceiling: list[Measurement], ahv: list[Measurement]) -> None:
    cores = os.cpu_count() or 0
    print()
    print(
        f"POST /v1/jobs, {args.concurrency} concurrent clients on loopback, "
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up, {args.rounds} round(s)"
    )
    print(
        f"note: {cores} CPU core(s), shared by the load generator and the server under test; "
        "absolute numbers are low on a small box, compare the ratio"
    )
    print(
        "cpu srv/cli: CPU cores used in the measured window by the server process (all its "
        "threads) and by the load generator"
    )
    print()
    header = f"{'run':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'cpu srv/cli':>13}"
    print(f"{header}  acked = rows")
    for result in [r for pair in zip(ceiling, ahv, strict=True) for r in pair]:
        durable = f"{result.acked} = {result.rows}"
        if result.rows != result.acked:
            durable = f"{result.acked} != {result.rows}  MISMATCH"
        cells = (result.errors, cpu_cell(result), durable)
        print(row(result.name, result.rate, result.latencies_ms, *cells))
    ceiling_rate, ceiling_lat, ceiling_err = combined(ceiling)
    ahv_rate, ahv_lat, ahv_err = combined(ahv)
    if args.rounds > 1:
        print(row("ceiling (all)", ceiling_rate, ceiling_lat, ceiling_err))
        print(row("ahv (all)", ahv_rate, ahv_lat, ahv_err))
    ratio = ahv_rate / ceiling_rate if ceiling_rate else 0.0
    verdict = "PASS" if ratio >= args.goal else "BELOW GOAL"
    print()
    print(
        f"ahv/ceiling throughput: {ahv_rate:.0f} / {ceiling_rate:.0f} req/s = {ratio:.2f}  "
        f"(goal >= {args.goal:.2f}): {verdict}"
    )
    for result in ahv:
        if result.row_detail:
            print(f"{result.name} jobs after stop: {result.row_detail}")
    for result in [*ceiling, *ahv]:
        odd = {s: n for s, n in result.statuses.items() if s != "202"}
        if odd:
            print(f"{result.name}: non-202 answers: {dict(sorted(odd.items()))}")
        for line in result.log_problems[:10]:
            print(f"{result.name} log: {line}")
        if len(result.log_problems) > 10:
            print(f"{result.name} log: ... {len(result.log_problems) - 10} more")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds first")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=1, help="ceiling+ahv pairs to run")
    parser.add_argument("--goal", type=float, default=GOAL, help="ahv/ceiling to reach")
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_server and not args.db:
        parser.error("--baseline-server needs --db")
    if args.seconds <= 0 or args.warmup < 0 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--seconds, --concurrency and --rounds must be positive, --warmup >= 0")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_uvloop()
    if args.baseline_server:
        asyncio.run(serve_baseline(args.db, args.host, args.port))
        return 0
    # Cleanup (servers, temp dirs) runs in `finally` blocks; make SIGTERM unwind through them.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # The image_url of every job: a socket that is listening but never accepts, so the one
    # job that gets a slot waits on its download for the whole run and the rest stay queued.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stall:
        stall.bind(("127.0.0.1", 0))
        stall.listen(16)
        body = job_body(stall.getsockname()[1])
        ceiling: list[Measurement] = []
        ahv: list[Measurement] = []
        try:
            for n in range(1, args.rounds + 1):
                for kind, results in (("ceiling", ceiling), ("ahv", ahv)):
                    label = f"{kind} #{n}"
                    print(f"running {label} ...", flush=True)
                    results.append(measure(kind, label, args, body))
        except BenchError as exc:
            print(f"bench_submit: {exc}", file=sys.stderr)
            return 1
    report(args, ceiling, ahv)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
