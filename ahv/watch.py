"""Where a job change goes besides the store: the live event streams, the metrics and the
stats history. The orchestrator and the scheduler call `changed(kind, job)` once per change,
right after it is committed; nothing here waits or does I/O, so the callers (workers, the
submit path) are never slowed down by a consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

from ahv.api_types import JobDocument
from ahv.events import EventHub
from ahv.history import StatsHistory
from ahv.jobs import JobRow
from ahv.metrics import BatchSizes, Metrics
from ahv.store import Store
from ahv.timeutil import now_us

log = logging.getLogger(__name__)

Kind = Literal["submitted", "claimed", "progress", "requeued", "finished"]


class JobWatch:
    def __init__(
        self,
        *,
        store: Store,
        document: Callable[[JobRow], JobDocument],
        version: str,
        tasks: Sequence[str],
        batch_sizes: BatchSizes,
    ) -> None:
        self._store = store
        self._document = document
        self.hub = EventHub()
        self.metrics = Metrics(version=version, tasks=tasks, batch_sizes=batch_sizes)
        self.history = StatsHistory()

    def seed(self, owners: Sequence[str]) -> None:
        """The queue depth at start (jobs left queued by the last run)."""
        now_ms = now_us() // 1000
        for owner in owners:
            total = self._store.queued_count
            self.history.depth(now_ms, owner, self._store.queued_for_owner(owner), total)

    def changed(self, kind: Kind, job: JobRow) -> None:
        # A bug here must not break the bookkeeping of the job that called it.
        try:
            if kind == "submitted":
                self.metrics.job_submitted(job)
            elif kind == "claimed":
                self.metrics.job_started(job)
            elif kind == "finished":
                self.metrics.job_finished(job)
            if kind != "progress":
                now_ms = now_us() // 1000
                owner_depth = self._store.queued_for_owner(job.owner)
                self.history.depth(now_ms, job.owner, owner_depth, self._store.queued_count)
                if kind == "finished":
                    self.history.finished(now_ms, job.owner, job.status)
            self.hub.publish(job, self._document)
        except Exception:
            log.exception("job %s: recording the %s change failed", job.id, kind)

    def deleted(self, job: JobRow) -> None:
        self.hub.publish_deleted(job)
