"""Time in one unit: integer microseconds since the epoch, UTC."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta
from typing import overload

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_us() -> int:
    return time.time_ns() // 1000


@overload
def iso(us: int) -> str: ...
@overload
def iso(us: int | None) -> str | None: ...
def iso(us: int | None) -> str | None:
    """`2026-02-04T18:04:19.463754+00:00`, always with microseconds, as the seed shows."""
    if us is None:
        return None
    seconds, micros = divmod(us, 1_000_000)
    return f"{_iso_second(seconds)}.{micros:06d}+00:00"


@functools.lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    # Job documents format the same few seconds over and over; the date part is cached.
    return (
        (_EPOCH + timedelta(seconds=seconds)).isoformat(timespec="seconds").removesuffix("+00:00")
    )


@overload
def ms(us: int) -> int: ...
@overload
def ms(us: int | None) -> int | None: ...
def ms(us: int | None) -> int | None:
    return None if us is None else us // 1000
