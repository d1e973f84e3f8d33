"""A job's webhook delivery log, and sending its `job.finished` event again."""

from __future__ import annotations

from aiohttp import web

from ahv.api_types import Deliveries, Delivery, Redelivered
from ahv.http.jobs_routes import json_response
from ahv.http.keys import caller, orchestrator
from ahv.store import OutboxEvent

routes = web.RouteTableDef()


def delivery_document(event: OutboxEvent) -> Delivery:
    return Delivery(
        event_id=event.event_id,
        event=event.event,
        url=event.url,
        state=event.state,
        attempts=event.attempts,
        last_status=event.last_status,
        last_error=event.last_error,
        next_attempt_at_ms=event.next_attempt_us // 1000 if event.state == "pending" else None,
        delivered_at_ms=None if event.delivered_us is None else event.delivered_us // 1000,
        created_at_ms=event.created_us // 1000,
    )


@routes.get("/v1/jobs/{job_id}/deliveries")
@routes.get("/v1/jobs/{job_id}/webhooks")  # the first name of this list, kept
async def job_deliveries(request: web.Request) -> web.Response:
    app = orchestrator(request)
    job = await app.visible_job(caller(request), request.match_info["job_id"])
    deliveries = [delivery_document(e) for e in await app.store.outbox_for_job(job.id)]
    return json_response(Deliveries(ok=True, job_id=job.id, deliveries=deliveries))


@routes.post("/v1/jobs/{job_id}/redeliver")
async def redeliver(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    event = await orchestrator(request).redeliver(caller(request), job_id)
    return json_response(
        Redelivered(ok=True, job_id=job_id, delivery=delivery_document(event)), status=202
    )
