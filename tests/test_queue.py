"""Priority with ageing, FIFO within a priority, and a bounded queue."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import KEY_A, KEY_B, Api

ONE_SLOT = [{"name": "cpu", "slots": 1, "tasks": ["sleep"]}]


async def occupy_the_slot(api: Api, seconds: float = 0.6) -> dict[str, Any]:
    blocker = await api.submit("sleep", {"seconds": seconds, "steps": 60})
    await api.wait(blocker["job_id"], frozenset({"running"}))
    return blocker


async def start_order(api: Api, jobs: list[dict[str, Any]]) -> list[str]:
    docs = [await api.wait(job["job_id"]) for job in jobs]
    assert all(d["status"] == "succeeded" for d in docs)
    return [d["job_id"] for d in sorted(docs, key=lambda d: d["started_at"])]


async def test_higher_priority_runs_first_fifo_within_a_priority(start_server: Any) -> None:
    api = await start_server(backends=ONE_SLOT)
    await occupy_the_slot(api)
    low = await api.submit("sleep", {"seconds": 0}, priority=0)
    mid1 = await api.submit("sleep", {"seconds": 0})
    high = await api.submit("sleep", {"seconds": 0}, priority=9)
    mid2 = await api.submit("sleep", {"seconds": 0})
    assert mid1["priority"] == 5  # queue.default_priority
    assert high["queue_position"] == 0 and low["queue_position"] == 0
    assert (await api.job(low["job_id"]))["queue_position"] == 3
    order = await start_order(api, [low, mid1, high, mid2])
    assert order == [high["job_id"], mid1["job_id"], mid2["job_id"], low["job_id"]]


async def test_ageing_lets_an_old_low_priority_job_overtake(start_server: Any) -> None:
    # One priority level per 0.1 s waited: after 1 s a priority-0 job outranks a new 9.
    api = await start_server(backends=ONE_SLOT, queue={"age_step_s": 0.1})
    await occupy_the_slot(api, seconds=1.6)
    old_low = await api.submit("sleep", {"seconds": 0}, priority=0)
    await asyncio.sleep(1.0)
    new_high = await api.submit("sleep", {"seconds": 0}, priority=9)
    order = await start_order(api, [old_low, new_high])
    assert order == [old_low["job_id"], new_high["job_id"]]


async def test_full_queue_answers_429_with_retry_after(start_server: Any) -> None:
    api = await start_server(backends=ONE_SLOT, queue={"max_depth": 3})
    await occupy_the_slot(api, seconds=1.0)
    keyed = {"Idempotency-Key": "first"}
    request = {"task": "sleep", "payload": {"seconds": 0}}
    status, first, _ = await api.call("POST", "/v1/jobs", json=request, headers=keyed)
    assert status == 202
    accepted = [first] + [await api.submit("sleep", {"seconds": 0}) for _ in range(2)]
    status, body, response = await api.call(
        "POST", "/v1/jobs", json={"task": "sleep", "payload": {}}
    )
    assert status == 429
    assert body["error"]["code"] == "queue_full"
    assert "3" in body["error"]["message"]
    assert int(response.headers["Retry-After"]) >= 1
    # A replay of an accepted request still gets its job back while the queue is full.
    status, replay, _ = await api.call("POST", "/v1/jobs", json=request, headers=keyed)
    assert status == 200, replay
    assert replay["job_id"] == first["job_id"]
    # Nothing already accepted is lost.
    for job in accepted:
        assert (await api.wait(job["job_id"]))["status"] == "succeeded"


async def test_per_key_queue_limit_and_rate_limit(start_server: Any, tmp_path: Any) -> None:
    from tests.conftest import base_config

    keys = base_config(tmp_path)["keys"]
    keys[0] = {**keys[0], "max_queued": 1}
    keys[1] = {**keys[1], "rate_per_min": 2}
    api = await start_server(backends=ONE_SLOT, keys=keys)
    await occupy_the_slot(api)
    await api.submit("sleep", {"seconds": 0})
    status, body, _ = await api.call("POST", "/v1/jobs", json={"task": "sleep", "payload": {}})
    assert status == 429 and body["error"]["code"] == "queue_full"
    assert "client-a" in body["error"]["message"]
    for _ in range(2):
        await api.submit("sleep", {"seconds": 0}, key=KEY_B)
    status, body, response = await api.call(
        "POST", "/v1/jobs", key=KEY_B, json={"task": "sleep", "payload": {}}
    )
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert int(response.headers["Retry-After"]) >= 1
    assert KEY_A != KEY_B


async def test_concurrent_submits_do_not_overshoot_the_queue_limit(start_server: Any) -> None:
    api = await start_server(backends=ONE_SLOT, queue={"max_depth": 10})
    await occupy_the_slot(api, seconds=1.0)
    request = {"task": "sleep", "payload": {"seconds": 0}}
    answers = await asyncio.gather(*[api.call("POST", "/v1/jobs", json=request) for _ in range(40)])
    statuses = [status for status, _, _ in answers]
    assert statuses.count(202) == 10
    assert statuses.count(429) == 30
    assert api.orchestrator.store.queued_count == 10
