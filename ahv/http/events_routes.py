"""Live job events as server-sent events (text/event-stream), read with the same X-API-Key
header as every other call (browsers read them with fetch(), not EventSource):

- `GET /v1/jobs/{id}/events`: the job's document now, then at every change; the stream ends
  after the event with a final status, or after `event: deleted`.
- `GET /v1/events?task=&status=`: `event: hello` first, then every change of every job the
  key may see; it never ends by itself.

Reconnecting: a job's stream opens with the job's current document anyway, so it needs
nothing more. The all-jobs stream, given `Last-Event-ID` (the `id` of the last event the
client got), sends after `hello` the current document of every job it may see that changed
after that event (and `deleted` for those deleted), then goes on live; its hello says
`"resumed": true` when that is all of them, false when the server cannot tell (an id from
before a restart, or older than the last ahv.events.REPLAY_LIMIT jobs changed): the client
then re-lists with GET /v1/jobs.

Each message is `event: job\\nid: <n>\\ndata: <compact JSON document>\\n\\n`; an idle stream
gets a `: keepalive` comment every `server.sse_keepalive_s`. Streams end when the server
shuts down, so they never hold up its stop.
"""

from __future__ import annotations

from aiohttp import web

from ahv.errors import AhvError
from ahv.events import (
    HELLO,
    KEEPALIVE,
    Change,
    Subscription,
    deleted_event,
    hello,
    job_event,
)
from ahv.http.jobs_routes import job_filters
from ahv.http.keys import ORCHESTRATOR, caller, orchestrator

routes = web.RouteTableDef()

# What a stream asked for once the server has begun to shut down gets (`draining`, with
# Retry-After); /openapi.json documents it on both routes from here.
DRAINING_STATUS = 503


def setup(app: web.Application) -> None:
    app.add_routes(routes)
    app.on_shutdown.append(_end_streams)


async def _end_streams(app: web.Application) -> None:
    # on_shutdown runs before aiohttp waits for open requests: the streams end first.
    app[ORCHESTRATOR].watch.hub.close()


@routes.get("/v1/jobs/{job_id}/events")
async def job_events(request: web.Request) -> web.StreamResponse:
    app = orchestrator(request)
    hub = app.watch.hub
    _refuse_when_closed(hub.closed)
    job_id = request.match_info["job_id"]
    # Subscribe before reading the job, so no change between the two is missed.
    who = caller(request)
    sub = hub.subscribe(job_id=job_id, key_name=who.name)
    try:
        job = await app.visible_job(who, job_id)
        first = hub.event(job, app.document(job))
        sub.skip_through(first.id)  # changes already in what was just read
        response = await _open(request)
        if request.method == "HEAD":
            return response  # headers only: a body here would corrupt the next response
        try:
            await response.write(first.encode())
            if not job.is_terminal:
                await _pump(request, response, sub, until_final=True)
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        return response
    finally:
        hub.unsubscribe(sub)


@routes.get("/v1/events")
async def all_events(request: web.Request) -> web.StreamResponse:
    app = orchestrator(request)
    hub = app.watch.hub
    _refuse_when_closed(hub.closed)
    who = caller(request)
    status, task = job_filters(request)
    last_event_id = request.headers.get("Last-Event-ID")
    sub = hub.subscribe(
        owner=None if who.is_admin else who.name,
        task=task,
        status=status,
        key_name=who.name,
    )
    # Right after subscribing, with no await between: every change is either in what is
    # caught up on here or queued for the stream.
    since = None if last_event_id is None else _event_id(last_event_id)
    missed = None if since is None else hub.changes_since(since)
    try:
        response = await _open(request)
        if request.method == "HEAD":
            return response  # headers only, and no stream held open
        try:
            if last_event_id is None:
                await response.write(HELLO)
            else:
                # Not resumed: nothing is replayed, the client re-lists instead.
                await response.write(hello(resumed=missed is not None))
                if missed:
                    await _catch_up(request, response, sub, missed)
            await _pump(request, response, sub, until_final=False)
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response
    finally:
        hub.unsubscribe(sub)


def _event_id(value: str) -> int | None:
    """A Last-Event-ID this server could have given (a decimal event id), else None."""
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 20 else None


async def _catch_up(
    request: web.Request, response: web.StreamResponse, sub: Subscription, missed: list[Change]
) -> None:
    """The current document of each job of `missed` this stream may see (or its deletion),
    under the id of its latest change, oldest first."""
    app = orchestrator(request)
    jobs = await app.store.get_many([c.job_id for c in missed if not c.deleted])
    chunk: list[bytes] = []
    for change in missed:
        if change.deleted:
            if not sub.may_see(change.owner, change.task, None):
                continue
            chunk.append(deleted_event(change.id, change.job_id).encode())
        else:
            job = jobs.get(change.job_id)
            if job is None or not sub.matches(job):
                continue  # gone since (its deletion is queued), or not for this stream now
            chunk.append(job_event(change.id, job, app.document(job)).encode())
        if len(chunk) >= 100:
            await response.write(b"".join(chunk))
            chunk = []
    if chunk:
        await response.write(b"".join(chunk))


def _refuse_when_closed(closed: bool) -> None:
    if closed:
        raise AhvError(
            "draining", "the server is shutting down", status=DRAINING_STATUS, retry_after_s=5
        )


async def _open(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass events through as they come
        }
    )
    await response.prepare(request)
    return response


async def _pump(
    request: web.Request, response: web.StreamResponse, sub: Subscription, *, until_final: bool
) -> None:
    keepalive_s = orchestrator(request).config.server.sse_keepalive_s
    while True:
        batch = await sub.next_batch(keepalive_s)
        if not batch:
            if sub.closed:
                return
            await response.write(KEEPALIVE)
            continue
        if until_final:
            ends = next((i for i, event in enumerate(batch) if event.final), None)
            if ends is not None:
                await response.write(b"".join(event.encode() for event in batch[: ends + 1]))
                return
        await response.write(b"".join(event.encode() for event in batch))
