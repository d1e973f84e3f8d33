"""The product sheet's workflow end to end: submit with a webhook_url, get a job_id at once,
receive a signed webhook whose body matches the seed's example field for field."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import cv2
import numpy as np

from tests import media as fixtures
from tests.conftest import KEY_A, SECRET_A, Api, MediaServer, Receiver, verify_signature

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")

# The seed's "Webhook Payload: succeeded", in order.
SEED_FIELDS = [
    "event", "event_id", "ts", "job_id", "task", "status", "progress", "ok",
    "created_at", "created_at_ms", "queued_at", "queued_at_ms", "started_at", "started_at_ms",
    "finished_at", "finished_at_ms", "duration", "predict_time", "eta_utc", "result", "error",
    "predictTime",
]  # fmt: skip


def check_time_pair(body: dict[str, Any], name: str) -> None:
    assert ISO.match(body[name]), (name, body[name])
    parsed = datetime.fromisoformat(body[name])
    assert (
        body[f"{name}_ms"] == int(parsed.timestamp() * 1000)
        or abs(body[f"{name}_ms"] - parsed.timestamp() * 1000) < 1
    )


async def test_submit_then_signed_webhook_with_every_seed_field(
    api: Api, receiver: Receiver, media: MediaServer
) -> None:
    image_url = media.add("astronaut.png", fixtures.astronaut_png(), "image/png")
    submitted = await api.submit(
        "upscale", {"image_url": image_url, "scale": 2}, webhook_url=receiver.url("/ok")
    )
    assert submitted["status"] == "queued"
    assert re.fullmatch(r"[0-9a-f]{32}", submitted["job_id"])
    assert submitted["task"] == "upscale"
    assert submitted["queue_position"] == 0
    assert isinstance(submitted["predict_time"], int | float)
    assert ISO.match(submitted["eta_utc"]) and ISO.match(submitted["created_at"])

    (delivery,) = await receiver.wait_for("/ok")
    body = delivery.json
    assert list(body)[: len(SEED_FIELDS)] == SEED_FIELDS
    assert verify_signature(delivery, SECRET_A)
    assert delivery.headers["webhook-id"] == body["event_id"]
    assert abs(int(delivery.headers["webhook-timestamp"]) - datetime.now().timestamp()) < 30
    assert body["event"] == "job.finished"
    assert re.fullmatch(r"[0-9a-f]{32}", body["event_id"])
    assert body["job_id"] == submitted["job_id"]
    assert body["task"] == "upscale"
    assert body["status"] == "succeeded" and body["ok"] is True and body["progress"] == 100
    assert ISO.match(body["ts"])
    for name in ("created_at", "queued_at", "started_at", "finished_at"):
        check_time_pair(body, name)
    assert body["created_at"] <= body["started_at"] <= body["finished_at"]
    assert (
        body["duration"] == round((body["finished_at_ms"] - body["started_at_ms"]) / 1000, 6)
        or abs(body["duration"] - (body["finished_at_ms"] - body["started_at_ms"]) / 1000) < 0.002
    )
    assert body["predict_time"] == body["predictTime"]
    assert ISO.match(body["eta_utc"])
    assert body["error"] is None
    result = body["result"]
    assert result["ok"] is True and result["status"] == "succeeded"
    assert result["filename"].endswith(".jpg")
    assert result["url"] == f"{api.url}/files/{result['filename']}"
    assert result["meta"]["width"] == 1024 and result["meta"]["height"] == 1024
    assert result["meta"]["backend"] in ("cpu-1", "cpu-2")
    assert result["meta"]["method"] == "lanczos"

    # GET returns the same fields (no event envelope).
    doc = await api.job(submitted["job_id"])
    for name in SEED_FIELDS[3:]:
        assert doc[name] == body[name], name

    # The result file is a real 1024x1024 JPEG, served with Content-Type and Range.
    async with api.session.get(result["url"]) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/jpeg"
        data = await response.read()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (1024, 1024, 3)
    async with api.session.get(result["url"], headers={"Range": "bytes=0-99"}) as response:
        assert response.status == 206
        assert await response.read() == data[:100]
        assert response.headers["Content-Range"] == f"bytes 0-99/{len(data)}"
    headers = {"Range": f"bytes={len(data) + 10}-"}
    async with api.session.get(result["url"], headers=headers) as response:
        assert response.status == 416
        assert (await response.json())["error"]["code"] == "range_not_satisfiable"


async def test_job_without_webhook_url_has_none(api: Api, media: MediaServer) -> None:
    image_url = media.add("a.png", fixtures.astronaut_png(), "image/png")
    job = await api.submit("upscale", {"image_url": image_url})
    done = await api.wait(job["job_id"])
    assert done["status"] == "succeeded"
    _, deliveries, _ = await api.call("GET", f"/v1/jobs/{job['job_id']}/webhooks")
    assert deliveries["deliveries"] == []


async def test_predict_time_is_learned_from_recent_durations(api: Api) -> None:
    first = await api.submit("sleep", {"seconds": 0.3})
    assert first["predict_time"] == 1  # the task's default before any history
    await api.wait(first["job_id"])
    second = await api.submit("sleep", {"seconds": 0.3})
    assert 0.2 <= second["predict_time"] <= 0.6
    done = await api.wait(second["job_id"])
    assert done["status"] == "succeeded"


async def test_queue_position_and_eta_follow_the_queue(start_server: Any) -> None:
    api = await start_server(backends=[{"name": "cpu", "slots": 1, "tasks": ["sleep"]}])
    running = await api.submit("sleep", {"seconds": 1.0})
    await api.wait(running["job_id"], frozenset({"running"}))
    queued = [await api.submit("sleep", {"seconds": 0.05}) for _ in range(3)]
    assert [q["queue_position"] for q in queued] == [0, 1, 2]
    etas = [datetime.fromisoformat(q["eta_utc"]) for q in queued]
    assert etas[0] < etas[1] < etas[2]
    # The first queued job leaves; the others move up.
    await api.call("POST", f"/v1/jobs/{queued[0]['job_id']}/cancel")
    assert (await api.job(queued[2]["job_id"]))["queue_position"] == 1
    for job in [running, *queued[1:]]:
        assert (await api.wait(job["job_id"]))["status"] == "succeeded"


async def test_list_filters_and_cursor(api: Api) -> None:
    ids = [(await api.submit("sleep", {"seconds": 0}))["job_id"] for _ in range(5)]
    for job_id in ids:
        await api.wait(job_id)
    status, page1, _ = await api.call("GET", "/v1/jobs?limit=2&task=sleep&status=succeeded")
    assert status == 200
    assert [j["job_id"] for j in page1["jobs"]] == ids[::-1][:2]
    status, page2, _ = await api.call("GET", f"/v1/jobs?limit=2&cursor={page1['next_cursor']}")
    assert [j["job_id"] for j in page2["jobs"]] == ids[::-1][2:4]
    _, none, _ = await api.call("GET", "/v1/jobs?status=failed")
    assert none["jobs"] == [] and none["next_cursor"] is None


async def test_unknown_filters_are_422_naming_the_field(api: Api) -> None:
    # Both filters of the list and of the event stream: a typo is not an empty list for ever.
    known = sorted(api.orchestrator.registry)
    for path in ("/v1/jobs", "/v1/events"):
        status, body, _ = await api.call("GET", f"{path}?task=bogus")
        assert status == 422, (path, body)
        assert body["error"]["code"] == "invalid_request"
        message = body["error"]["message"]
        assert message.startswith("task: ") and "'bogus'" in message, message
        assert all(name in message for name in known), message
        status, body, _ = await api.call("GET", f"{path}?status=done")
        assert status == 422 and body["error"]["message"].startswith("status: must be one of")


async def test_idempotency_key(api: Api) -> None:
    body = {"task": "sleep", "payload": {"seconds": 0}}
    headers = {"Idempotency-Key": "order-42"}
    s1, first, _ = await api.call("POST", "/v1/jobs", json=body, headers=headers)
    s2, again, response = await api.call("POST", "/v1/jobs", json=body, headers=headers)
    assert (s1, s2) == (202, 200)
    assert again["job_id"] == first["job_id"]
    assert response.headers["Idempotent-Replayed"] == "true"
    other = {"task": "sleep", "payload": {"seconds": 0.01}}
    s3, conflict, _ = await api.call("POST", "/v1/jobs", json=other, headers=headers)
    assert s3 == 409 and conflict["error"]["code"] == "idempotency_conflict"
    # Keys are per API key: another client may use the same key for its own job.
    from tests.conftest import KEY_B

    s4, theirs, _ = await api.call("POST", "/v1/jobs", key=KEY_B, json=body, headers=headers)
    assert s4 == 202 and theirs["job_id"] != first["job_id"]


async def test_stats_and_diag_backends(api: Api) -> None:
    job = await api.submit("sleep", {"seconds": 0})
    await api.wait(job["job_id"])
    status, stats, _ = await api.call("GET", "/stats")
    assert status == 200
    assert stats["counts"]["succeeded"] >= 1
    assert stats["queue_depth"] == 0
    assert "sleep" in stats["mean_duration_s"]
    assert stats["recent"][0]["job_id"] == job["job_id"]
    status, diag, _ = await api.call("GET", "/diag/backends")
    assert status == 200
    (backend,) = diag["backends"]
    assert backend["name"] == "cpu" and backend["kind"] == "cpu" and backend["slots"] == 2
    assert backend["tasks"] == ["upscale", "sleep"]
    assert backend["providers"] == ["CPUExecutionProvider"]
    assert backend["busy"] == 0


async def test_healthz_needs_no_key(api: Api) -> None:
    status, body, _ = await api.call("GET", "/healthz", key=None)
    assert status == 200 and body["status"] == "ready"


async def test_direct_endpoint_blocks_until_done(api: Api, media: MediaServer) -> None:
    image_url = media.add("b.png", fixtures.astronaut_png(), "image/png")
    status, doc, _ = await api.call("POST", "/upscale", json={"image_url": image_url, "scale": 4})
    assert status == 200
    assert doc["status"] == "succeeded"
    assert doc["priority"] == 9
    assert doc["result"]["meta"]["width"] == 2048


async def test_direct_endpoint_hang_up_cancels_the_job(api: Api) -> None:
    import asyncio

    import aiohttp

    task = asyncio.ensure_future(
        api.session.post(
            api.url + "/test/sleep",
            json={"seconds": 30, "steps": 300},
            headers={"X-API-Key": KEY_A},
            timeout=aiohttp.ClientTimeout(total=0.5),
        )
    )
    try:
        await task
    except TimeoutError:
        pass
    _, listing, _ = await api.call("GET", "/v1/jobs?task=sleep")
    (job,) = listing["jobs"]
    done = await api.wait(job["job_id"], timeout_s=5)
    assert done["status"] == "canceled"
