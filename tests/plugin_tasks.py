"""A diagnostic task for tests, loaded through `server.plugins` like any plugin: it sleeps in
small steps (checkpoints between them), and can fail in the ways real tasks fail."""

from __future__ import annotations

import time
from typing import Annotated

import msgspec

from ahv.errors import AhvError
from ahv.tasks import TaskContext, TaskOutput, TaskSpec


class SleepPayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.05
    steps: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    transient_failures: int = 0  # attempts 1..N fail with a retryable error
    fail_code: str | None = None  # fail for good with this error code
    crash: bool = False  # raise a plain exception (a bug in a task)
    write_file: bool = False  # save a small result file
    ignore_cancel: bool = False  # sleep without checkpoints


async def run_sleep(ctx: TaskContext, payload: SleepPayload) -> TaskOutput:
    def work() -> TaskOutput:
        if ctx.attempt <= payload.transient_failures:
            raise AhvError("download_failed", f"attempt {ctx.attempt} fails", transient=True)
        filename = ctx.save_output(b"ahv test output\n", "json") if payload.write_file else None
        for step in range(payload.steps):
            if not payload.ignore_cancel:
                ctx.progress(100 * step // payload.steps)
            time.sleep(payload.seconds / payload.steps)
        if payload.crash:
            raise RuntimeError("the task has a bug")
        if payload.fail_code:
            raise AhvError(payload.fail_code, f"failed on purpose with {payload.fail_code}")
        return TaskOutput(filename=filename, meta={"slept_s": payload.seconds})

    return await ctx.run_in_thread(work)


TASKS = [
    TaskSpec(
        name="sleep",
        payload_type=SleepPayload,
        run=run_sleep,  # type: ignore[arg-type]
        direct_path="/test/sleep",
        default_predict_s=1.0,
    )
]
