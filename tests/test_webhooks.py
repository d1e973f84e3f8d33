"""Webhook delivery: retries with backoff, Retry-After, no redirects, and isolation: a slow
or dead receiver never holds up jobs or other receivers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.conftest import SECRET_A, SECRET_B, Api, Receiver, verify_signature


async def deliveries(api: Api, job_id: str) -> list[dict[str, Any]]:
    status, body, _ = await api.call("GET", f"/v1/jobs/{job_id}/webhooks")
    assert status == 200
    return list(body["deliveries"])


async def wait_delivery_state(
    api: Api, job_id: str, state: str, timeout_s: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await deliveries(api, job_id)
        if found and found[0]["state"] == state:
            assert len(found) == 1
            return found[0]
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.05)


async def test_503_twice_then_200_is_delivered_on_the_third_try(
    api: Api, receiver: Receiver
) -> None:
    job = await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/fail503x2/a"))
    tries = await receiver.wait_for("/fail503x2/a", count=3)
    assert len({t.headers["webhook-id"] for t in tries}) == 1  # the same id on every retry
    assert all(verify_signature(t, SECRET_A) for t in tries)
    assert tries[0].body == tries[2].body
    assert tries[1].at - tries[0].at >= 0.04  # backoff (base 0.1 s, jitter 0.5-1.5x)
    found = await wait_delivery_state(api, job["job_id"], "delivered")
    assert found["attempts"] == 3 and found["last_status"] == 200


async def test_slow_and_redirecting_receivers_are_retried_and_recorded_failing(
    api: Api, receiver: Receiver
) -> None:
    slow = await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/slow"))
    moved = await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/redirect"))
    healthy = await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/ok"))
    began = time.monotonic()
    # The healthy receiver is not held up by the slow one (1 s timeout) or the redirect.
    (delivery,) = await receiver.wait_for("/ok")
    assert time.monotonic() - began < 0.9
    assert delivery.json["job_id"] == healthy["job_id"]
    # Jobs are not held up either.
    assert (await api.wait(slow["job_id"]))["status"] == "succeeded"
    more = await api.submit("sleep", {"seconds": 0})
    assert (await api.wait(more["job_id"], timeout_s=1))["status"] == "succeeded"
    await receiver.wait_for("/redirect", count=2)
    assert receiver.at("/redirect-target") == []  # redirects are never followed
    await receiver.wait_for("/slow", count=2, timeout_s=10)
    failing = (await deliveries(api, slow["job_id"]))[0]
    assert failing["attempts"] >= 1 and "timed out" in failing["last_error"]
    redirected = (await deliveries(api, moved["job_id"]))[0]
    assert redirected["last_status"] == 302 and "redirect" in redirected["last_error"]
    # max_attempts is 4: then both are recorded as failed.
    await wait_delivery_state(api, moved["job_id"], "failed")
    assert len(receiver.at("/redirect")) == 4
    assert (await wait_delivery_state(api, slow["job_id"], "failed", timeout_s=15))["attempts"] == 4


async def test_gone_is_not_retried_and_retry_after_is_honoured(
    api: Api, receiver: Receiver
) -> None:
    gone = await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/gone"))
    limited = await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/limited"))
    found = await wait_delivery_state(api, gone["job_id"], "failed")
    assert found["attempts"] == 1 and found["last_status"] == 410
    tries = await receiver.wait_for("/limited", count=2, timeout_s=5)
    assert tries[1].at - tries[0].at >= 0.95  # Retry-After: 1, over a 0.1 s backoff
    assert (await deliveries(api, limited["job_id"]))[0]["last_status"] == 429


async def test_each_key_signs_with_its_own_secret(api: Api, receiver: Receiver) -> None:
    from tests.conftest import KEY_B

    await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/b"), key=KEY_B)
    (delivery,) = await receiver.wait_for("/b")
    assert verify_signature(delivery, SECRET_B)
    assert not verify_signature(delivery, SECRET_A)


async def test_many_receivers_are_delivered_concurrently(api: Api, receiver: Receiver) -> None:
    # Five slow receivers (1 s timeout each) and one healthy: the healthy one is not queued
    # behind the slow ones.
    for _ in range(5):
        await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/slow"))
    began = time.monotonic()
    await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/ok"))
    await receiver.wait_for("/ok")
    assert time.monotonic() - began < 0.9


async def test_webhook_url_guard_at_submit(start_server: Any) -> None:
    api = await start_server(fetch={"allowed_networks": []})
    for url in (
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "ftp://example.com/",
    ):
        status, body, _ = await api.call(
            "POST", "/v1/jobs", json={"task": "sleep", "payload": {}, "webhook_url": url}
        )
        assert status == 422, url
        assert body["error"]["code"] == "url_not_allowed"
        assert "webhook_url" in body["error"]["message"]


async def test_a_slow_host_does_not_delay_other_hosts(
    start_server: Any, receiver: Receiver, aiohttp_server: Any
) -> None:
    # More slow events than the per-host share (8) and than one dispatch batch would hold.
    from aiohttp import web

    other = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", other.handle)
    other.server = await aiohttp_server(app, host="127.0.0.2")
    api = await start_server(
        fetch={"allowed_networks": ["127.0.0.1/32", "127.0.0.2/32"]},
        webhooks={"concurrency": 10},
    )
    for _ in range(30):
        await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/slow"))
    await receiver.wait_for("/slow", count=8)
    began = time.monotonic()
    await api.submit("sleep", {"seconds": 0}, webhook_url=other.url("/ok"))
    await other.wait_for("/ok", timeout_s=5)
    assert time.monotonic() - began < 0.9
