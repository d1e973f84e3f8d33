"""Run `python -m ahv serve` as a real subprocess, for crash and shutdown tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
# The whole line in text mode; the `msg` of a JSON line with `--log-format json`.
LISTENING = re.compile(r"ahv listening on http://[^\s\"]*:(\d+)")


class AhvProcess:
    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config_path = workdir / "ahv.toml"
        self.config_path.write_bytes(msgspec.toml.encode(config))
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.stdout_lines: list[str] = []  # what start() read of stdout

    def rest_of_stdout(self) -> list[str]:
        """Every stdout line, once the process has exited: those start() read, then the rest."""
        assert self.proc is not None and self.proc.stdout is not None
        rest = self.proc.stdout.read().decode().splitlines()
        return [*self.stdout_lines, *rest]

    def start(self, timeout_s: float = 20, extra_args: Sequence[str] = ()) -> str:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *("-m", "ahv", "serve", "--config", str(self.config_path)),
                *extra_args,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if line:
                self.stdout_lines.append(line.rstrip("\n"))
            found = LISTENING.search(line)
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                return self.url
            if not line and self.proc.poll() is not None:
                break
        raise AssertionError(f"ahv did not start: {self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout_s: float = 20) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
