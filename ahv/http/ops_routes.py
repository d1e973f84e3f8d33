"""Health, stats, backend diagnostics and result files."""

from __future__ import annotations

import re
from typing import Literal

import msgspec
from aiohttp import web

import ahv
from ahv.api_types import BackendsReport, Health, UnavailableProvider
from ahv.errors import AhvError
from ahv.http.jobs_routes import json_response
from ahv.http.keys import caller, orchestrator
from ahv.timeutil import iso

routes = web.RouteTableDef()

FILE_NAME = re.compile(r"^[0-9a-f]{32}\.[a-z0-9]{2,5}$")
CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "json": "application/json",
}


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    app = orchestrator(request)
    status: Literal["ready", "draining"] = "draining" if app.draining else "ready"
    body = Health(ok=not app.draining, status=status, version=ahv.__version__)
    return json_response(body, status=503 if app.draining else 200)


@routes.get("/stats")
async def stats(request: web.Request) -> web.Response:
    return json_response(await orchestrator(request).stats(caller(request)))


@routes.get("/diag/backends")
async def diag_backends(request: web.Request) -> web.Response:
    app = orchestrator(request)
    backends = await app.backends()
    who = caller(request)
    if not who.is_admin:
        # A client key sees only its own jobs: not the ids of other keys' running jobs either.
        for row in backends:
            mine = []
            for job_id in row.running_jobs:
                job = await app.store.get(job_id)
                if job is not None and job.owner == who.name:
                    mine.append(job_id)
            row.running_jobs = mine
    return json_response(
        BackendsReport(
            ok=True,
            queue_depth=app.store.queued_count,
            backends=backends,
            # Cloud providers not set up in ahv.toml, and the tasks that are unavailable so.
            unavailable_providers=msgspec.convert(
                app.providers.unconfigured_rows(), list[UnavailableProvider]
            ),
        )
    )


def _check_range(request: web.Request, size: int) -> None:
    # aiohttp answers an unsatisfiable Range with an empty 416; ours says why, in our shape.
    try:
        wanted = request.http_range
    except ValueError:
        raise AhvError("invalid_range", "Range: not a valid byte range", status=416) from None
    start = wanted.start
    if start is not None and start >= size:
        raise AhvError(
            "range_not_satisfiable", f"Range: starts at byte {start}, file has {size}", status=416
        )


@routes.get("/files/{name}")
async def result_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    path = orchestrator(request).files_dir / name
    if not FILE_NAME.match(name):
        raise AhvError("file_not_found", f"no result file {name!r}", status=404)
    if not path.is_file():
        expired_us = await orchestrator(request).store.expired_file(name)
        if expired_us is not None:  # a tombstone lives as long as the job's record
            raise AhvError(
                "file_expired",
                f"result file {name!r} expired at {iso(expired_us)} (retention.files_s)",
                status=410,
            )
        raise AhvError("file_not_found", f"no result file {name!r}", status=404)
    _check_range(request, path.stat().st_size)
    extension = name.rsplit(".", 1)[1]
    response = web.FileResponse(path)
    response.content_type = CONTENT_TYPES.get(extension, "application/octet-stream")
    response.headers["Cache-Control"] = "private, max-age=86400"
    return response
