"""Live job events: an in-process hub that streams job documents to subscribers (the SSE
endpoints in ahv/http/events_routes.py).

Publishing happens on the event loop, right after the change it reports was committed (or,
for progress, recorded in memory). It never waits: each subscriber has its own bounded
queue. When a slow consumer's queue is full, intermediate (non-final) events are dropped,
preferring one whose job has a newer event queued behind it, so what the consumer sees last
of each job is still its latest state; final events (a final status, a deletion) are never
dropped. A consumer that falls so far behind that `overflow_limit` final events wait is
disconnected (its stream ends; it reconnects and catches up, see below).

A job's document is built and encoded once per change, and only when someone listens.

Catching up: the hub remembers, for the last `replay_limit` jobs that changed, the id of
their latest change (not the document: that is read again from the store). A client that
reconnects to the all-jobs stream with `Last-Event-ID` gets the current document of every
job it may see that changed after that event, deletions included (`changes_since`). Event
ids are microseconds since the epoch, bumped by one when events come faster, so they grow
across restarts too, and an id from before this run (or from before what is remembered) is
told apart: the catch-up is then incomplete and the client re-lists with GET /v1/jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from ahv.api_types import JobDocument
from ahv.jobs import JobRow

QUEUE_LIMIT = 256
OVERFLOW_LIMIT = 4096
REPLAY_LIMIT = 10_000  # jobs whose latest change a reconnecting client can catch up on

HELLO = b'event: hello\ndata: {"ok": true}\n\n'
KEEPALIVE = b": keepalive\n\n"


def hello(resumed: bool) -> bytes:
    """The all-jobs stream's first event for a client that sent Last-Event-ID: `resumed`
    true when every change after that event follows (as each job's current document)."""
    data = b'{"ok": true, "resumed": %s}' % (b"true" if resumed else b"false")
    return b"event: hello\ndata: %s\n\n" % data


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


def job_event(event_id: int, job: JobRow, document: JobDocument) -> Event:
    return Event(event_id, "job", job.id, job.is_terminal, msgspec.json.encode(document))


def deleted_event(event_id: int, job_id: str) -> Event:
    return Event(event_id, "deleted", job_id, True, msgspec.json.encode({"job_id": job_id}))


@dataclass(frozen=True, slots=True)
class Change:
    """A job's latest change, remembered for catching up: its event id and what filters
    need (a deleted job has no row left to read them from)."""

    id: int
    job_id: str
    owner: str
    task: str
    deleted: bool


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
        return self.may_see(job.owner, job.task, None if deleted else job.status)

    def may_see(self, owner: str, task: str, status: str | None) -> bool:
        """Whether a job of this owner, task and status is for this stream (`status` None:
        the job was deleted)."""
        if self.owner is not None and owner != self.owner:
            return False
        if self.task is not None and task != self.task:
            return False
        # A deletion has no status of its own: every stream that may see the job hears of it.
        return status is None or self.status is None or status == self.status

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
        self,
        *,
        queue_limit: int = QUEUE_LIMIT,
        overflow_limit: int = OVERFLOW_LIMIT,
        replay_limit: int = REPLAY_LIMIT,
    ) -> None:
        self._queue_limit = queue_limit
        self._overflow_limit = overflow_limit
        self._by_job: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self._last_id = time.time_ns() // 1000
        # Latest change per job, oldest first, at most replay_limit; a catch-up from an
        # event id below _forgotten_through may miss changes (of a previous run, or dropped).
        self._changes: OrderedDict[str, Change] = OrderedDict()
        self._replay_limit = replay_limit
        self._forgotten_through = self._last_id
        self.closed = False

    @property
    def subscribers(self) -> int:
        return len(self._all) + sum(len(subs) for subs in self._by_job.values())

    def next_id(self) -> int:
        """A fresh event id: ids only grow, so each stream's ids are monotonic; they are the
        wall clock in microseconds when events come slower than one per microsecond, so the
        next run's ids are above this one's."""
        self._last_id = max(self._last_id + 1, time.time_ns() // 1000)
        return self._last_id

    def _record(self, job: JobRow, *, deleted: bool) -> int:
        event_id = self.next_id()
        self._changes[job.id] = Change(event_id, job.id, job.owner, job.task, deleted)
        self._changes.move_to_end(job.id)
        if len(self._changes) > self._replay_limit:
            _, oldest = self._changes.popitem(last=False)
            self._forgotten_through = oldest.id
        return event_id

    def changes_since(self, last_event_id: int) -> list[Change] | None:
        """The latest change of each job changed after `last_event_id`, oldest first; None
        when that cannot be told (the id is older than what is remembered, from another run,
        or not one this hub gave)."""
        if not self._forgotten_through <= last_event_id <= self._last_id:
            return None
        found: list[Change] = []
        for change in reversed(self._changes.values()):
            if change.id <= last_event_id:
                break
            found.append(change)
        found.reverse()
        return found

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
        return job_event(self.next_id(), job, document)

    def publish(self, job: JobRow, document: Callable[[JobRow], JobDocument]) -> None:
        """The job changed: its document goes to every subscriber that may see it."""
        event_id = self._record(job, deleted=False)
        targets = self._targets(job, deleted=False)
        if targets:
            event = job_event(event_id, job, document(job))
            for sub in targets:
                sub.push(event)

    def publish_deleted(self, job: JobRow) -> None:
        event_id = self._record(job, deleted=True)
        targets = self._targets(job, deleted=True)
        if targets:
            event = deleted_event(event_id, job.id)
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
