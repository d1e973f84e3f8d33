"""`create_app(config)`: the aiohttp application and the lifecycle of what it owns."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ahv.config import Config
from ahv.http import (
    deliveries_routes,
    direct,
    events_routes,
    jobs_routes,
    metrics_routes,
    openapi,
    ops_routes,
    pages,
)
from ahv.http.keys import ORCHESTRATOR
from ahv.http.middleware import MAX_BODY_KEY, READ_TIMEOUT_KEY, api_middleware
from ahv.orchestrator import Orchestrator


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[api_middleware],
        client_max_size=config.server.max_body_bytes,
    )
    orchestrator = Orchestrator(config)
    app[ORCHESTRATOR] = orchestrator
    app[MAX_BODY_KEY] = config.server.max_body_bytes
    app[READ_TIMEOUT_KEY] = config.server.read_timeout_s
    app.add_routes(jobs_routes.routes)
    app.add_routes(ops_routes.routes)
    app.add_routes(deliveries_routes.routes)
    app.add_routes(metrics_routes.routes)
    events_routes.setup(app)
    app.add_routes(openapi.routes)
    app[openapi.DOCUMENT] = openapi.OpenApi(orchestrator.registry, config)
    for spec in orchestrator.registry.values():
        if spec.direct_path is not None:
            app.router.add_post(spec.direct_path, direct.direct_handler(spec.name))
    if "faceswap" in orchestrator.registry:
        app.router.add_post("/faceswap", direct.direct_handler(direct.face_task_for))
    pages.setup(app, orchestrator.registry, config)  # GET /, /dashboard, /static/*

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await orchestrator.start()
        yield
        await orchestrator.stop()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(_begin_drain)
    return app


async def _begin_drain(app: web.Application) -> None:
    # Refuse new work as soon as shutdown begins, before open connections are closed.
    app[ORCHESTRATOR].draining = True
