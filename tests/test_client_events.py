"""The client's event streams: the SSE reader, `events()` and `wait()` over a stream.

A local aiohttp server speaking the events endpoints' format (`GET /v1/jobs/{id}/events`,
`GET /v1/events`) stands in for odd servers (one cut short, one behind a gateway that answers
502, one without events endpoints at all); `test_events_on_the_real_server` runs against ahv
itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ahv.client import AhvClientError, AsyncClient, JobEvent
from ahv.client.sse import ServerSentEvent, SseParser, iter_events
from tests.conftest import KEY_A, Api


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def collect(*parts: bytes) -> list[ServerSentEvent]:
    return [event async for event in iter_events(chunks(*parts))]


async def test_sse_reader_follows_the_format() -> None:
    stream = (
        b": keepalive\n\n"
        b"event: hello\ndata: {}\n\n"
        b"event: job\nid: 7\ndata: line one\ndata:line two\n\n"
        b"event: empty\n\n"  # no data: nothing is dispatched
        b"data: plain\n\n"  # no event field: "message"; the last id carries on
        b"id: 8\nevent: deleted\r\ndata: x\r\n\r\n"
        b"unknown: field\nevent: job\rdata: cr\r\r"
        b"data: no blank line at the end"
    )
    events = await collect(stream)
    assert [(e.event, e.data, e.id) for e in events] == [
        ("hello", "{}", None),
        ("job", "line one\nline two", "7"),
        ("message", "plain", "7"),
        ("deleted", "x", "8"),
        ("job", "cr", "8"),
    ]


async def test_sse_reader_takes_chunks_cut_anywhere() -> None:
    text = 'event: job\r\nid: 1\r\ndata: {"name": "Đặng Thị Ánh"}\r\n\r\n: ping\r\n\r\n' * 3
    raw = text.encode()
    expected = await collect(raw)
    assert len(expected) == 3 and expected[0].data == '{"name": "Đặng Thị Ánh"}'
    for size in (1, 2, 3, 5, 7, 64):
        parts = [raw[i : i + size] for i in range(0, len(raw), size)]
        assert await collect(*parts) == expected, size


def test_sse_parser_ignores_ids_with_nul() -> None:
    parser = SseParser()
    for line in ("id: a\0b", "data: x"):
        assert parser.feed_line(line) is None
    event = parser.feed_line("")
    assert event is not None and event.id is None and parser.last_id is None


def document(job_id: str, status: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "job_id": job_id,
        "task": "sleep",
        "status": status,
        "progress": 100 if status == "succeeded" else 0,
        "ok": True,
        "created_at": "2025-01-02T03:04:05.123456+00:00",
        "created_at_ms": 1735787045123,
        "result": None,
        "error": None,
        "predictTime": 1,
        "a_field_from_a_newer_server": [1, 2],
        **extra,
    }
    if status == "succeeded":
        doc["result"] = {"ok": True, "status": status, "url": None, "filename": None, "meta": {}}
    return doc


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + f"data: {msgspec.json.encode(data).decode()}\n\n").encode()


@dataclass
class StandIn:
    """Speaks the events endpoints' contract; writes its bytes in small pieces."""

    server: TestServer | None = None
    polls: int = 0
    cut_short: set[str] = field(default_factory=set)
    gateway_down: set[str] = field(default_factory=set)  # a proxy answers 502 for their streams
    seen_last_event_id: list[str | None] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def write(self, request: web.Request, *pieces: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        data = b"".join(pieces)
        for i in range(0, len(data), 11):
            await response.write(data[i : i + 11])
            await asyncio.sleep(0)
        return response

    async def job_events(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        if job_id == "unknown":
            error = {"ok": False, "error": {"code": "job_not_found", "message": "no job"}}
            return web.json_response(error, status=404)
        if job_id in self.gateway_down:
            self.gateway_down.discard(job_id)
            page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
            return web.Response(status=502, text=page, content_type="text/html")
        self.seen_last_event_id.append(request.headers.get("Last-Event-ID"))
        pieces = [sse("job", document(job_id, "queued", queue_position=0), 1), b": keepalive\n\n"]
        if job_id not in self.cut_short:
            pieces += [sse("job", document(job_id, "running"), 2)]
            pieces += [sse("job", document(job_id, "succeeded"), 3)]
        return await self.write(request, *pieces)

    async def all_events(self, request: web.Request) -> web.StreamResponse:
        assert request.query.get("task") == "sleep"
        return await self.write(
            request,
            sse("hello", {"server": "stand-in"}),
            sse("job", document("j1", "queued"), 10),
            b": keepalive\n\n",
            sse("job", document("j1", "succeeded"), 11),
            sse("deleted", {"job_id": "j1"}, 12),
        )

    async def no_such_endpoint(self, request: web.Request) -> web.Response:
        message = f"no such endpoint: GET {request.path}"
        error = {"ok": False, "error": {"code": "not_found", "message": message}}
        return web.json_response(error, status=404)

    async def get_job(self, request: web.Request) -> web.Response:
        self.polls += 1
        return web.json_response(document(request.match_info["job_id"], "succeeded"))


async def _stand_in(aiohttp_server: Any, *, with_events: bool) -> StandIn:
    found = StandIn()
    app = web.Application()
    if with_events:
        app.router.add_get("/v1/jobs/{job_id}/events", found.job_events)
        app.router.add_get("/v1/events", found.all_events)
    else:  # as ahv answers an endpoint it does not have
        app.router.add_get("/v1/jobs/{job_id}/events", found.no_such_endpoint)
    app.router.add_get("/v1/jobs/{job_id}", found.get_job)
    found.server = await aiohttp_server(app)
    return found


@pytest.fixture
async def stand_in(aiohttp_server: Any) -> StandIn:
    return await _stand_in(aiohttp_server, with_events=True)


async def test_job_events_until_the_final_status(stand_in: StandIn) -> None:
    async with AsyncClient(stand_in.url, KEY_A) as ahv:
        events = [event async for event in ahv.events("j1", last_event_id="0")]
    assert [(e.type, e.job.status if e.job else None, e.id) for e in events] == [
        ("job", "queued", "1"),
        ("job", "running", "2"),
        ("job", "succeeded", "3"),
    ]
    first = events[0].job
    assert first is not None and first.queue_position == 0 and first.created_at is not None
    assert stand_in.seen_last_event_id == ["0"]


async def test_all_events_with_filters(stand_in: StandIn) -> None:
    async with AsyncClient(stand_in.url, KEY_A) as ahv:
        events = [event async for event in ahv.events(task="sleep")]
    assert events[-1] == JobEvent(type="deleted", job_id="j1", id="12")
    assert [(e.type, e.job_id, e.id) for e in events[:2]] == [
        ("job", "j1", "10"),
        ("job", "j1", "11"),
    ]


async def test_wait_follows_the_stream(stand_in: StandIn) -> None:
    async with AsyncClient(stand_in.url, KEY_A) as ahv:
        done = await ahv.wait("j2", timeout_s=10, poll_interval_s=0.01)
        assert done.status == "succeeded" and done.job_id == "j2"
        assert stand_in.polls == 0  # the final status came from the stream
        # A stream that ends before the final status: wait() polls for the rest.
        stand_in.cut_short.add("j3")
        done = await ahv.wait("j3", timeout_s=10, poll_interval_s=0.01)
        assert done.status == "succeeded" and stand_in.polls == 1
        # A gateway's 502 for the stream (ahv restarting behind a proxy) is waited out by
        # polling, as wait() waits out a 502 to its polls.
        stand_in.gateway_down.add("j4")
        done = await ahv.wait("j4", timeout_s=10, poll_interval_s=0.01)
        assert done.status == "succeeded" and stand_in.polls == 2
        # An unknown job on a server with events is the server's error, not a fallback.
        with pytest.raises(AhvClientError) as unknown:
            await ahv.wait("unknown", timeout_s=10)
        assert unknown.value.code == "job_not_found"


async def test_wait_polls_without_an_events_endpoint(aiohttp_server: Any) -> None:
    # An older server: 404 `not_found` for the events endpoints. wait() polls, and the second
    # wait() goes straight to polling.
    old_server = await _stand_in(aiohttp_server, with_events=False)
    async with AsyncClient(old_server.url, KEY_A) as ahv:
        for polls in (1, 2):
            done = await ahv.wait(f"j{polls}", timeout_s=10, poll_interval_s=0.01)
            assert done.status == "succeeded" and old_server.polls == polls


async def test_wait_follows_the_real_servers_stream(api: Api) -> None:
    # Polling every 30 s would take 30 s past the job's start; the stream ends wait() with the
    # job's final event.
    async with AsyncClient(api.url, KEY_A) as ahv:
        for _ in range(2):
            job = await ahv.submit("sleep", {"seconds": 0.5, "steps": 5})
            await api.wait(job.job_id, frozenset({"running", "succeeded"}))
            began = asyncio.get_running_loop().time()
            done = await ahv.wait(job.job_id, timeout_s=20, poll_interval_s=30)
            assert done.status == "succeeded" and done.result is not None
            assert asyncio.get_running_loop().time() - began < 10


async def test_events_on_the_real_server(api: Api) -> None:
    # Opened and closed at once: only the status matters here.
    async with api.session.get(api.url + "/v1/events", headers={"X-API-Key": KEY_A}) as probe:
        assert probe.status == 200 and probe.content_type == "text/event-stream"
    async with AsyncClient(api.url, KEY_A) as ahv:
        seen: list[JobEvent] = []
        final = asyncio.Event()
        gone = asyncio.Event()

        async def listen() -> None:
            async with contextlib.aclosing(ahv.events()) as events:
                async for event in events:
                    seen.append(event)
                    if event.job is not None and event.job.is_final:
                        final.set()
                    if event.type == "deleted":
                        gone.set()
                        return

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.3)  # connected (the stream's hello is not shown to callers)
        job = await ahv.submit("sleep", {"seconds": 1.0})
        await asyncio.wait_for(final.wait(), 15)
        statuses = [e.job.status for e in seen if e.job is not None and e.job_id == job.job_id]
        assert statuses[-1] == "succeeded", statuses
        # The job's own stream: its current document first, then it ends (already final).
        own = [event async for event in ahv.events(job.job_id)]
        assert [e.job.status for e in own if e.job] == ["succeeded"]
        await ahv.delete(job.job_id)
        await asyncio.wait_for(gone.wait(), 15)
        assert seen[-1] == JobEvent(type="deleted", job_id=job.job_id, id=seen[-1].id)
        await listener
        with pytest.raises(AhvClientError) as unknown:
            [event async for event in ahv.events("0" * 32)]
        assert unknown.value.code == "job_not_found"


async def test_events_resume_from_last_event_id_on_the_real_server(api: Api) -> None:
    async with AsyncClient(api.url, KEY_A) as ahv:
        first = await ahv.submit("sleep", {"seconds": 0})
        await ahv.wait(first.job_id, timeout_s=15)
        # The job's own stream gives the id of its final event; what comes after is caught up.
        (last,) = [event async for event in ahv.events(first.job_id)]
        assert last.id is not None
        missed = await ahv.submit("sleep", {"seconds": 0})
        await ahv.wait(missed.job_id, timeout_s=15)

        async def first_events(last_event_id: str) -> list[JobEvent]:
            got: list[JobEvent] = []
            async with contextlib.aclosing(ahv.events(last_event_id=last_event_id)) as events:
                async for event in events:
                    got.append(event)
                    if event.type == "resync" or event.job_id == missed.job_id:
                        return got
            return got

        (caught,) = await asyncio.wait_for(first_events(last.id), 15)
        assert caught.type == "job" and caught.job is not None
        assert caught.job.status == "succeeded" and int(caught.id or 0) > int(last.id)
        # An id the server cannot resume from: the caller is told to list the jobs again.
        (resync,) = await asyncio.wait_for(first_events("1"), 15)
        assert resync == JobEvent(type="resync", job_id="")
