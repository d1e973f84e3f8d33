"""Blocking endpoints (`POST /upscale`, ...): the body is the job's payload; the job goes
through the same queue at high priority, and the connection is held until it ends. A client
that hangs up cancels its job."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from ahv.errors import AhvError
from ahv.http.jobs_routes import json_response
from ahv.http.keys import caller, orchestrator
from ahv.orchestrator import SubmitRequest

_HANG_UP_CHECK_S = 0.25


def face_task_for(payload: bytes) -> str:
    """`POST /faceswap` serves both modes of the sheet: `source_urls` makes it multi-face."""
    try:
        fields = msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return "faceswap"  # the payload decoder reports the JSON error
    return "faceswap_multi" if isinstance(fields, dict) and "source_urls" in fields else "faceswap"


def direct_handler(
    task: str | Callable[[bytes], str],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        app = orchestrator(request)
        body = await request.read() or b"{}"
        job, _ = await app.submit(
            caller(request),
            SubmitRequest(
                task=task if isinstance(task, str) else task(body), payload=msgspec.Raw(body)
            ),
            priority=app.config.queue.direct_priority,
        )
        try:
            while True:
                finished = await app.wait_finished(job.id, _HANG_UP_CHECK_S)
                if finished is not None:
                    return json_response(app.document(finished))
                transport = request.transport
                if transport is None or transport.is_closing():
                    await _cancel_quietly(request, job.id)
                    return json_response({"ok": False})
        except asyncio.CancelledError:
            # With handler cancellation on, a hang-up arrives as a cancel of this handler.
            await asyncio.shield(_cancel_quietly(request, job.id))
            raise

    return handle


async def _cancel_quietly(request: web.Request, job_id: str) -> None:
    # The job may have ended in the meantime; nobody is listening for an error now.
    with contextlib.suppress(AhvError):
        await orchestrator(request).cancel(caller(request), job_id)
