"""SIGTERM: stop claiming, refuse new jobs with 503, let running jobs finish within the grace
period (or requeue them), deliver due webhooks, exit cleanly."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.conftest import KEY_A, Receiver
from tests.test_crash import ahv_process, job, submit, wait_all_final

__all__ = ["ahv_process"]


async def wait_status(
    session: aiohttp.ClientSession, url: str, job_id: str, status: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        doc = await job(session, url, job_id)
        if doc["status"] == status:
            return doc
        assert time.monotonic() < deadline, doc["status"]
        await asyncio.sleep(0.05)


async def test_sigterm_finishes_running_job_and_refuses_new_ones(
    ahv_process: Any, receiver: Receiver
) -> None:
    server = ahv_process(
        server={"shutdown_grace_s": 10},
        backends=[{"name": "cpu", "slots": 1, "tasks": ["sleep"]}],
    )
    url = await asyncio.to_thread(server.start)
    async with aiohttp.ClientSession() as session:
        hook = receiver.url("/term")
        running = await submit(
            session, url, {"task": "sleep", "payload": {"seconds": 1.5}, "webhook_url": hook}
        )
        queued = await submit(session, url, {"task": "sleep", "payload": {"seconds": 0}})
        await wait_status(session, url, running, "running")
        server.terminate()
        await asyncio.sleep(0.3)
        async with session.post(
            f"{url}/v1/jobs", json={"task": "sleep"}, headers={"X-API-Key": KEY_A}
        ) as response:
            assert response.status == 503
            body = await response.json()
            assert body["error"]["code"] == "draining"
            assert int(response.headers["Retry-After"]) >= 1
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 503
        # Polling still works while draining; the queued job is not started.
        assert (await job(session, url, queued))["status"] == "queued"
        assert await asyncio.to_thread(server.wait_exit, 20) == 0
        # The running job finished and its webhook went out before the exit.
        (delivery,) = receiver.at("/term")
        assert delivery.json["status"] == "succeeded" and delivery.json["job_id"] == running
        url = await asyncio.to_thread(server.start)
        docs = await wait_all_final(session, url, [running, queued], timeout_s=10)
    assert docs[running]["status"] == "succeeded" and docs[running]["attempts"] == 1
    assert docs[queued]["status"] == "succeeded"


async def test_sigterm_requeues_a_job_still_running_after_the_grace_period(
    ahv_process: Any,
) -> None:
    server = ahv_process(server={"shutdown_grace_s": 0.2})
    url = await asyncio.to_thread(server.start)
    async with aiohttp.ClientSession() as session:
        long_job = await submit(
            session, url, {"task": "sleep", "payload": {"seconds": 30, "steps": 300}}
        )
        await wait_status(session, url, long_job, "running")
        began = time.monotonic()
        server.terminate()
        assert await asyncio.to_thread(server.wait_exit, 20) == 0
        assert time.monotonic() - began < 5
        url = await asyncio.to_thread(server.start)
        # Back in the queue with its attempt given back, then run again.
        doc = await wait_status(session, url, long_job, "running")
        assert doc["attempts"] == 1


async def test_a_second_server_on_the_same_data_dir_refuses_to_start(
    ahv_process: Any,
) -> None:
    first = ahv_process()
    await asyncio.to_thread(first.start)
    second = ahv_process()
    with pytest.raises(AssertionError, match="another ahv process is using"):
        await asyncio.to_thread(second.start)
    assert second.proc is not None and second.proc.wait(10) == 2
