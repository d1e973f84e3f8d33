"""Running a test module inside Linux namespaces of its own (`unshare`), for the tests whose
traffic must not leave the box or that need /etc/hosts to say what they want."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

from tests.process import ROOT


def available(flags: str) -> bool:
    """Whether `unshare <flags>` works here (user namespaces may be off in a container)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", flags, "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def run_module(flags: str, module: str, args: list[str], *, timeout_s: float) -> tuple[int, str]:
    """`python -m module args` under `unshare flags`; its exit status and the last 20,000
    characters of its output. It runs in a session of its own, so whatever happens, every
    process started in the namespaces ends with it."""
    proc = subprocess.Popen(
        ["unshare", flags, sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, output[-20000:]
