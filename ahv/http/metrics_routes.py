"""`GET /metrics`: Prometheus text exposition. It checks its own credentials (the middleware
lets it through): an admin X-API-Key, or `Authorization: Bearer <server.metrics_token>` for a
scraper that should hold no API key. A client key gets 403, no credentials 401."""

from __future__ import annotations

import hmac

from aiohttp import web

from ahv.errors import AhvError
from ahv.http.keys import orchestrator
from ahv.metrics import CONTENT_TYPE
from ahv.orchestrator import Orchestrator

PATH = "/metrics"

routes = web.RouteTableDef()


@routes.get(PATH)
async def metrics(request: web.Request) -> web.Response:
    app = orchestrator(request)
    _authorize(request, app)
    body = app.watch.metrics.render(
        queue_depth=app.store.queued_count,
        queued_by_task=await app.store.queued_by_task(),
        running=app.scheduler.running_count,
        backends=[
            (backend.config.name, backend.config.slots, len(backend.busy))
            for backend in app.scheduler.backends
        ],
    )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _authorize(request: web.Request, app: Orchestrator) -> None:
    token = app.config.server.metrics_token
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer":
        if hmac.compare_digest(presented.strip().encode(), token.encode()):
            return
        if "X-API-Key" not in request.headers:
            raise AhvError("unauthorized", "the metrics token is not valid", status=401)
    if "X-API-Key" not in request.headers:
        how = "an admin X-API-Key" + (" or the metrics bearer token" if token else "")
        raise AhvError("unauthorized", f"{PATH} needs {how}", status=401)
    if not app.keys.authenticate(request.headers.get("X-API-Key")).is_admin:
        raise AhvError("forbidden", f"{PATH} needs an admin key", status=403)
