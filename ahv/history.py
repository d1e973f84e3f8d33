"""The last hour of activity in one-minute buckets, for the dashboard's charts (`GET /stats`
`history`). In memory only: it starts empty at every start of the server.

It is fed by job changes (ahv/watch.py), not by a timer: the queue depth changes only when a
job changes, so the depth at each change is all there is to know, and a minute without
changes simply carries the depth over. Counts are kept per API key as well as in total
(keys are few), so a client key sees its own jobs and an admin key sees everything.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from ahv.jobs import FAILED, REJECTED

BUCKET_MS = 60_000
MINUTES = 60

_ALL = ""  # the key of the totals (no API key has an empty name)


@dataclass
class _Bucket:
    t_ms: int
    max_depth: dict[str, int]
    end_depth: dict[str, int]
    finished: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)


class StatsHistory:
    def __init__(self, minutes: int = MINUTES) -> None:
        self._minutes = minutes
        self._buckets: deque[_Bucket] = deque(maxlen=minutes)
        self._depth: dict[str, int] = {}  # latest queue depth per key, and in total

    def _bucket(self, now_ms: int) -> _Bucket:
        start = now_ms - now_ms % BUCKET_MS
        if not self._buckets or self._buckets[-1].t_ms < start:
            self._buckets.append(_Bucket(start, dict(self._depth), dict(self._depth)))
        return self._buckets[-1]

    def depth(self, now_ms: int, owner: str, owner_depth: int, total_depth: int) -> None:
        """The queue depth just after a change of one of `owner`'s jobs."""
        bucket = self._bucket(now_ms)
        latest, end, top = self._depth, bucket.end_depth, bucket.max_depth
        latest[owner] = end[owner] = owner_depth
        latest[_ALL] = end[_ALL] = total_depth
        # On the submit path, hence spelled out rather than looped.
        if owner_depth > top.get(owner, 0):
            top[owner] = owner_depth
        if total_depth > top.get(_ALL, 0):
            top[_ALL] = total_depth

    def finished(self, now_ms: int, owner: str, status: str) -> None:
        bucket = self._bucket(now_ms)
        bad = status in (FAILED, REJECTED)
        for who in (owner, _ALL):
            bucket.finished[who] += 1
            if bad:
                bucket.failed[who] += 1

    def view(self, now_ms: int, owner: str | None) -> list[dict[str, Any]]:
        """The last `minutes` buckets, oldest first, ending with the current one; for one key
        (`owner`) or all (None). `queue_depth` is the most queued in the minute."""
        who = _ALL if owner is None else owner
        current = now_ms - now_ms % BUCKET_MS
        by_start = {bucket.t_ms: bucket for bucket in self._buckets}
        carried = 0  # the depth before the first minute shown, if known
        first = current - (self._minutes - 1) * BUCKET_MS
        for old in self._buckets:
            if old.t_ms < first:
                carried = old.end_depth.get(who, 0)
        rows: list[dict[str, Any]] = []
        for i in range(self._minutes):
            start = first + i * BUCKET_MS
            bucket = by_start.get(start)
            if bucket is None:
                rows.append({"t_ms": start, "queue_depth": carried, "finished": 0, "failed": 0})
                continue
            rows.append(
                {
                    "t_ms": start,
                    "queue_depth": bucket.max_depth.get(who, 0),
                    "finished": bucket.finished[who],
                    "failed": bucket.failed[who],
                }
            )
            carried = bucket.end_depth.get(who, 0)
        return rows
