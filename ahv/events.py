"""Live job events: an in-process hub that streams job documents to subscribers (the SSE
endpoints in ahv/http/events_routes.py).

Publishing happens on the event loop, right after the change it reports was committed (or,
for progress, recorded in memory). It never waits: each subscriber has its own bounded
queue. When a slow consumer's queue is full, intermediate (non-final) events are dropped,
preferring one whose job has a newer event queued behind it, so what the consumer sees last
of each job is still its latest state; final events (a final status, a deletion) are never
dropped. A consumer that falls so far behind that `overflow_limit` final events wait is
disconnected (its stream ends; it reconnects and catches up with GET /v1/jobs).

A job's document is built and encoded once per change, and only when someone listens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from ahv.api_types import JobDocument
from ahv.jobs import JobRow

QUEUE_LIMIT = 256
OVERFLOW_LIMIT = 4096

HELLO = b'event: hello\ndata: {"ok": true}\n\n'
KEEPALIVE = b": keepalive\n\n"


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    name: str  # "job" or "deleted"
    job_id: str
    final: bool  # a final status or a deletion: never dropped, ends a job's stream
    data: bytes  # compact JSON

    def encode(self) -> bytes:
        """The server-sent-events wire form: `event`, `id`, `data`, blank line."""
        return b"event: %s\nid: %d\ndata: %s\n\n" % (self.name.encode(), self.id, self.data)


class Subscription:
    """One consumer: its filter and its bounded queue of events."""

    def __init__(
        self,
        *,
        job_id: str | None,
        owner: str | None,
        task: str | None,
        status: str | None,
        limit: int,
        overflow_limit: int,
        key_name: str | None = None,
    ) -> None:
        self.job_id = job_id
        self.owner = owner  # None: every owner's jobs (an admin key)
        self.key_name = key_name  # the API key that opened the stream
        self.task = task
        self.status = status
        self.closed = False
        self.dropped = 0
        self._limit = limit
        self._overflow_limit = overflow_limit
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()

    def matches(self, job: JobRow, *, deleted: bool = False) -> bool:
        if self.owner is not None and job.owner != self.owner:
            return False
        if self.task is not None and job.task != self.task:
            return False
        # A deletion has no status of its own: every stream that may see the job hears of it.
        return deleted or self.status is None or job.status == self.status

    def push(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._items) >= self._limit and not self._drop_one():
            if len(self._items) >= self._overflow_limit:
                self._items.clear()
                self.close()
                return
        self._items.append(event)
        self._ready.set()

    def _drop_one(self) -> bool:
        """Drop an intermediate event to make room: preferably one whose job has a newer
        event queued; else the oldest intermediate one. False when all are final."""
        newest: dict[str, int] = {}
        for index, queued in enumerate(self._items):
            newest[queued.job_id] = index
        victim = None
        for index, queued in enumerate(self._items):
            if queued.final:
                continue
            if newest[queued.job_id] > index:
                victim = index
                break
            if victim is None:
                victim = index
        if victim is None:
            return False
        del self._items[victim]
        self.dropped += 1
        return True

    def skip_through(self, event_id: int) -> None:
        """Forget the intermediate events queued up to `event_id`: what was just read of the
        job already shows them. Final ones stay: a stream must never miss its end."""
        self._items = deque(e for e in self._items if e.final or e.id > event_id)

    async def next_batch(self, timeout_s: float) -> list[Event]:
        """What is queued, waiting up to `timeout_s` for something; empty on timeout or when
        the subscription is closed (check `closed`)."""
        if not self._items and not self.closed:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout_s)
        batch = list(self._items)
        self._items.clear()
        return batch

    def close(self) -> None:
        self.closed = True
        self._ready.set()


class EventHub:
    """Subscribers by job (a job's stream) and the rest (the all-jobs stream)."""

    def __init__(
        self, *, queue_limit: int = QUEUE_LIMIT, overflow_limit: int = OVERFLOW_LIMIT
    ) -> None:
        self._queue_limit = queue_limit
        self._overflow_limit = overflow_limit
        self._by_job: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self._last_id = 0
        self.closed = False

    @property
    def subscribers(self) -> int:
        return len(self._all) + sum(len(subs) for subs in self._by_job.values())

    def next_id(self) -> int:
        """A fresh event id: ids only grow, so each stream's ids are monotonic."""
        self._last_id += 1
        return self._last_id

    def subscribe(
        self,
        *,
        job_id: str | None = None,
        owner: str | None = None,
        task: str | None = None,
        status: str | None = None,
        key_name: str | None = None,
    ) -> Subscription:
        sub = Subscription(
            job_id=job_id,
            owner=owner,
            task=task,
            status=status,
            limit=self._queue_limit,
            overflow_limit=self._overflow_limit,
            key_name=key_name,
        )
        if self.closed:
            sub.close()
        elif job_id is not None:
            self._by_job.setdefault(job_id, set()).add(sub)
        else:
            self._all.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        if sub.job_id is None:
            self._all.discard(sub)
            return
        subs = self._by_job.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_job[sub.job_id]

    def event(self, job: JobRow, document: JobDocument) -> Event:
        return Event(self.next_id(), "job", job.id, job.is_terminal, msgspec.json.encode(document))

    def publish(self, job: JobRow, document: Callable[[JobRow], JobDocument]) -> None:
        """The job changed: its document goes to every subscriber that may see it."""
        targets = self._targets(job, deleted=False)
        if targets:
            event = self.event(job, document(job))
            for sub in targets:
                sub.push(event)

    def publish_deleted(self, job: JobRow) -> None:
        targets = self._targets(job, deleted=True)
        if targets:
            data = msgspec.json.encode({"job_id": job.id})
            event = Event(self.next_id(), "deleted", job.id, True, data)
            for sub in targets:
                sub.push(event)

    def _targets(self, job: JobRow, *, deleted: bool) -> list[Subscription]:
        if not self._all and not self._by_job:
            return []
        found = list(self._by_job.get(job.id, ()))
        found.extend(sub for sub in self._all if sub.matches(job, deleted=deleted))
        return found

    def end_streams_of(self, key_names: set[str]) -> int:
        """Reload: the streams opened with these keys (removed, or changed) end after what
        they have queued; the client reconnects with a key that works now, or gets a 401.
        Returns how many ended."""
        ended = 0
        for sub in [*self._all, *(s for subs in self._by_job.values() for s in subs)]:
            if sub.key_name in key_names and not sub.closed:
                sub.close()
                ended += 1
        return ended

    def close(self) -> None:
        """Shutdown: every stream ends after what it has queued; new ones end at once."""
        self.closed = True
        for sub in [*self._all, *(s for subs in self._by_job.values() for s in subs)]:
            sub.close()
