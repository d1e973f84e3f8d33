"""`verify_webhook` on the server's real deliveries (headers and raw body exactly as the real
receiver got them): accepted as sent; refused when anything is off."""

from __future__ import annotations

import base64

import msgspec
import pytest

from ahv.client import (
    AsyncClient,
    WebhookEvent,
    WebhookVerificationError,
    verify_webhook,
)
from tests.conftest import KEY_A, KEY_B, SECRET_A, SECRET_B, Api, Delivery, Receiver


async def delivered(api: Api, receiver: Receiver, key: str, path: str) -> Delivery:
    async with AsyncClient(api.url, key) as ahv:
        job = await ahv.submit(
            "sleep", {"seconds": 0}, webhook_url=receiver.url(path), webhook_events=["job.started"]
        )
        await ahv.wait(job.job_id, timeout_s=10, poll_interval_s=0.05)
    found = await receiver.wait_for(path, count=2)
    assert {d.json["event"] for d in found} == {"job.started", "job.finished"}
    assert all(d.json["job_id"] == job.job_id for d in found)
    return next(d for d in found if d.json["event"] == "job.finished")


def stamp(delivery: Delivery) -> int:
    return int(delivery.headers["webhook-timestamp"])


async def test_real_deliveries_are_accepted(api: Api, receiver: Receiver) -> None:
    # client-a signs with a whsec_ (base64) secret, client-b with a plain string.
    for key, secret, path in ((KEY_A, SECRET_A, "/a"), (KEY_B, SECRET_B, "/b")):
        delivery = await delivered(api, receiver, key, path)
        data = verify_webhook(delivery.headers, delivery.body, secret)
        assert data == delivery.json and data["status"] == "succeeded"
        assert data["event_id"] == delivery.headers["webhook-id"]
        event = msgspec.convert(data, WebhookEvent)
        assert event.event == "job.finished" and event.result is not None
        # Every delivery of the job verifies, the best-effort started event too.
        for other in receiver.at(path):
            assert verify_webhook(other.headers, other.body, secret)["job_id"] == data["job_id"]
        # The raw key as bytes, and the headers in another case, work as well.
        raw_key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
        upper = {k.upper(): v for k, v in delivery.headers.items()}
        assert verify_webhook(upper, delivery.body, raw_key) == data


async def test_tampering_is_refused(api: Api, receiver: Receiver) -> None:
    delivery = await delivered(api, receiver, KEY_A, "/ok")
    headers, body = delivery.headers, delivery.body
    now = stamp(delivery)
    assert verify_webhook(headers, body, SECRET_A, now=now)

    altered = body.replace(b'"succeeded"', b'"failed"', 1)
    assert altered != body
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(headers, altered, SECRET_A, now=now)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(headers, body + b" ", SECRET_A, now=now)
    # Another key's secret, and the whsec_ secret taken as a plain string.
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(headers, body, SECRET_B, now=now)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(headers, body, SECRET_A.encode(), now=now)
    # The id and timestamp are signed too: a replay under another id or time fails.
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook({**headers, "webhook-id": "other-id"}, body, SECRET_A, now=now)
    with pytest.raises(WebhookVerificationError, match="signature"):
        moved = {**headers, "webhook-timestamp": str(now + 1)}
        verify_webhook(moved, body, SECRET_A, now=now)


async def test_stale_or_future_timestamps_are_refused(api: Api, receiver: Receiver) -> None:
    delivery = await delivered(api, receiver, KEY_A, "/ok")
    sent = stamp(delivery)
    assert verify_webhook(delivery.headers, delivery.body, SECRET_A, now=sent + 300)
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify_webhook(delivery.headers, delivery.body, SECRET_A, now=sent + 301)
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify_webhook(delivery.headers, delivery.body, SECRET_A, now=sent - 301)
    assert verify_webhook(
        delivery.headers, delivery.body, SECRET_A, now=sent + 3000, tolerance_s=3600
    )
    # Without `now`, the clock is used: a delivery of a moment ago is fresh.
    assert verify_webhook(delivery.headers, delivery.body, SECRET_A)
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        bad = {**delivery.headers, "webhook-timestamp": "soon"}
        verify_webhook(bad, delivery.body, SECRET_A)


async def test_missing_headers_and_signature_lists(api: Api, receiver: Receiver) -> None:
    delivery = await delivered(api, receiver, KEY_A, "/ok")
    now = stamp(delivery)
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        headers = {k: v for k, v in delivery.headers.items() if k.lower() != name}
        with pytest.raises(WebhookVerificationError, match=f"missing header {name}"):
            verify_webhook(headers, delivery.body, SECRET_A, now=now)
    real = delivery.headers["webhook-signature"]
    assert real.startswith("v1,")
    # Several space-separated signatures (key rotation): one valid v1 is enough ...
    rotated = {**delivery.headers, "webhook-signature": f"v1,bm9wZQ== {real} v1a,xyz"}
    assert verify_webhook(rotated, delivery.body, SECRET_A, now=now)
    # ... but the valid value under another version tag, or none valid, is refused.
    other_version = {**delivery.headers, "webhook-signature": "v2," + real[3:]}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(other_version, delivery.body, SECRET_A, now=now)
    with pytest.raises(WebhookVerificationError):
        verify_webhook({**delivery.headers, "webhook-signature": ""}, delivery.body, SECRET_A)
