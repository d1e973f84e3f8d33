"""Property-based run of schemathesis against /openapi.json on a live server: no 5xx on any
operation; every status code, content type and body as documented; a 405 with `Allow` for
undocumented methods; a 401 without the key on every keyed route.

The server and schemathesis run together in a network namespace of their own (see
tests/fuzz_run.py), so the URLs the fuzzer writes into payloads and webhook_url can reach
nothing outside. AHV_FUZZ_EXAMPLES (default 25) sets the examples per operation and phase,
AHV_FUZZ_SEED (default 7) the seed, for longer or other runs:
`AHV_FUZZ_EXAMPLES=200 .venv/bin/python -m pytest tests/test_openapi_fuzz.py`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process import ROOT

EXAMPLES = int(os.environ.get("AHV_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("AHV_FUZZ_SEED", "7"))


def network_namespaces() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.timeout(150 + 3 * EXAMPLES)
def test_schemathesis_finds_no_failure(tmp_path: Path) -> None:
    if not network_namespaces():
        pytest.skip("needs `unshare -rn` (a network namespace) to keep fuzzed URLs local")
    args = [str(tmp_path), str(EXAMPLES), str(SEED)]
    # A session of its own: whatever happens here, the server and schemathesis (its children,
    # in the namespace) are ended with it.
    proc = subprocess.Popen(
        ["unshare", "-rn", sys.executable, "-m", "tests.fuzz_run", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=140 + 3 * EXAMPLES)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    report = output[-20000:]
    assert proc.returncode == 0, report
    assert " generated, " in report and " passed" in report, report
