"""Time in one unit: integer microseconds since the epoch, UTC."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_us() -> int:
    return time.time_ns() // 1000


def iso(us: int | None) -> str | None:
    """`2026-02-04T18:04:19.463754+00:00`, always with microseconds, as the seed shows."""
    if us is None:
        return None
    return (_EPOCH + timedelta(microseconds=us)).isoformat(timespec="microseconds")


def ms(us: int | None) -> int | None:
    return None if us is None else us // 1000
