"""API keys: who is calling, compared in constant time, and each key's request rate."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from ahv.config import KeyConfig
from ahv.errors import AhvError


@dataclass(frozen=True)
class Caller:
    name: str
    role: str
    max_queued: int
    rate_per_min: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class KeyRing:
    def __init__(self, keys: list[KeyConfig]) -> None:
        self._entries: list[tuple[bytes, Caller]] = []
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, last refill)
        self.replace(keys)

    def replace(self, keys: list[KeyConfig]) -> None:
        """Take a new set of keys (reload); rate buckets of the names that stay are kept."""
        self._entries = [
            (
                bytes.fromhex(key.key_sha256) if key.key_sha256 else _digest(key.key),
                Caller(key.name, key.role, key.max_queued, key.rate_per_min),
            )
            for key in keys
        ]
        names = {caller.name for _, caller in self._entries}
        self._buckets = {name: b for name, b in self._buckets.items() if name in names}

    def authenticate(self, presented: str | None) -> Caller:
        if not presented:
            raise AhvError("unauthorized", "missing X-API-Key header", status=401)
        digest = _digest(presented)
        found: Caller | None = None
        # Compare against every key, so timing does not tell which one (or none) matched.
        for expected, caller in self._entries:
            if hmac.compare_digest(digest, expected):
                found = caller
        if found is None:
            raise AhvError("unauthorized", "the X-API-Key is not valid", status=401)
        return found

    def take_rate_token(self, caller: Caller) -> None:
        """Token bucket per key: `rate_per_min` submissions a minute, bursts up to that."""
        if caller.rate_per_min <= 0:
            return
        now = time.monotonic()
        capacity = float(caller.rate_per_min)
        tokens, last = self._buckets.get(caller.name, (capacity, now))
        tokens = min(capacity, tokens + (now - last) * capacity / 60.0)
        if tokens < 1.0:
            wait_s = (1.0 - tokens) * 60.0 / capacity
            self._buckets[caller.name] = (tokens, now)
            raise AhvError(
                "rate_limited",
                f"key {caller.name!r} is limited to {caller.rate_per_min} jobs a minute",
                status=429,
                retry_after_s=wait_s,
            )
        self._buckets[caller.name] = (tokens - 1.0, now)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
