"""`ahv.client` against the real server: submit, get, wait, cancel, delete, list, errors, the
sync twin, and that importing it loads none of the server's model stack."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ahv import api_types
from ahv.client import AhvClientError, AsyncClient, Client, Job, JobResult, ResultFile
from tests import media as fixtures
from tests.conftest import (
    KEY_A,
    KEY_ADMIN,
    KEY_B,
    Api,
    MediaServer,
    StartServer,
    base_config,
    merge,
)
from tests.fake_providers import FakeOpenAI
from tests.process import AhvProcess

OPENAI_KEY = "sk-proj-TESTclientKEY0123456789abcdefWXYZ"


async def test_submit_get_wait_sleep(api: Api) -> None:
    async with AsyncClient(api.url, KEY_A) as ahv:
        job = await ahv.submit("sleep", {"seconds": 0.2}, priority=7)
        assert isinstance(job, Job)
        assert job.status == "queued" and job.task == "sleep" and job.priority == 7
        assert job.queue_position is not None and job.created_at is not None
        assert job.created_at.utcoffset() is not None  # times are timezone-aware UTC
        got = await ahv.get(job.job_id)
        assert got.job_id == job.job_id
        done = await ahv.wait(job.job_id, timeout_s=15, poll_interval_s=0.05)
        assert done.status == "succeeded" and done.is_final and done.ok
        assert done.progress == 100 and done.duration is not None
        assert done.result is not None and done.result.meta["slept_s"] == 0.2
        assert done.result.meta["backend"].startswith("cpu-")
        # The same document as the raw API gives.
        raw = await api.job(job.job_id)
        assert raw["finished_at_ms"] == done.finished_at_ms and raw["status"] == done.status


def _names(struct: type[msgspec.Struct]) -> set[str]:
    return {field.encode_name for field in msgspec.structs.fields(struct)}


def test_job_type_has_every_field_the_server_sends() -> None:
    # The client's types against the Structs the server encodes its answers with: a field
    # added to the job document must reach the client's users (only the product sheet's
    # second spelling of predict_time is left out).
    assert _names(api_types.JobDocument) - _names(Job) == {"predictTime"}
    assert _names(api_types.JobResult) <= _names(JobResult)
    assert _names(api_types.FileEntry) <= _names(ResultFile)


async def test_job_document_fields_reach_the_client(
    start_server: StartServer, aiohttp_server: Any
) -> None:
    openai = await FakeOpenAI.start(aiohttp_server, OPENAI_KEY)
    api = await start_server(
        retention={"files_s": 3600, "jobs_s": 7200},
        providers={"openai": {"api_key": OPENAI_KEY, "base_url": openai.url}},
    )
    async with AsyncClient(api.url, KEY_A) as ahv:
        job = await ahv.submit("sleep", {"seconds": 0, "write_file": True})
        assert job.expires_at is None and job.payload is None  # not final; POST has no payload
        done = await ahv.wait(job.job_id, timeout_s=15, poll_interval_s=0.05)
        got = await ahv.get(job.job_id)
        raw = await api.job(job.job_id)
        assert done.expires_at_ms == got.expires_at_ms == raw["expires_at_ms"]
        assert got.expires_at_ms == raw["finished_at_ms"] + 3_600_000
        assert got.expires_at is not None
        assert int(got.expires_at.timestamp() * 1000) == raw["expires_at_ms"]
        assert got.payload == raw["payload"] and got.payload["write_file"] is True
        assert got.result is not None and got.result.files == []  # one file: no list
        # Several images (a cloud provider's): every file, each with its own meta.
        made = await ahv.submit("cx_image", {"prompt": "three teapots", "n": 3})
        several = await ahv.wait(made.job_id, timeout_s=30, poll_interval_s=0.05)
        assert several.status == "succeeded", several.error
        raw = await api.job(made.job_id)
    assert several.result is not None and len(several.result.files) == 3
    assert [f.url for f in several.result.files] == [f["url"] for f in raw["result"]["files"]]
    assert several.result.url == several.result.files[0].url
    assert [f.meta["index"] for f in several.result.files] == [0, 1, 2]
    assert all(f.meta["mime"] == "image/png" and f.filename for f in several.result.files)
    async with api.session.get(several.result.files[2].url) as response:
        assert response.status == 200 and response.content_type == "image/png"


async def test_upscale_end_to_end(api: Api, media: MediaServer) -> None:
    url = media.add("astronaut.png", fixtures.astronaut_png(), "image/png")
    async with AsyncClient(api.url, KEY_A) as ahv:
        job = await ahv.submit("upscale", {"image_url": url, "scale": 2})
        done = await ahv.wait(job.job_id, timeout_s=60, poll_interval_s=0.05)
    assert done.status == "succeeded", done.error
    assert done.result is not None and done.result.url is not None
    assert (done.result.meta["width"], done.result.meta["height"]) == (1024, 1024)
    async with api.session.get(done.result.url) as response:
        assert response.status == 200 and response.content_type == "image/jpeg"


async def test_cancel_and_delete(api: Api) -> None:
    async with AsyncClient(api.url, KEY_A) as ahv:
        job = await ahv.submit("sleep", {"seconds": 30, "steps": 300})
        await api.wait(job.job_id, frozenset({"running"}))
        await ahv.cancel(job.job_id)
        done = await ahv.wait(job.job_id, timeout_s=15, poll_interval_s=0.05)
        assert done.status == "canceled" and not done.ok
        # Cancel of a canceled job is a no-op; delete removes it.
        assert (await ahv.cancel(job.job_id)).status == "canceled"
        await ahv.delete(job.job_id)
        with pytest.raises(AhvClientError) as gone:
            await ahv.get(job.job_id)
        assert (gone.value.status, gone.value.code) == (404, "job_not_found")
        # Delete also takes a queued job: it is canceled, then removed.
        queued = await ahv.submit("sleep", {"seconds": 0}, priority=0)
        await ahv.delete(queued.job_id)
        with pytest.raises(AhvClientError):
            await ahv.get(queued.job_id)


async def test_idempotency_key(api: Api) -> None:
    async with AsyncClient(api.url, KEY_A) as ahv:
        first = await ahv.submit("sleep", {"seconds": 0}, idempotency_key="order-7")
        again = await ahv.submit("sleep", {"seconds": 0}, idempotency_key="order-7")
        assert again.job_id == first.job_id
        with pytest.raises(AhvClientError) as conflict:
            await ahv.submit("sleep", {"seconds": 0.01}, idempotency_key="order-7")
        assert (conflict.value.status, conflict.value.code) == (409, "idempotency_conflict")
        assert first.job_id in conflict.value.message


async def test_errors_are_mapped(api: Api) -> None:
    async with AsyncClient(api.url, KEY_A) as ahv:
        with pytest.raises(AhvClientError) as bad:
            await ahv.submit("sleep", {"seconds": -1})
        assert (bad.value.status, bad.value.code) == (422, "invalid_payload")
        assert "payload.seconds" in bad.value.message
        with pytest.raises(AhvClientError) as unknown:
            await ahv.submit("no_such_task", {})
        assert unknown.value.code == "unknown_task"
        with pytest.raises(AhvClientError) as missing:
            await ahv.get("0" * 32)
        assert (missing.value.status, missing.value.code) == (404, "job_not_found")
        with pytest.raises(AhvClientError) as missing_wait:
            await ahv.wait("0" * 32, timeout_s=5)
        assert missing_wait.value.code == "job_not_found"
        done = await ahv.submit("sleep", {"seconds": 0})
        await ahv.wait(done.job_id, timeout_s=10, poll_interval_s=0.05)
        with pytest.raises(AhvClientError) as finished:
            await ahv.cancel(done.job_id)
        assert (finished.value.status, finished.value.code) == (409, "job_finished")
    # Another key's job is invisible; a wrong key is a 401.
    async with AsyncClient(api.url, KEY_B) as other:
        with pytest.raises(AhvClientError) as hidden:
            await other.get(done.job_id)
        assert hidden.value.code == "job_not_found"
    async with AsyncClient(api.url, "not-a-key") as stranger:
        with pytest.raises(AhvClientError) as denied:
            await stranger.get(done.job_id)
        assert (denied.value.status, denied.value.code) == (401, "unauthorized")


async def test_queue_full_carries_retry_after(start_server: StartServer) -> None:
    api = await start_server(
        queue={"max_depth": 1},
        backends=[{"name": "cpu", "device": "cpu", "slots": 1, "tasks": ["sleep"]}],
    )
    async with AsyncClient(api.url, KEY_A) as ahv:
        running = await ahv.submit("sleep", {"seconds": 5, "steps": 50})
        await api.wait(running.job_id, frozenset({"running"}))
        queued = await ahv.submit("sleep", {"seconds": 0})
        with pytest.raises(AhvClientError) as full:
            await ahv.submit("sleep", {"seconds": 0})
        assert (full.value.status, full.value.code) == (429, "queue_full")
        assert full.value.retry_after_s is not None and full.value.retry_after_s >= 1
        for job in (queued, running):
            await ahv.delete(job.job_id)


async def test_connection_error_and_timeout(api: Api) -> None:
    async with AsyncClient("http://127.0.0.1:9", KEY_A, timeout_s=2) as ahv:
        with pytest.raises(AhvClientError) as refused:
            await ahv.get("x")
        assert refused.value.code == "connection_error" and refused.value.status == 0
    async with AsyncClient(api.url, KEY_A) as ahv:
        job = await ahv.submit("sleep", {"seconds": 5, "steps": 50})
        with pytest.raises(TimeoutError, match=job.job_id):
            await ahv.wait(job.job_id, timeout_s=0.3, poll_interval_s=0.05)
        await ahv.delete(job.job_id)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_wait_rides_out_a_server_restart(tmp_path: Path) -> None:
    # A real server process on a fixed port, killed with -9 while the job runs and started
    # again: the job is requeued and finishes, and wait() ends with it instead of failing.
    config = merge(
        base_config(tmp_path / "data"),
        {
            "server": {"port": free_port()},
            "backends": [{"name": "cpu", "slots": 1, "tasks": ["sleep"]}],
        },
    )
    server = AhvProcess(config, tmp_path)
    try:
        url = await asyncio.to_thread(server.start)
        async with AsyncClient(url, KEY_A, timeout_s=2) as ahv:
            job = await ahv.submit("sleep", {"seconds": 1.5, "steps": 15})
            waiting = asyncio.create_task(ahv.wait(job.job_id, timeout_s=60, poll_interval_s=0.1))
            for _ in range(200):
                if (await ahv.get(job.job_id)).status == "running":
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(server.kill9)
            await asyncio.sleep(0.5)  # wait() meets a refused connection meanwhile
            assert not waiting.done()
            assert await asyncio.to_thread(server.start) == url
            done = await waiting
        assert done.status == "succeeded" and done.attempts == 2
        # A client the server never answered: no answer is an error at once.
        server.kill9()
        async with AsyncClient(url, KEY_A, timeout_s=2) as ahv:
            with pytest.raises(AhvClientError) as refused:
                await ahv.wait(job.job_id, timeout_s=30)
            assert refused.value.code == "connection_error"
    finally:
        server.stop()


async def test_list_pages_and_filters(api: Api) -> None:
    async with AsyncClient(api.url, KEY_A) as ahv:
        ids = [(await ahv.submit("sleep", {"seconds": 0})).job_id for _ in range(5)]
        for job_id in ids:
            await ahv.wait(job_id, timeout_s=10, poll_interval_s=0.05)
        listed = [job.job_id async for job in ahv.list(task="sleep", page_size=2)]
        assert listed == ids[::-1]  # newest first, across three pages
        first_three = [job.job_id async for job in ahv.list(limit=3, page_size=2)]
        assert first_three == ids[::-1][:3]
        page = await ahv.list_page(limit=2)
        assert len(page.jobs) == 2 and page.next_cursor is not None
        rest = await ahv.list_page(limit=50, cursor=page.next_cursor)
        assert [j.job_id for j in page.jobs + rest.jobs] == ids[::-1] and rest.next_cursor is None
        assert [job async for job in ahv.list(status="failed")] == []
        upscales = [job async for job in ahv.list(task="upscale")]
        assert upscales == []
    # Another client sees none of them; the admin sees them all.
    async with AsyncClient(api.url, KEY_B) as other:
        assert [job async for job in other.list()] == []
    async with AsyncClient(api.url, KEY_ADMIN) as admin:
        assert {job.job_id async for job in admin.list()} >= set(ids)


def _sync_session(url: str, image_url: str) -> dict[str, object]:
    seen: dict[str, object] = {}
    with Client(url, KEY_A) as ahv:
        job = ahv.submit("upscale", {"image_url": image_url, "scale": 2})
        done = ahv.wait(job.job_id, timeout_s=60, poll_interval_s=0.05)
        seen["status"] = done.status
        seen["size"] = None if done.result is None else done.result.meta["width"]
        seen["get"] = ahv.get(job.job_id).status
        # The job's own event stream, from a final job: its document, then the end.
        seen["events"] = [e.job.status for e in ahv.events(job.job_id) if e.job is not None]
        seen["listed"] = [j.job_id for j in ahv.list(page_size=1)]
        seen["first"] = next(iter(ahv.list(page_size=1))).job_id  # left early: closed cleanly
        slow = ahv.submit("sleep", {"seconds": 30, "steps": 300})
        seen["canceled"] = ahv.cancel(slow.job_id).status
        seen["after_cancel"] = ahv.wait(slow.job_id, timeout_s=15, poll_interval_s=0.05).status
        ahv.delete(slow.job_id)
        try:
            ahv.get(slow.job_id)
        except AhvClientError as exc:
            seen["deleted"] = exc.code
        try:
            ahv.submit("sleep", {"seconds": "long"})
        except AhvClientError as exc:
            seen["bad"] = (exc.status, exc.code)
        seen["job_id"] = job.job_id
    return seen


async def test_sync_client(api: Api, media: MediaServer) -> None:
    image_url = media.add("astronaut.png", fixtures.astronaut_png(), "image/png")
    # The sync client blocks its caller, so it runs on a worker thread while this loop serves.
    seen = await asyncio.to_thread(_sync_session, api.url, image_url)
    assert seen["status"] == "succeeded" and seen["size"] == 1024 and seen["get"] == "succeeded"
    assert seen["events"] == ["succeeded"]
    assert seen["listed"][-1] == seen["job_id"]  # type: ignore[index]
    assert seen["first"] == seen["listed"][0]  # type: ignore[index]
    assert seen["canceled"] in ("queued", "running", "canceled")
    assert seen["after_cancel"] == "canceled"
    assert seen["deleted"] == "job_not_found"
    assert seen["bad"] == (422, "invalid_payload")


def test_import_does_not_load_the_model_stack() -> None:
    heavy = ("numpy", "onnxruntime", "cv2", "PIL", "av", "onnx", "aiosqlite", "ahv.store")
    code = f"import sys, ahv.client\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
