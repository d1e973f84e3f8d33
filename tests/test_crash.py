"""`kill -9` mid-run: every job still reaches exactly one final status and every webhook
arrives (duplicates allowed, with the same webhook-id)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import FINAL, KEY_A, Receiver, base_config, merge
from tests.process import AhvProcess


@pytest.fixture
def ahv_process(tmp_path: Path) -> Iterator[Any]:
    made: list[AhvProcess] = []

    def make(**overrides: Any) -> AhvProcess:
        config = merge(base_config(tmp_path / "data"), overrides)
        process = AhvProcess(config, tmp_path)
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()


async def submit(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with session.post(f"{url}/v1/jobs", json=body, headers={"X-API-Key": KEY_A}) as r:
        assert r.status == 202, await r.text()
        return str((await r.json())["job_id"])


async def job(session: aiohttp.ClientSession, url: str, job_id: str) -> dict[str, Any]:
    async with session.get(f"{url}/v1/jobs/{job_id}", headers={"X-API-Key": KEY_A}) as r:
        assert r.status == 200
        return dict(await r.json())


async def wait_all_final(
    session: aiohttp.ClientSession, url: str, ids: list[str], timeout_s: float
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        docs = {i: await job(session, url, i) for i in ids}
        if all(d["status"] in FINAL for d in docs.values()):
            return docs
        assert time.monotonic() < deadline, [d["status"] for d in docs.values()]
        await asyncio.sleep(0.1)


async def test_kill9_mid_run_loses_no_job_and_no_webhook(
    ahv_process: Any, receiver: Receiver
) -> None:
    server = ahv_process(
        backends=[{"name": "cpu", "slots": 2, "tasks": ["sleep"]}],
        webhooks={"timeout_s": 2, "retry_base_s": 0.1, "max_attempts": 10},
        queue={"max_attempts": 3},
    )
    url = await asyncio.to_thread(server.start)
    async with aiohttp.ClientSession() as session:
        body = {
            "task": "sleep",
            "payload": {"seconds": 0.1, "steps": 5},
            "webhook_url": receiver.url("/crash"),
        }
        ids = [await submit(session, url, body) for _ in range(50)]
        # Some jobs are done, two are running, the rest are queued: now crash.
        await receiver.wait_for("/crash", count=8, timeout_s=20)
        server.kill9()
        url = await asyncio.to_thread(server.start)
        docs = await wait_all_final(session, url, ids, timeout_s=60)
        async with session.get(f"{url}/stats", headers={"X-API-Key": KEY_A}) as r:
            stats = await r.json()
    assert {d["status"] for d in docs.values()} == {"succeeded"}
    assert stats["counts"].get("running", 0) == 0 and stats["counts"].get("queued", 0) == 0
    assert any(d["attempts"] == 2 for d in docs.values())  # the ones cut off were run again
    deliveries = await receiver.wait_for("/crash", count=50, timeout_s=30)
    finished: dict[str, set[str]] = {}
    for delivery in receiver.at("/crash"):
        body_json = delivery.json
        assert body_json["event"] == "job.finished"
        finished.setdefault(body_json["job_id"], set()).add(delivery.headers["webhook-id"])
    assert set(finished) == set(ids)  # every job's webhook arrived
    # A job has one job.finished event: any duplicate delivery carries the same webhook-id.
    assert all(len(event_ids) == 1 for event_ids in finished.values())
    assert len(deliveries) >= 50


async def test_kill9_after_last_attempt_fails_with_worker_lost(
    ahv_process: Any, receiver: Receiver
) -> None:
    server = ahv_process(queue={"max_attempts": 1})
    url = await asyncio.to_thread(server.start)
    async with aiohttp.ClientSession() as session:
        body = {
            "task": "sleep",
            "payload": {"seconds": 30, "steps": 300},
            "webhook_url": receiver.url("/lost"),
        }
        job_id = await submit(session, url, body)
        deadline = time.monotonic() + 10
        while (await job(session, url, job_id))["status"] != "running":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        server.kill9()
        url = await asyncio.to_thread(server.start)
        doc = (await wait_all_final(session, url, [job_id], timeout_s=10))[job_id]
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == "worker_lost"
    assert "1 of 1" in doc["error"]["message"]
    (delivery,) = await receiver.wait_for("/lost")
    assert delivery.json["status"] == "failed"
    assert delivery.json["error"]["code"] == "worker_lost"
