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
from pathlib import Path

import pytest

from tests import namespaces

EXAMPLES = int(os.environ.get("AHV_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("AHV_FUZZ_SEED", "7"))


@pytest.mark.timeout(150 + 3 * EXAMPLES)
def test_schemathesis_finds_no_failure(tmp_path: Path) -> None:
    if not namespaces.available("-rn"):
        pytest.skip("needs `unshare -rn` (a network namespace) to keep fuzzed URLs local")
    args = [str(tmp_path), str(EXAMPLES), str(SEED)]
    # The server and schemathesis (its children, in the namespace) end with the run.
    returncode, report = namespaces.run_module(
        "-rn", "tests.fuzz_run", args, timeout_s=140 + 3 * EXAMPLES
    )
    assert returncode == 0, report
    assert " generated, " in report and " passed" in report, report
