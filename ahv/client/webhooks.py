"""`verify_webhook`: check a delivery from ahv on the receiving side (Standard Webhooks).

The signature is `v1,` + base64 HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`
keyed with the API key's `webhook_secret`, decoded exactly as the server decodes it
(ahv/webhooks.py `secret_bytes`): a `whsec_<base64>` secret is base64-decoded, any other
string is used as its UTF-8 bytes. Self-contained, so a receiver imports nothing heavy.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

import msgspec


class WebhookVerificationError(Exception):
    """The delivery is not authentic or not fresh: answer it with a 4xx and ignore it."""


def webhook_secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            pass  # the server, too, falls back to the plain string
    return secret.encode()


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str | bytes,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """The delivery's JSON body once its signature and timestamp check out, else
    WebhookVerificationError. `headers` as received (any case); `body` the raw bytes, not
    re-encoded JSON; `now` (epoch seconds) for tests. Deduplicate on `webhook-id`: a retried
    delivery keeps it."""
    raw = body.encode() if isinstance(body, str) else body
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp {stamp!r} is not a number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - timestamp:+.0f} s off (tolerance {tolerance_s} s)"
        )
    signed = f"{msg_id}.{timestamp}.".encode() + raw
    digest = hmac.new(webhook_secret_bytes(secret), signed, hashlib.sha256).digest()
    expected = base64.b64encode(digest)
    found = False
    for signature in signatures.split():
        version, _, value = signature.partition(",")
        # Every candidate is compared (no early exit), in constant time.
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            found = True
    if not found:
        raise WebhookVerificationError("no valid v1 signature in webhook-signature")
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return data
