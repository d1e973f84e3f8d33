"""The webhook delivery log (`GET /v1/jobs/{id}/deliveries`, alias `/webhooks`) and
`POST /v1/jobs/{id}/redeliver`: the same event again, to a receiver that was broken and is
fixed now, under the same webhook-id with a valid signature."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import KEY_ADMIN, KEY_B, SECRET_A, Api, Delivery, StartServer, verify_signature


@dataclass
class Switchable:
    """A real webhook receiver that answers 500 while broken, 200 once fixed."""

    broken: bool = True
    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        status = 500 if self.broken else 200
        body = await request.read()
        self.deliveries.append(Delivery(request.path, dict(request.headers), body, time.time()))
        self.answers.append(status)
        return web.Response(status=status)

    async def wait_for(self, count: int, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.deliveries) < count:
            assert time.monotonic() < deadline, f"{len(self.deliveries)} of {count} deliveries"
            await asyncio.sleep(0.02)


async def switchable(aiohttp_server: Any) -> Switchable:
    found = Switchable()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    server = await aiohttp_server(app)
    found.url = str(server.make_url("/hook"))
    return found


async def log(api: Api, job_id: str, path: str = "deliveries") -> list[dict[str, Any]]:
    status, body, _ = await api.call("GET", f"/v1/jobs/{job_id}/{path}")
    assert status == 200, body
    assert body["job_id"] == job_id
    return list(body["deliveries"])


async def wait_state(api: Api, job_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        found = await log(api, job_id)
        assert len(found) <= 1, found
        if found and found[0]["state"] == state:
            return found[0]
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.05)


async def test_redeliver_a_given_up_event_to_a_fixed_receiver(
    start_server: StartServer, aiohttp_server: Any
) -> None:
    api = await start_server(webhooks={"max_attempts": 2})
    hook = await switchable(aiohttp_server)
    job_id = (await api.submit("sleep", {"seconds": 0}, webhook_url=hook.url))["job_id"]
    failed = await wait_state(api, job_id, "failed")
    assert failed["attempts"] == 2 and failed["last_status"] == 500
    assert failed["event"] == "job.finished" and failed["url"] == hook.url
    assert failed["next_attempt_at_ms"] is None and failed["delivered_at_ms"] is None
    assert isinstance(failed["created_at_ms"], int)
    assert await log(api, job_id, "webhooks") == [failed]  # the old name is an alias
    assert hook.answers == [500, 500]

    hook.broken = False
    began_ms = time.time() * 1000
    status, body, _ = await api.call("POST", f"/v1/jobs/{job_id}/redeliver")
    assert status == 202, body
    again = body["delivery"]
    assert body["ok"] is True and body["job_id"] == job_id
    assert again["event_id"] == failed["event_id"] and again["state"] == "pending"
    assert again["attempts"] == 0 and again["next_attempt_at_ms"] >= began_ms - 1000
    await hook.wait_for(3)
    first, _, fixed = hook.deliveries
    assert hook.answers == [500, 500, 200]
    # The same event: same webhook-id and body, a fresh timestamp, a valid signature.
    assert fixed.headers["webhook-id"] == first.headers["webhook-id"] == failed["event_id"]
    assert fixed.body == first.body
    assert verify_signature(fixed, SECRET_A)
    assert fixed.json["job_id"] == job_id and fixed.json["event"] == "job.finished"
    delivered = await wait_state(api, job_id, "delivered")
    assert delivered["attempts"] == 1 and delivered["last_status"] == 200
    assert delivered["delivered_at_ms"] >= began_ms - 1000

    # A delivered event can be sent again too (a receiver that lost it).
    status, body, _ = await api.call("POST", f"/v1/jobs/{job_id}/redeliver", key=KEY_ADMIN)
    assert status == 202 and body["delivery"]["state"] == "pending"
    await hook.wait_for(4)
    assert hook.deliveries[3].headers["webhook-id"] == failed["event_id"]
    assert verify_signature(hook.deliveries[3], SECRET_A)
    await wait_state(api, job_id, "delivered")


async def test_redeliver_refusals(start_server: StartServer, aiohttp_server: Any) -> None:
    api = await start_server(backends=[{"name": "cpu", "slots": 1, "tasks": ["sleep"]}])
    hook = await switchable(aiohttp_server)
    hook.broken = False
    running = await api.submit("sleep", {"seconds": 30, "steps": 300}, webhook_url=hook.url)
    status, body, _ = await api.call("POST", f"/v1/jobs/{running['job_id']}/redeliver")
    assert status == 409 and body["error"]["code"] == "not_finished"
    await api.call("POST", f"/v1/jobs/{running['job_id']}/cancel")
    await api.wait(running["job_id"])
    await hook.wait_for(1)
    plain = await api.submit("sleep", {"seconds": 0})
    await api.wait(plain["job_id"])
    status, body, _ = await api.call("POST", f"/v1/jobs/{plain['job_id']}/redeliver")
    assert status == 409 and body["error"]["code"] == "no_webhook"
    assert await log(api, plain["job_id"]) == []
    # Another key's job does not exist for this key.
    status, body, _ = await api.call("POST", f"/v1/jobs/{running['job_id']}/redeliver", key=KEY_B)
    assert status == 404 and body["error"]["code"] == "job_not_found"
    status, body, _ = await api.call("GET", f"/v1/jobs/{running['job_id']}/deliveries", key=KEY_B)
    assert status == 404 and body["error"]["code"] == "job_not_found"
    status, body, _ = await api.call("POST", "/v1/jobs/nope/redeliver")
    assert status == 404 and body["error"]["code"] == "job_not_found"
    # A canceled job has its job.finished event like any final status: it can be sent again.
    status, body, _ = await api.call("POST", f"/v1/jobs/{running['job_id']}/redeliver")
    assert status == 202
    await hook.wait_for(2)
    assert hook.deliveries[1].json["status"] == "canceled"


@dataclass
class SlowHook:
    """A real receiver that takes `delay_s` to answer: 500 while broken, 200 once fixed (as
    it was when the request arrived)."""

    delay_s: float = 1.5
    broken: bool = True
    url: str = ""
    arrived: list[float] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        status = 500 if self.broken else 200
        await request.read()
        self.arrived.append(time.monotonic())
        await asyncio.sleep(self.delay_s)
        self.answers.append(status)
        return web.Response(status=status)

    async def wait_for(self, count: int, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.arrived) < count:
            assert time.monotonic() < deadline, f"{len(self.arrived)} of {count} deliveries"
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("max_attempts", [1, 3])
async def test_redeliver_while_an_attempt_is_in_flight_is_sent(
    start_server: StartServer, aiohttp_server: Any, max_attempts: int
) -> None:
    # max_attempts 1: the attempt in flight is the last, so it used to mark the event failed
    # over the reset; 3: its retry, 15 s or more away, used to replace "due now".
    api = await start_server(
        webhooks={
            "max_attempts": max_attempts,
            "timeout_s": 5.0,
            "retry_base_s": 30.0,
            "retry_max_s": 30.0,
        }
    )
    hook = SlowHook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    hook.url = str((await aiohttp_server(app)).make_url("/hook"))
    job_id = (await api.submit("sleep", {"seconds": 0}, webhook_url=hook.url))["job_id"]
    await hook.wait_for(1)  # the first attempt is in flight: the receiver is thinking
    hook.broken = False
    status, body, _ = await api.call("POST", f"/v1/jobs/{job_id}/redeliver")
    assert status == 202, body
    assert body["delivery"]["state"] == "pending" and body["delivery"]["attempts"] == 0
    # The attempt in flight ends (500), and the redelivery is sent right after it.
    await hook.wait_for(2, timeout_s=6)
    assert hook.arrived[1] - hook.arrived[0] < hook.delay_s + 2
    delivered = await wait_state(api, job_id, "delivered")
    assert hook.answers == [500, 200]
    assert delivered["attempts"] == 1 and delivered["last_status"] == 200
