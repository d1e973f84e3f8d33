"""Live job events (server-sent events): a job's stream from queued to its end, the all-jobs
stream with its filters and key scoping, keepalives, and streams that end cleanly and
quickly when the server stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgspec

from ahv.events import EventHub
from ahv.jobs import JobRow
from tests.conftest import FINAL, KEY_A, KEY_ADMIN, KEY_B, Api, StartServer
from tests.sse import Message, SseReader
from tests.test_crash import ahv_process, submit

__all__ = ["ahv_process"]

ONE_SLOT = [{"name": "cpu", "slots": 1, "tasks": ["sleep", "upscale"]}]


@asynccontextmanager
async def stream(
    session: aiohttp.ClientSession, url: str, key: str = KEY_A, last_event_id: str | None = None
) -> AsyncIterator[SseReader]:
    headers = {"X-API-Key": key}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with session.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        yield SseReader(response)


async def until_final(reader: SseReader, *job_ids: str) -> list[Message]:
    """Events up to the one that brings the last of `job_ids` to a final status."""
    seen: list[Message] = []
    waiting = set(job_ids)
    while waiting:
        event = await reader.next_event()
        seen.append(event)
        if event.event == "job" and event.json["status"] in FINAL:
            waiting.discard(event.json["job_id"])
    return seen


async def test_a_jobs_stream_follows_it_from_queued_to_its_end(start_server: StartServer) -> None:
    api = await start_server(backends=ONE_SLOT)
    blocker = await api.submit("sleep", {"seconds": 0.6})
    await api.wait(blocker["job_id"], frozenset({"running"}))
    job_id = (await api.submit("sleep", {"seconds": 0.3, "steps": 3}))["job_id"]
    async with stream(api.session, f"{api.url}/v1/jobs/{job_id}/events") as reader:
        events = await reader.events()
    assert {e.event for e in events} == {"job"}
    ids = [e.id or 0 for e in events]
    assert all(e.id is not None for e in events) and ids == sorted(set(ids))
    for event in events:
        assert event.data == msgspec.json.encode(event.json)  # compact JSON, one line
    docs = [e.json for e in events]
    assert docs[0]["status"] == "queued" and docs[0]["queue_position"] == 0
    running = [d["progress"] for d in docs if d["status"] == "running"]
    assert running == [0, 33, 66]  # claimed, then each progress change
    assert [d["status"] for d in docs][-1] == "succeeded"
    assert sum(d["status"] in FINAL for d in docs) == 1  # the stream ended right after it
    # The same document as GET, which alone adds the job's payload (for the dashboard).
    got = await api.job(job_id)
    payload = got.pop("payload")
    assert payload["seconds"] == 0.3 and payload["steps"] == 3
    assert docs[-1] == got


async def test_a_finished_jobs_stream_is_one_event(api: Api) -> None:
    job_id = (await api.submit("sleep", {"seconds": 0}))["job_id"]
    doc = await api.wait(job_id)
    async with stream(api.session, f"{api.url}/v1/jobs/{job_id}/events") as reader:
        events = await reader.events()
    doc.pop("payload")  # GET alone adds it
    assert [(e.event, e.json) for e in events] == [("job", doc)]


async def test_a_jobs_stream_has_the_same_visibility_as_get(api: Api) -> None:
    job_id = (await api.submit("sleep", {"seconds": 0}, key=KEY_B))["job_id"]
    await api.wait(job_id, key=KEY_B)
    status, body, _ = await api.call("GET", f"/v1/jobs/{job_id}/events", key=KEY_A)
    assert status == 404 and body["error"]["code"] == "job_not_found"
    status, body, _ = await api.call("GET", f"/v1/jobs/{job_id}/events", key=None)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body, _ = await api.call("GET", "/v1/events", key=None)
    assert status == 401
    async with stream(api.session, f"{api.url}/v1/jobs/{job_id}/events", KEY_ADMIN) as reader:
        (event,) = await reader.events()
    assert event.json["job_id"] == job_id and event.json["status"] == "succeeded"


async def test_all_events_stream_is_scoped_to_the_key_and_filtered(api: Api) -> None:
    url = f"{api.url}/v1/events"
    async with (
        stream(api.session, url) as mine,
        stream(api.session, f"{url}?status=succeeded", KEY_ADMIN) as succeeded,
        stream(api.session, f"{url}?task=upscale") as upscales,
    ):
        for reader in (mine, succeeded, upscales):
            hello = await reader.next_event()
            assert hello.event == "hello" and hello.json == {"ok": True}
        theirs = (await api.submit("sleep", {"seconds": 0}, key=KEY_B))["job_id"]
        await api.wait(theirs, key=KEY_B)
        ours = (await api.submit("sleep", {"seconds": 0.05, "steps": 2}))["job_id"]
        # An upscale job whose input is missing: it fails fast, and it is the other task.
        missing = f"{api.url}/files/{'0' * 32}.png"
        failing = (await api.submit("upscale", {"image_url": missing}))["job_id"]
        seen = await until_final(mine, ours, failing)
        assert {e.json["job_id"] for e in seen} == {ours, failing}  # none of client B's
        statuses = [e.json["status"] for e in seen if e.json["job_id"] == ours]
        assert statuses[0] == "queued" and statuses[-1] == "succeeded" and "running" in statuses
        # The admin sees every key's jobs, here only as they succeed.
        got = [await succeeded.next_event() for _ in range(2)]
        assert {e.json["job_id"] for e in got} == {theirs, ours}
        assert {e.json["status"] for e in got} == {"succeeded"}
        # The upscale filter: nothing of the sleep job, all of the upscale job.
        tail = await until_final(upscales, failing)
        assert {e.json["job_id"] for e in tail} == {failing}
        assert tail[-1].json["status"] == "failed"
        # A deletion is announced to every stream that may see the job.
        status, _, _ = await api.call("DELETE", f"/v1/jobs/{ours}")
        assert status == 200
        deleted = await mine.next_event()
        assert deleted.event == "deleted" and deleted.json == {"job_id": ours}
        assert (deleted.id or 0) > (seen[-1].id or 0)
        status, body, _ = await api.call("GET", "/v1/events?status=done")
        assert status == 422 and body["error"]["code"] == "invalid_request"


async def test_idle_streams_get_keepalive_comments(start_server: StartServer) -> None:
    api = await start_server(server={"sse_keepalive_s": 0.2})
    job_id = (await api.submit("sleep", {"seconds": 1.5, "steps": 2}))["job_id"]
    async with (
        stream(api.session, f"{api.url}/v1/events") as everything,
        stream(api.session, f"{api.url}/v1/jobs/{job_id}/events") as one,
    ):
        assert (await everything.next()).event == "hello"  # type: ignore[union-attr]
        assert (await one.next()).event == "job"  # type: ignore[union-attr]
        for reader in (everything, one):
            began = time.monotonic()
            comment = await reader.next(timeout_s=2)
            while comment is not None and comment.event is not None:  # a job change
                comment = await reader.next(timeout_s=2)
            assert comment is not None and comment.comment == "keepalive"
            assert time.monotonic() - began < 1.5


async def test_open_streams_end_cleanly_and_do_not_hold_up_a_stop(ahv_process: Any) -> None:
    server = ahv_process(server={"shutdown_grace_s": 0.2}, backends=ONE_SLOT)
    url = await asyncio.to_thread(server.start)
    async with aiohttp.ClientSession() as session:
        await submit(session, url, {"task": "sleep", "payload": {"seconds": 30, "steps": 300}})
        queued = await submit(session, url, {"task": "sleep", "payload": {"seconds": 0}})
        async with (
            stream(session, f"{url}/v1/events") as everything,
            stream(session, f"{url}/v1/jobs/{queued}/events") as one,
        ):
            assert (await everything.next_event()).event == "hello"
            assert (await one.next_event()).json["status"] == "queued"
            began = time.monotonic()
            server.terminate()
            # Both end with a proper end of stream (a cut connection would raise here).
            await asyncio.gather(everything.events(timeout_s=8), one.events(timeout_s=8))
            assert await asyncio.to_thread(server.wait_exit, 20) == 0
            # aiohttp would wait 5 s (shutdown_timeout) for streams that did not end.
            assert time.monotonic() - began < 4.5


# -- reconnecting with Last-Event-ID -------------------------------------------------------------


async def test_reconnecting_with_last_event_id_catches_up(start_server: StartServer) -> None:
    api = await start_server()
    url = f"{api.url}/v1/events"
    async with stream(api.session, url) as reader:
        assert (await reader.next_event()).json == {"ok": True}  # no Last-Event-ID: as ever
        gone = (await api.submit("sleep", {"seconds": 0}))["job_id"]
        seen = await until_final(reader, gone)
    last = seen[-1].id
    assert last is not None
    # While away: a job runs to its end, one is deleted, another key's job ends.
    done = (await api.submit("sleep", {"seconds": 0.05, "steps": 2}))["job_id"]
    await api.wait(done)
    assert (await api.call("DELETE", f"/v1/jobs/{gone}"))[0] == 200
    theirs = (await api.submit("sleep", {"seconds": 0}, key=KEY_B))["job_id"]
    await api.wait(theirs, key=KEY_B)

    async with stream(api.session, url, last_event_id=str(last)) as reader:
        assert (await reader.next_event()).json == {"ok": True, "resumed": True}
        caught = [await reader.next_event(), await reader.next_event()]
        # Each job that changed since, once, as it is now (not its steps), oldest first.
        assert [(e.event, e.json["job_id"]) for e in caught] == [("job", done), ("deleted", gone)]
        assert caught[0].json["status"] == "succeeded" and caught[0].json["result"]
        ids = [e.id or 0 for e in caught]
        assert ids == sorted(ids) and ids[0] > last
        # Then live: nothing else was replayed (not the other key's job).
        live = (await api.submit("sleep", {"seconds": 0}))["job_id"]
        following = await reader.next_event()
        assert following.json["job_id"] == live and (following.id or 0) > ids[-1]
        await until_final(reader, live)

    # The filters apply to what is caught up on; deletions reach every stream that may see
    # the job. From the last replayed id on, only what came after.
    async with stream(api.session, f"{url}?status=succeeded", last_event_id=str(last)) as reader:
        assert (await reader.next_event()).json["resumed"] is True
        got = [await reader.next_event() for _ in range(3)]
        assert [(e.event, e.json["job_id"]) for e in got] == [
            ("job", done),
            ("deleted", gone),
            ("job", live),
        ]
    async with stream(api.session, url, last_event_id=str(ids[-1])) as reader:
        assert (await reader.next_event()).json["resumed"] is True
        got = await reader.next_event()
        assert got.json["job_id"] == live and got.json["status"] == "succeeded"


async def test_a_last_event_id_it_cannot_resume_from_says_so(start_server: StartServer) -> None:
    api = await start_server()
    # An id from before this run of the server (ids are microseconds since the epoch), one
    # from the future, and one this server never gives: resumed false, nothing replayed.
    await api.wait((await api.submit("sleep", {"seconds": 0}))["job_id"])
    for last in ("1", str(10**17), "abc"):
        async with stream(api.session, f"{api.url}/v1/events", last_event_id=last) as reader:
            assert (await reader.next_event()).json == {"ok": True, "resumed": False}, last
            job_id = (await api.submit("sleep", {"seconds": 0}))["job_id"]
            assert (await reader.next_event()).json["job_id"] == job_id
            await until_final(reader, job_id)
    # A job's stream needs no catch-up: whatever the id, it opens with the current document.
    url = f"{api.url}/v1/jobs/{job_id}/events"
    async with stream(api.session, url, last_event_id="1") as reader:
        (only,) = await reader.events()
        assert only.json["status"] == "succeeded"


async def test_event_ids_of_the_next_run_are_above_and_do_not_resume(ahv_process: Any) -> None:
    server = ahv_process()
    async with aiohttp.ClientSession() as session:
        url = await asyncio.to_thread(server.start)
        async with stream(session, f"{url}/v1/events") as reader:
            await reader.next_event()
            first = await submit(session, url, {"task": "sleep", "payload": {"seconds": 0}})
            last = (await until_final(reader, first))[-1].id or 0
        server.terminate()
        assert await asyncio.to_thread(server.wait_exit, 20) == 0
        url = await asyncio.to_thread(server.start)
        async with stream(session, f"{url}/v1/events", last_event_id=str(last)) as reader:
            assert (await reader.next_event()).json == {"ok": True, "resumed": False}
            second = await submit(session, url, {"task": "sleep", "payload": {"seconds": 0}})
            assert ((await reader.next_event()).id or 0) > last
            await until_final(reader, second)
        server.terminate()
        assert await asyncio.to_thread(server.wait_exit, 20) == 0


# -- the hub's queues, on their own ------------------------------------------------------------


def row(job_id: str, status: str, progress: int = 0, owner: str = "client-a") -> JobRow:
    return JobRow(
        id=job_id,
        owner=owner,
        task="sleep",
        status=status,
        priority=5,
        rank_ms=0,
        payload=b"{}",
        max_attempts=1,
        created_us=0,
        queued_us=0,
        predict_time=1.0,
        progress=progress,
    )


def document(job: JobRow) -> dict[str, Any]:
    return {"job_id": job.id, "status": job.status, "progress": job.progress}


async def test_a_slow_consumer_loses_intermediate_events_never_final_ones() -> None:
    hub = EventHub(queue_limit=4, overflow_limit=8)
    sub = hub.subscribe(owner="client-a")
    hub.publish(row("a", "running", 10), document)
    hub.publish(row("b", "running", 10), document)
    for progress in range(20, 100, 10):  # a flood of progress on job a
        hub.publish(row("a", "running", progress), document)
    hub.publish(row("b", "succeeded", 100), document)
    hub.publish(row("a", "running", 95), document)
    batch = await sub.next_batch(0)
    got = [(e.job_id, msgspec.json.decode(e.data)["progress"], e.final) for e in batch]
    # Bounded; b's end kept; each job's latest state is what the consumer sees last.
    assert len(got) == 4 and sub.dropped == 8
    assert ("b", 100, True) in got
    assert [g for g in got if g[0] == "a"][-1] == ("a", 95, False)
    assert [e.id for e in batch] == sorted(e.id for e in batch)
    # Nothing but final events queued past the limit: kept up to the overflow limit, then
    # the consumer is cut off (its stream ends; it reconnects).
    for n in range(8):
        hub.publish(row(f"f{n}", "succeeded", 100), document)
    assert len(await sub.next_batch(0)) == 8 and not sub.closed
    for n in range(9):
        hub.publish(row(f"g{n}", "succeeded", 100), document)
    assert await sub.next_batch(0) == [] and sub.closed


async def test_the_hub_routes_by_job_owner_and_ends_on_close() -> None:
    hub = EventHub()
    one = hub.subscribe(job_id="a")
    mine = hub.subscribe(owner="client-a", status="running")
    everyone = hub.subscribe()
    hub.publish(row("a", "queued"), document)
    hub.publish(row("b", "running", owner="client-b"), document)
    hub.publish(row("c", "running"), document)
    hub.publish_deleted(row("a", "queued"))
    assert [(e.name, e.job_id) for e in await one.next_batch(0)] == [("job", "a"), ("deleted", "a")]
    assert [(e.name, e.job_id) for e in await mine.next_batch(0)] == [
        ("job", "c"),
        ("deleted", "a"),
    ]
    assert [e.job_id for e in await everyone.next_batch(0)] == ["a", "b", "c", "a"]
    hub.unsubscribe(one)
    assert hub.subscribers == 2
    hub.close()
    assert mine.closed and everyone.closed and hub.subscribe().closed
    assert await everyone.next_batch(5) == []  # at once: closed


async def test_the_hub_remembers_the_latest_change_of_its_last_jobs() -> None:
    hub = EventHub(replay_limit=2)
    start = hub.next_id()
    hub.publish(row("a", "queued"), document)
    hub.publish(row("b", "queued"), document)
    (a, b) = hub.changes_since(start) or []
    assert (a.job_id, b.job_id) == ("a", "b") and start < a.id < b.id
    hub.publish(row("a", "running"), document)  # a's latest change moves to the end
    assert [c.job_id for c in hub.changes_since(start) or []] == ["b", "a"]
    assert hub.changes_since(b.id) == [hub.changes_since(start)[-1]]  # type: ignore[index]
    hub.publish_deleted(row("c", "succeeded", owner="client-b"))  # b is forgotten now
    assert hub.changes_since(start) is None  # it changed after `start`: cannot tell
    changes = hub.changes_since(b.id) or []
    assert [(c.job_id, c.deleted, c.owner) for c in changes] == [
        ("a", False, "client-a"),
        ("c", True, "client-b"),
    ]
    assert hub.changes_since(changes[-1].id) == []
    assert hub.changes_since(changes[-1].id + 1) is None  # not given yet
