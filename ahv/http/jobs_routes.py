"""`/v1/jobs`: submit, poll, list, cancel, delete; and the seed's `DELETE /tasks/{id}`."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from ahv.api_types import Deleted, JobList
from ahv.errors import AhvError
from ahv.http.keys import caller, orchestrator
from ahv.jobs import STATUSES
from ahv.orchestrator import SubmitRequest, validation_message

routes = web.RouteTableDef()

MAX_LIST_LIMIT = 200


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body), status=status, content_type="application/json"
    )


async def read_json(request: web.Request, type_: type[Any]) -> Any:
    raw = await request.read()
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        raise AhvError("invalid_request", validation_message(exc, ""), status=422) from None
    except msgspec.DecodeError as exc:
        raise AhvError("invalid_json", f"body is not valid JSON: {exc}", status=400) from None
    except RecursionError:
        raise AhvError("invalid_json", "body: JSON nested too deeply", status=400) from None


@routes.post("/v1/jobs")
async def submit_job(request: web.Request) -> web.Response:
    body: SubmitRequest = await read_json(request, SubmitRequest)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise AhvError(
            "invalid_request", "Idempotency-Key: must be 1 to 255 characters", status=400
        )
    app = orchestrator(request)
    job, created = await app.submit(caller(request), body, idempotency_key=key)
    response = json_response(app.document(job), status=202 if created else 200)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def job_filters(request: web.Request) -> tuple[str | None, str | None]:
    """The `status` and `task` filters of GET /v1/jobs and GET /v1/events: a value no job
    can have is a 422 naming the field and what it can be, not an empty answer for ever."""
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise AhvError(
            "invalid_request", f"status: must be one of {', '.join(STATUSES)}", status=422
        )
    task = request.query.get("task") or None
    registry = orchestrator(request).registry
    if task is not None and task not in registry:
        known = ", ".join(sorted(registry))
        raise AhvError(
            "invalid_request", f"task: unknown task {task!r}, must be one of {known}", status=422
        )
    return status, task


@routes.get("/v1/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    query = request.query
    status, task = job_filters(request)
    limit = _int_param(query.get("limit", "50"), "limit", 1, MAX_LIST_LIMIT)
    cursor = query.get("cursor") or None
    before = None if cursor is None else _int_param(cursor, "cursor", 1, 2**62)
    who = caller(request)
    app = orchestrator(request)
    jobs = await app.store.list_jobs(
        owner=None if who.is_admin else who.name,
        status=status,
        task=task,
        limit=limit,
        before_seq=before,
    )
    next_cursor = str(jobs[-1].seq) if len(jobs) == limit else None
    return json_response(
        JobList(ok=True, jobs=[app.document(j) for j in jobs], next_cursor=next_cursor)
    )


def _int_param(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise AhvError(
            "invalid_request", f"{name}: {value!r} is not an integer", status=422
        ) from None
    if not low <= number <= high:
        raise AhvError("invalid_request", f"{name}: must be {low} to {high}", status=422)
    return number


@routes.get("/v1/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    app = orchestrator(request)
    job = await app.visible_job(caller(request), request.match_info["job_id"])
    # The job's own inputs too (the dashboard shows them); not in lists, events or webhooks.
    # Only here: the dashboard shows a job's inputs; lists and webhooks stay lean.
    return json_response(
        msgspec.structs.replace(app.document(job), payload=msgspec.json.decode(job.payload))
    )


@routes.post("/v1/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    app = orchestrator(request)
    job = await app.cancel(caller(request), request.match_info["job_id"])
    return json_response(app.document(job))


@routes.delete("/v1/jobs/{job_id}")
@routes.delete("/tasks/{job_id}")
async def delete_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    await orchestrator(request).delete(caller(request), job_id)
    return json_response(Deleted(ok=True, job_id=job_id, deleted=True))
