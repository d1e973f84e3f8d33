"""Shared parts of the proof scripts (chaos.py, load.py, soak.py, bench_latency.py).

Not a script itself. Everything here is real: the server is `python -m ahv serve` run as a
subprocess on 127.0.0.1 with `--port 0` (its port read from the `ahv listening on` line it
prints), inputs come from a real local HTTP server, and process figures (RSS, open file
descriptors) are read from /proc. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import msgspec
import numpy as np
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

API_KEY = "proof-key-0123456789abcdef"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"proof-webhook-secret-0123456789").decode()
FINAL = frozenset({"succeeded", "failed", "rejected", "canceled"})
START_TIMEOUT_S = 90.0
_LISTENING = re.compile(r"ahv listening on http://[^:\s]+:(\d+)")
_LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")


def base_config(data_dir: Path, **sections: Any) -> dict[str, Any]:
    """A config for a proof run: one client key, the test-only `sleep` task loaded as a
    plugin (tests/plugin_tasks.py), loopback inputs allowed; `sections` are merged in."""
    config: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": str(data_dir),
            "plugins": ["tests.plugin_tasks"],
            "shutdown_grace_s": 1,
        },
        "keys": [{"name": "proof", "key": API_KEY, "webhook_secret": WEBHOOK_SECRET}],
        "fetch": {"allowed_networks": ["127.0.0.1/32"]},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **values}
        else:
            config[name] = values
    return config


class AhvServer:
    """`python -m ahv serve` as a subprocess on one data dir; it can be killed with SIGKILL
    and started again on the same data dir (the port may change: `url` is updated)."""

    def __init__(self, config: Mapping[str, Any], workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "ahv.toml"
        self.config_path.write_bytes(msgspec.toml.encode(dict(config)))
        self.log_path = workdir / "server.log"
        # The server's own temp dir, so a run can check that it is empty at the end.
        self.tmp_dir = workdir / "tmp"
        self.tmp_dir.mkdir(exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> str:
        """Start the server; return its base URL once it listens. Blocks: call it in a
        thread from async code."""
        self.starts += 1
        stdout_path = self.workdir / f"stdout-{self.starts}.txt"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["TMPDIR"] = str(self.tmp_dir)
        argv = [sys.executable, "-m", "ahv", "serve", "--config", str(self.config_path)]
        with stdout_path.open("wb") as out, self.log_path.open("ab") as err:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = _LISTENING.search(stdout_path.read_text(errors="replace"))
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                return self.url
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"ahv did not start:\n{self.log_tail()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM and wait (SIGKILL past `timeout_s`); the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        """ERROR/CRITICAL lines and tracebacks in the server log (a task crash, a 500)."""
        if not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if _LOG_PROBLEM.search(line)]


# -- process figures, from /proc -------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
    return ordered[rank - 1]


# -- inputs and webhooks ----------------------------------------------------------------------


def tiny_png(width: int = 48, height: int = 32, seed: int = 0) -> bytes:
    """A small real PNG (a gradient with a disc), for image jobs that finish fast."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 5 % 256, y * 7 % 256, (x + y + seed) % 256], axis=-1).astype(np.uint8)
    cv2.circle(image, (width // 2, height // 2), min(width, height) // 3, (30, 200, 60), -1)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return bytes(encoded.tobytes())


class LocalFiles:
    """A local HTTP server for job inputs: GET /<name> answers the bytes added under name."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self._runner: web.AppRunner | None = None
        self.base = ""

    def add(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"{self.base}/{name}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self._handle)
        self._runner, self.base = await serve_local(app)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")


async def serve_local(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve `app` on a free 127.0.0.1 port: its runner (to clean up) and base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{bound_port(site)}"


def bound_port(site: web.TCPSite) -> int:
    sockets = getattr(site._server, "sockets", None) or []
    return int(sockets[0].getsockname()[1])


def signature_ok(headers: Mapping[str, str], body: bytes, secret: str = WEBHOOK_SECRET) -> bool:
    """Standard Webhooks: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        part.startswith("v1,") and hmac.compare_digest(part[3:], expected)
        for part in headers.get("webhook-signature", "").split()
    )


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
