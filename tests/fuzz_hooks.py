"""schemathesis hooks for tests/test_openapi_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

The one change to generated data: the test-only `sleep` task sleeps as long as asked (up to
60 s, and with `ignore_cancel` its thread holds a slot for all of it, past its job's timeout).
A fuzzer asks for 60 s often, which would hold every slot for the rest of the run and leave
the blocking `POST /test/sleep` waiting. Valid durations above 0.5 s are cut to 0.5 s; every
other field, and every out-of-range or mistyped `seconds`, is sent as generated.
"""

from __future__ import annotations

from typing import Any

import schemathesis

MAX_SLEEP_S = 0.5


def _cap(payload: Any) -> None:
    if not isinstance(payload, dict):
        return
    seconds = payload.get("seconds")
    valid = isinstance(seconds, int | float) and not isinstance(seconds, bool)
    if valid and MAX_SLEEP_S < seconds <= 60:
        payload["seconds"] = MAX_SLEEP_S


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    body = case.body
    if case.operation.path == "/test/sleep":
        _cap(body)
    elif (
        case.operation.path == "/v1/jobs" and isinstance(body, dict) and body.get("task") == "sleep"
    ):
        _cap(body.get("payload"))
    return case
