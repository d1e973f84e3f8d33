"""What `/openapi.json` says about each route: one `Route` per (method, path).

Adding a route to the app? Add one line to `ROUTES` (the test in tests/test_openapi.py fails
until every route of the app is described here), e.g.:

    Route("GET", "/v1/events", "Job events (SSE)", {200: Media("text/event-stream")}),

(`Media(...)` without `schema` documents a body of any content.)

`responses` maps each success status to a Struct of ahv/api_types.py (JSON) or a `Media`;
error statuses are added from what the route takes: 401 unless the path is public (see
ahv/http/middleware.py), 400/422 and the middleware's BODY_STATUSES (408, 413) with a request
body, 404 with a path parameter, plus
those listed in `errors`, each with the one error body. Task routes (`POST /v1/jobs`, the
blocking endpoints) are generated from the task registry in ahv/http/openapi_tasks.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ahv.api_types import (
    BackendsReport,
    Deleted,
    Deliveries,
    Health,
    JobDocument,
    JobList,
    Redelivered,
    Stats,
)
from ahv.http.events_routes import DRAINING_STATUS
from ahv.http.jobs_routes import MAX_LIST_LIMIT
from ahv.http.ops_routes import CONTENT_TYPES, FILE_NAME
from ahv.http.pages import STATIC_FILES
from ahv.jobs import STATUSES


class Media:
    """A response body that is not one of our JSON Structs: its content types and schema."""

    def __init__(self, *content_types: str, schema: Mapping[str, Any] | None = None) -> None:
        self.content_types = content_types
        self.schema = None if schema is None else dict(schema)  # None: any content


@dataclass(frozen=True)
class Param:
    """A query or header parameter; a path parameter here overrides the plain string one."""

    name: str
    where: Literal["query", "header", "path"]
    schema: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    responses: Mapping[int, Any]  # status -> Struct type or Media
    body: Any = None  # request body: a type msgspec can describe
    body_required: bool = True
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    tag: str = "jobs"
    description: str = ""
    # JSON pointer into a job document that gives this route's path parameter (an OpenAPI
    # link from every response that is a job document); routes with {job_id} get "/job_id".
    job_link: str | None = None


# Error statuses and the codes each carries (ahv.errors.AhvError codes; tasks add their own
# submit-time checks, e.g. face_index_out_of_range, under 422).
ERROR_CODES = {
    400: "invalid_json, invalid_request",
    401: "unauthorized: missing or unknown X-API-Key",
    403: "forbidden: a client key on an admin route",
    404: "job_not_found (also another key's job), file_not_found, not_found",
    408: "request_timeout: the body did not arrive within server.read_timeout_s",
    409: "idempotency_conflict, job_finished, not_finished, no_webhook",
    410: "file_expired: the result file was removed by retention",
    413: "body_too_large",
    416: "invalid_range, range_not_satisfiable",
    422: "invalid_request, invalid_payload, unknown_task, task_unavailable, model_unavailable, "
    "url_not_allowed, "
    "or a task's own submit-time check; the message names the field",
    429: "queue_full, rate_limited (see Retry-After)",
    503: "draining: the server is shutting down; disk_full: free disk under "
    "limits.min_free_disk_mb (see Retry-After)",
}

_LIST_PARAMS = (
    Param(
        "status", "query", {"type": "string", "enum": list(STATUSES)}, "only jobs in this status"
    ),
    Param("task", "query", {"type": "string"}, "only jobs of this task (not a task here: 422)"),
    Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT}),
    # What GET /v1/jobs accepts is 1 to 2**62; next_cursor values are far below 10**18.
    Param(
        "cursor", "query", {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"}, "a `next_cursor`"
    ),
)
_EVENT_STREAM = Media("text/event-stream")
_HTML = Media("text/html")
_RESULT_FILE = Media(*sorted({*CONTENT_TYPES.values(), "application/octet-stream"}))

ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/jobs", "List jobs, newest first", {200: JobList}, params=_LIST_PARAMS),
    Route("GET", "/v1/jobs/{job_id}", "A job document", {200: JobDocument}),
    Route(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        "Cancel a job: queued ones at once, running ones at their next checkpoint",
        {200: JobDocument},
        errors=(409,),
    ),
    Route("DELETE", "/v1/jobs/{job_id}", "Cancel if needed, then remove a job", {200: Deleted}),
    Route("DELETE", "/tasks/{job_id}", "The product sheet's form of job removal", {200: Deleted}),
    Route("GET", "/v1/jobs/{job_id}/webhooks", "A job's webhook deliveries", {200: Deliveries}),
    Route("GET", "/v1/jobs/{job_id}/deliveries", "A job's webhook deliveries", {200: Deliveries}),
    Route(
        "POST",
        "/v1/jobs/{job_id}/redeliver",
        "Send a finished job's job.finished event again (same webhook-id and body)",
        {202: Redelivered},
        errors=(409,),
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}/events",
        "A job's live events (server-sent events): `event: job` with its document at every "
        "change; ends after the final status",
        {200: _EVENT_STREAM},
        errors=(DRAINING_STATUS,),
    ),
    Route(
        "GET",
        "/v1/events",
        "Live events of every job the key may see (server-sent events); never ends by itself. "
        "With Last-Event-ID, hello says whether it resumed from there",
        {200: _EVENT_STREAM},
        params=(
            *_LIST_PARAMS[:2],
            Param(
                "Last-Event-ID",
                "header",
                {"type": "string"},
                "the id of the last event received: the jobs changed since come first",
            ),
        ),
        errors=(DRAINING_STATUS,),
    ),
    Route(
        "GET",
        "/metrics",
        "Prometheus metrics: an admin key, or `Authorization: Bearer <server.metrics_token>`",
        {200: Media("text/plain")},
        errors=(403,),
        tag="ops",
    ),
    Route("GET", "/", "The API documentation (HTML)", {200: _HTML}, tag="pages"),
    Route("GET", "/dashboard", "The dashboard (HTML; asks for a key)", {200: _HTML}, tag="pages"),
    Route(
        "GET",
        "/static/{name}",
        "The dashboard's scripts, styles and icon",
        {200: Media(*sorted({v.split(";")[0] for v in STATIC_FILES.values()}))},
        params=(Param("name", "path", {"type": "string", "enum": sorted(STATIC_FILES)}),),
        tag="pages",
    ),
    Route("GET", "/stats", "Counts, queue depth, durations, recent jobs", {200: Stats}, tag="ops"),
    Route("GET", "/diag/backends", "Backends, slots, providers", {200: BackendsReport}, tag="ops"),
    Route("GET", "/healthz", "Ready, or draining", {200: Health, 503: Health}, tag="ops"),
    Route(
        "GET",
        "/files/{name}",
        "A result file (Range requests supported)",
        {200: _RESULT_FILE, 206: _RESULT_FILE},
        errors=(416,),
        job_link="/result/filename",
        params=(
            Param("name", "path", {"type": "string", "pattern": FILE_NAME.pattern}),
            Param("Range", "header", {"type": "string"}, "bytes=START-[END]"),
        ),
        tag="files",
    ),
    Route(
        "GET",
        "/openapi.json",
        "This document",
        {200: Media("application/json", schema={"type": "object"})},
        tag="ops",
    ),
)
