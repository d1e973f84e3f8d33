#!/usr/bin/env python3
"""End-to-end check of the single-file zipapp on a machine that has only Python (CI runs it).

    python3 scripts/zipapp_smoke.py [dist/ahv.pyz]

Standard library only, so the system python3 runs it. It copies the zipapp into an empty
temporary folder, makes a `python3 -m venv --without-pip` there (an interpreter with no
packages at all: it asserts that neither aiohttp nor numpy can be imported) and, with that
interpreter and a fresh SHIV_ROOT inside the folder (so the first-start extraction is part of
the check):
1. `ahv.pyz --version` prints the version;
2. the MTCNN face detector graphs build from the weights of the `mtcnn` package inside the
   zipapp and load in ONNX Runtime (shiv's interpreter mode, SHIV_INTERPRETER=1);
3. `ahv.pyz serve --config <minimal toml> --port 0` starts (the "listening" line), answers
   /healthz, runs one `upscale` job (×2) whose input PNG (made here with zlib and struct) is
   served by a stdlib http.server on 127.0.0.1 (let in by `fetch.allowed_networks`), and
   the downloaded result is an image of twice the input's size;
   the docs page (/), the dashboard, their static files and /openapi.json load (package data
   inside the zipapp), and `ahv.pyz backup` run beside the server copies the database;
4. SIGTERM: the server exits 0.
Prints each step's time; exit status 0 when all pass.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "smoke-key-0123456789"
IN_W, IN_H = 96, 64
FINAL = {"succeeded", "failed", "rejected", "canceled"}
MTCNN_CHECK = """
import pathlib, sys
import numpy as np
import onnxruntime as ort
from ahv.models.face import build_mtcnn_models
paths = build_mtcnn_models(pathlib.Path(sys.argv[1]))
for name, path in sorted(paths.items()):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = 48 if name == "onet" else 24
    outputs = session.run(None, {"input": np.zeros((1, 3, size, size), np.float32)})
    print(name, path.stat().st_size, [o.shape for o in outputs])
"""


def png_rgb(width: int, height: int) -> bytes:
    """A gradient RGB PNG, written with zlib and struct only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 255 // width, y * 255 // height, 90))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) of a PNG or JPEG, read from its header."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                i += 1 if marker == 0xFF else 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            # SOF0..SOF15 carry the size, except DHT (C4), JPG (C8) and DAC (CC).
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return "jpeg", width, height
            i += 2 + length
    raise AssertionError(f"not a PNG or JPEG: {data[:16]!r}")


def toml_config(data_dir: Path, models_dir: Path) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = 0
data_dir = {json.dumps(str(data_dir))}
shutdown_grace_s = 5

[[keys]]
name = "smoke"
key = "{KEY}"
webhook_secret = "smoke-webhook-secret-0123456789"

[fetch]
allowed_networks = ["127.0.0.1/32"]

[models]
dir = {json.dumps(str(models_dir))}

[[backends]]
name = "cpu"
device = "cpu"
slots = 1
tasks = ["upscale"]
"""


def call(method: str, url: str, body: Any = None, timeout_s: float = 30) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("X-API-Key", KEY)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        raw = response.read()
    return json.loads(raw) if raw.startswith(b"{") else raw


@contextlib.contextmanager
def media_server(folder: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Steps:
    def __init__(self) -> None:
        self.began = time.monotonic()
        self.last = self.began

    def done(self, what: str) -> None:
        now = time.monotonic()
        print(f"ok  {what} ({now - self.last:.1f} s)", flush=True)
        self.last = now


def read_listening_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The server's `ahv listening on http://HOST:PORT` line, read on a thread so that a
    server that hangs without printing cannot hang this script."""
    found: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            # The whole line in text mode; the `msg` of a JSON line in json mode.
            match = re.search(
                r"ahv listening on http://[^\s\"]*:(\d+)", raw.decode(errors="replace")
            )
            if match:
                found.append(match.group(1))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not found:
        raise AssertionError(f"no 'listening' line within {timeout_s} s")
    return f"http://127.0.0.1:{found[0]}"


def run_job(base: str, media: str) -> None:
    job = call(
        "POST",
        f"{base}/v1/jobs",
        {"task": "upscale", "payload": {"image_url": f"{media}/input.png", "scale": 2}},
    )
    assert job["status"] == "queued", job
    deadline = time.monotonic() + 120
    while job["status"] not in FINAL:
        assert time.monotonic() < deadline, f"job still {job['status']} after 120 s"
        time.sleep(0.2)
        job = call("GET", f"{base}/v1/jobs/{job['job_id']}")
    assert job["status"] == "succeeded", job
    result = job["result"]
    image = call("GET", result["url"])
    assert isinstance(image, bytes), image
    fmt, width, height = image_size(image)
    assert (width, height) == (2 * IN_W, 2 * IN_H), (fmt, width, height)
    assert (result["meta"]["width"], result["meta"]["height"]) == (width, height), result
    print(f"    result: {fmt} {width}x{height}, {len(image)} bytes, job {job['job_id']}")


def check_pages(base: str) -> None:
    """The docs page, the dashboard and their static files: package data inside the zipapp."""
    pages = {
        "/": b"upscale",
        "/dashboard": b"/static/dashboard.js",
        "/static/dashboard.js": b"/v1/events",
        "/static/ahv.css": b"{",
    }
    for path, marker in pages.items():
        body = call("GET", base + path)
        assert isinstance(body, bytes) and marker in body, f"GET {path}: {body[:200]!r}"
    spec = call("GET", f"{base}/openapi.json")
    assert spec["openapi"].startswith("3.1") and "/v1/jobs" in spec["paths"], spec.keys()


def check_backup(python: str, pyz: Path, config: Path, work: Path, env: dict[str, str]) -> None:
    """`ahv.pyz backup` beside the serving server: a copy holding the one job run."""
    copy = work / "backup.sqlite3"
    done = subprocess.run(
        [python, str(pyz), "backup", str(copy), "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "1 jobs" in done.stdout, done
    with contextlib.closing(sqlite3.connect(copy)) as db:
        assert db.execute("SELECT status FROM jobs").fetchall() == [("succeeded",)]


def smoke(pyz_src: Path, work: Path) -> None:
    steps = Steps()
    pyz = work / "ahv.pyz"
    shutil.copy2(pyz_src, pyz)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], check=True)
    python = str(work / "venv" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SHIV_"))}
    env["SHIV_ROOT"] = str(work / "shiv")
    bare = subprocess.run(
        [python, "-c", "import aiohttp"], env=env, capture_output=True, check=False
    )
    assert bare.returncode != 0, "the bare venv can import aiohttp: not an empty interpreter"
    bare = subprocess.run([python, "-c", "import numpy"], env=env, capture_output=True)
    assert bare.returncode != 0, "the bare venv can import numpy: not an empty interpreter"
    steps.done(f"bare venv in an empty folder ({pyz.stat().st_size / 1e6:.1f} MB zipapp)")

    version = subprocess.run(
        [python, str(pyz), "--version"], env=env, capture_output=True, text=True, timeout=300
    )
    assert version.returncode == 0 and version.stdout.startswith("ahv "), version
    steps.done(f"--version: {version.stdout.strip()} (first start: extraction)")

    mtcnn = subprocess.run(
        [python, str(pyz), "-c", MTCNN_CHECK, str(work / "mtcnn")],
        env={**env, "SHIV_INTERPRETER": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert mtcnn.returncode == 0 and mtcnn.stdout.count("\n") == 3, mtcnn
    steps.done("mtcnn weights from inside the zipapp built and ran as ONNX")

    media_dir = work / "media"
    media_dir.mkdir()
    (media_dir / "input.png").write_bytes(png_rgb(IN_W, IN_H))
    config = work / "ahv.toml"
    config.write_text(toml_config(work / "data", work / "models"))
    log_path = work / "server.log"
    with media_server(media_dir) as media, log_path.open("wb") as log:
        proc = subprocess.Popen(
            [python, str(pyz), "serve", "--config", str(config), "--port", "0"],
            cwd=work,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            base = read_listening_line(proc, 120)
            assert call("GET", f"{base}/healthz") is not None
            steps.done(f"serve: listening on {base}, /healthz answers")
            check_pages(base)
            steps.done("docs page, dashboard, static files and /openapi.json load")
            run_job(base, media)
            steps.done("upscale job end to end")
            check_backup(python, pyz, config, work, env)
            steps.done("ahv.pyz backup while the server runs")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            assert code == 0, f"exit status {code} after SIGTERM"
            steps.done("SIGTERM: clean exit")
        except BaseException:
            proc.kill()
            proc.wait(10)
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            assert proc.stdout is not None
            proc.stdout.close()
    print(f"zipapp smoke: all passed in {time.monotonic() - steps.began:.1f} s")


def main() -> int:
    pyz = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist" / "ahv.pyz"
    if not pyz.is_file():
        print(f"{pyz}: no such file (build it: scripts/build_zipapp.py)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ahv-zipapp-smoke-") as tmp:
        try:
            smoke(pyz.resolve(), Path(tmp))
        except AssertionError as exc:
            print(f"zipapp smoke FAILED: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
