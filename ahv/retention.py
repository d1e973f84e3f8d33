"""Retention: result files and finished job records expire after the times in `[retention]`
(per task allowed), removed by a background sweep.

Expiry is computed from a job's `finished_us` and the current settings, so a reloaded or
restarted server applies new settings to every job, old ones too, and the `expires_at` a
job document shows is what the sweeper does. A file removed by the sweep leaves a tombstone
(its name) until its job record goes, so `GET /files/{name}` answers 410 `file_expired`
rather than 404 while the job can still be looked up; after that it is a plain 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ahv.config import RetentionConfig
from ahv.jobs import JobRow
from ahv.store import Store
from ahv.timeutil import now_us

log = logging.getLogger(__name__)

# Jobs handled per transaction: short enough that submissions interleave with a sweep.
BATCH = 500


@dataclass(frozen=True)
class Rule:
    """The retention of one task (`task`), or of every task but `exclude` (`task=None`)."""

    task: str | None
    exclude: tuple[str, ...]
    files_s: float  # 0 = for ever
    jobs_s: float  # 0 = for ever


def rules(retention: RetentionConfig) -> list[Rule]:
    own = tuple(sorted(retention.tasks))
    found = [Rule(None, own, retention.files_s, retention.jobs_s)]
    for task in own:
        override = retention.tasks[task]
        files_s = retention.files_s if override.files_s is None else override.files_s
        jobs_s = retention.jobs_s if override.jobs_s is None else override.jobs_s
        found.append(Rule(task, (), files_s, jobs_s))
    return found


def files_s_for(retention: RetentionConfig, task: str) -> float:
    override = retention.tasks.get(task)
    if override is not None and override.files_s is not None:
        return override.files_s
    return retention.files_s


def expires_us(retention: RetentionConfig, job: JobRow) -> int | None:
    """When a final job's result files expire; None while it runs, or when kept for ever."""
    if not job.is_terminal or job.finished_us is None:
        return None
    files_s = files_s_for(retention, job.task)
    return None if not files_s else job.finished_us + int(files_s * 1e6)


@dataclass
class SweepReport:
    files: int = 0  # result files removed
    jobs: int = 0  # job records removed
    leftovers: int = 0  # outbox rows and tombstones of jobs deleted through the API


def _unlink_all(files_dir: Path, names: list[str]) -> None:
    for name in names:
        (files_dir / name).unlink(missing_ok=True)


class Sweeper:
    """The background task: every `retention.sweep_interval_s`, expire due files, then
    due job records. Settings are read on every sweep (they change on reload)."""

    def __init__(
        self,
        store: Store,
        files_dir: Path,
        settings: Callable[[], RetentionConfig],
        on_purged: Callable[[JobRow], None] = lambda job: None,
    ) -> None:
        self._store = store
        self._files_dir = files_dir
        self._settings = settings
        # Told of each job record removed (the live event streams say `deleted`).
        self._on_purged = on_purged
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # a stop, or new settings: sweep (or end) now
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stop.clear()
        self._task = asyncio.create_task(self._loop())

    def kick(self) -> None:
        """New settings (reload): sweep now rather than after the old interval."""
        self._wake.set()

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task  # a sweep in progress ends its batch first
            self._task = None

    async def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                report = await self.sweep()
            except Exception:
                log.exception("retention sweep failed")
            else:
                if report.files or report.jobs or report.leftovers:
                    log.info(
                        "retention: removed %d result files, %d job records",
                        report.files,
                        report.jobs,
                        extra={
                            "event": "retention_swept",
                            "files_removed": report.files,
                            "jobs_removed": report.jobs,
                        },
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings().sweep_interval_s)

    async def sweep(self, now: int | None = None) -> SweepReport:
        """One pass: files first (their records still name them), then records."""
        now = now_us() if now is None else now
        retention = self._settings()
        report = SweepReport()
        for rule in rules(retention):
            if rule.files_s:
                report.files += await self._expire_files(rule, now)
            if rule.jobs_s:
                report.jobs += await self._purge_jobs(rule, now)
        longest = [rule.jobs_s for rule in rules(retention)]
        if all(longest):  # nothing is kept for ever: leftovers older than any record go
            before = now - int(max(longest) * 1e6)
            while not self._stop.is_set():
                removed = await self._store.purge_leftovers(before, BATCH)
                report.leftovers += removed
                if removed < BATCH:
                    break
        return report

    async def _expire_files(self, rule: Rule, now: int) -> int:
        before = now - int(rule.files_s * 1e6)
        removed = 0
        while not self._stop.is_set():
            names, marked = await self._store.expire_files(
                rule.task, rule.exclude, before, now, BATCH
            )
            # The tombstones are committed first: a crash between the two leaves a file
            # that its record's expiry removes later, never a 404 for an expired file.
            await asyncio.to_thread(_unlink_all, self._files_dir, names)
            removed += len(names)
            if marked < BATCH:
                break
        return removed

    async def _purge_jobs(self, rule: Rule, now: int) -> int:
        before = now - int(rule.jobs_s * 1e6)
        removed = 0
        while not self._stop.is_set():
            names, gone = await self._store.purge_jobs(rule.task, rule.exclude, before, BATCH)
            await asyncio.to_thread(_unlink_all, self._files_dir, names)
            for job in gone:
                self._on_purged(job)
            removed += len(gone)
            if len(gone) < BATCH:
                break
        return removed
