"""Health, stats, backend diagnostics and result files."""

from __future__ import annotations

import re

from aiohttp import web

import ahv
from ahv.errors import AhvError
from ahv.http.jobs_routes import json_response
from ahv.http.keys import caller, orchestrator

routes = web.RouteTableDef()

_FILE_NAME = re.compile(r"^[0-9a-f]{32}\.[a-z0-9]{2,5}$")
_CONTENT_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "json": "application/json",
}


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    app = orchestrator(request)
    status = "draining" if app.draining else "ready"
    body = {"ok": not app.draining, "status": status, "version": ahv.__version__}
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
            for job_id in row.get("running_jobs", []):
                job = await app.store.get(job_id)
                if job is not None and job.owner == who.name:
                    mine.append(job_id)
            row["running_jobs"] = mine
    return json_response({"ok": True, "queue_depth": app.store.queued_count, "backends": backends})


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
    if not _FILE_NAME.match(name) or not path.is_file():
        raise AhvError("file_not_found", f"no result file {name!r}", status=404)
    _check_range(request, path.stat().st_size)
    extension = name.rsplit(".", 1)[1]
    response = web.FileResponse(path)
    response.content_type = _CONTENT_TYPES.get(extension, "application/octet-stream")
    response.headers["Cache-Control"] = "private, max-age=86400"
    return response
