"""Run schemathesis against a real ahv server, both inside a network namespace of their own.

Started by tests/test_openapi_fuzz.py as
`unshare -rn python -m tests.fuzz_run WORKDIR EXAMPLES SEED`: the namespace has only a loopback
interface, so whatever URL the fuzzer puts in a payload or webhook_url, the server can reach
nothing but itself (DNS fails at once, public addresses are unreachable).
Prints schemathesis' report, then the server log's unhandled errors; exits non-zero when
schemathesis found a failure or the server logged an unhandled error.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import KEY_ADMIN, base_config, merge
from tests.process import ROOT, AhvProcess

# Lines the server logs only for bugs: a 500 (middleware) or an exception nobody awaited.
BUG_MARKERS = ("unhandled error on", "exception was never retrieved", "Unhandled exception")


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2: a new namespace's loopback is down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, request)[:18])[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def fuzz_config(workdir: Path) -> dict[str, object]:
    from ahv.tasks import builtin_tasks

    # Cloud tasks run only on a provider's backend; with none configured they are refused at
    # submit (422 model_unavailable), which the fuzzer sees too.
    tasks = [spec.name for spec in builtin_tasks() if spec.provider is None] + ["sleep"]
    return merge(
        base_config(workdir / "data"),
        {
            # Every task is served, so every payload goes through submit-time checks and,
            # when it passes them, the real task (which fails fast: nothing to download).
            "backends": [{"name": "cpu", "device": "cpu", "slots": 4, "tasks": tasks}],
            "fetch": {"allowed_networks": []},
            "queue": {"timeouts_s": {"sleep": 2}, "cancel_wait_s": 0.5},
            # A matting model and a detector named, so remove_background and scan_objects are
            # available and remove_object takes a prompt (their files need not exist: a job of
            # them fails model_unavailable when it runs).
            "images": {"matting": "matting"},
            "objects": {"detector": "detector"},
        },
    )


def main() -> int:
    workdir, examples, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    loopback_up()
    server = AhvProcess(fuzz_config(workdir), workdir)
    url = server.start()
    started = time.monotonic()
    try:
        run = subprocess.run(
            [
                *(
                    sys.executable,
                    "-c",
                    "from schemathesis.cli import schemathesis; schemathesis()",
                ),
                *("run", f"{url}/openapi.json", "--header", f"X-API-Key: {KEY_ADMIN}"),
                "--checks=not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_schema_conformance,unsupported_method,ignored_auth",
                *("--max-examples", str(examples), "--workers", "2", "--seed", str(seed)),
                *("--request-timeout", "20", "--no-color", "--output-truncate", "false"),
                # The all-jobs event stream never ends by itself (tests/test_events.py).
                *("--exclude-path", "/v1/events"),
                *("--report", "junit", "--report-dir", str(workdir / "report")),
            ],
            cwd=workdir,  # schemathesis keeps its replay data in the working directory
            env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.stop()
    print(run.stdout[-20000:], run.stderr[-5000:], sep="\n")
    print(f"schemathesis ran for {time.monotonic() - started:.1f} s, exit {run.returncode}")
    bugs = [
        line
        for line in server.log_path.read_text(errors="replace").splitlines()
        if any(marker in line for marker in BUG_MARKERS)
    ]
    print("server log, unhandled errors:", *bugs or ["none"], sep="\n")
    return run.returncode or (1 if bugs else 0)


if __name__ == "__main__":
    sys.exit(main())
