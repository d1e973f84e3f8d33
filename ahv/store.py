"""All the SQL of ahv: the durable job queue and the webhook outbox, in one SQLite file.

One connection, owned by one thread (a single writer, like datasette), in WAL mode. Every
method that changes a job commits before it returns, so whatever the HTTP layer acknowledges
survives `kill -9`. Submissions that arrive together are committed in one transaction (group
commit), which is where the throughput of `POST /v1/jobs` comes from.

The queue order is `rank_ms = queued_ms - priority * age_step_ms`, ascending: a job of
priority p is overtaken only by jobs that arrived less than `(p' - p) * age_step` after it,
so ageing is built into a static sort key and nothing starves.

This module keeps a mirror of the queued set in memory (order, owner counts) so that queue
depth and queue position cost no query on the hot path; only this module mutates jobs, so the
mirror cannot drift from the table.
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import functools
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import msgspec

from ahv.errors import StartupError
from ahv.jobs import CANCELED, QUEUED, RUNNING, TERMINAL, JobRow

T = TypeVar("T")

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        owner TEXT NOT NULL,
        task TEXT NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL,
        rank_ms INTEGER NOT NULL,
        payload BLOB NOT NULL,
        webhook_url TEXT,
        webhook_events TEXT NOT NULL DEFAULT '[]',
        idempotency_key TEXT,
        request_hash TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        run_after_us INTEGER NOT NULL DEFAULT 0,
        progress INTEGER NOT NULL DEFAULT 0,
        created_us INTEGER NOT NULL,
        queued_us INTEGER NOT NULL,
        started_us INTEGER,
        finished_us INTEGER,
        predict_time REAL NOT NULL,
        eta_us INTEGER,
        backend TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        error TEXT
    );
    CREATE UNIQUE INDEX jobs_idempotency ON jobs(owner, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_queue ON jobs(rank_ms, seq) WHERE status = 'queued';
    CREATE INDEX jobs_status ON jobs(status, seq);
    CREATE INDEX jobs_owner ON jobs(owner, seq);
    CREATE INDEX jobs_task_finished ON jobs(task, finished_us) WHERE status = 'succeeded';
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        event TEXT NOT NULL,
        url TEXT NOT NULL,
        host TEXT NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_us INTEGER NOT NULL,
        last_status INTEGER,
        last_error TEXT,
        created_us INTEGER NOT NULL,
        delivered_us INTEGER
    );
    CREATE INDEX outbox_due ON outbox(next_attempt_us) WHERE state = 'pending';
    CREATE INDEX outbox_job ON outbox(job_id);
    """,
    # Retention (ahv/retention.py): which succeeded jobs still have their result file, and
    # the names of expired files, so that GET /files answers 410 rather than 404.
    """
    ALTER TABLE jobs ADD COLUMN files_expired INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_files_live ON jobs(finished_us)
        WHERE status = 'succeeded' AND files_expired = 0;
    CREATE INDEX jobs_finished ON jobs(finished_us) WHERE finished_us IS NOT NULL;
    CREATE INDEX outbox_done ON outbox(created_us) WHERE state != 'pending';
    CREATE TABLE expired_files (
        name TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        expired_us INTEGER NOT NULL
    );
    CREATE INDEX expired_files_job ON expired_files(job_id);
    CREATE INDEX expired_files_when ON expired_files(expired_us);
    """,
    # Redeliveries: counted, so that the outcome of an attempt in flight when a redelivery
    # was asked for does not overwrite it (see outbox_record).
    """
    ALTER TABLE outbox ADD COLUMN redeliveries INTEGER NOT NULL DEFAULT 0;
    """,
]

_JOB_COLUMNS = [f for f in JobRow.__struct_fields__]
_JSON_COLUMNS = {"webhook_events", "result", "error"}


class OutboxEvent(msgspec.Struct, kw_only=True):
    """A webhook delivery: written with the job change that caused it, sent later."""

    id: int = 0
    event_id: str
    job_id: str
    owner: str
    event: str
    url: str
    host: str
    body: bytes
    state: str = "pending"
    attempts: int = 0
    next_attempt_us: int
    last_status: int | None = None
    last_error: str | None = None
    created_us: int
    delivered_us: int | None = None
    redeliveries: int = 0  # how many times POST /redeliver restarted it


class IdempotencyConflict(Exception):
    def __init__(self, existing: JobRow) -> None:
        super().__init__(existing.id)
        self.existing = existing


_INSERT_SQL = (
    f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES ({', '.join('?' for _ in _JOB_COLUMNS)})"
)
_JSON_INDEXES = [_JOB_COLUMNS.index(name) for name in _JSON_COLUMNS]


def _insert_values(job: JobRow) -> tuple[Any, ...]:
    values = list(msgspec.structs.astuple(job))
    for index in _JSON_INDEXES:
        if values[index] is not None:
            values[index] = msgspec.json.encode(values[index])
    return tuple(values)


def _from_row(row: sqlite3.Row) -> JobRow:
    values = dict(row)
    for name in _JSON_COLUMNS:
        if values[name] is not None:
            values[name] = msgspec.json.decode(values[name])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return msgspec.convert(values, JobRow)


def _result_file_names(result: bytes | None) -> list[str]:
    """Every result file of a job: `result.filename` and those of `result.files` (tasks with
    several outputs)."""
    decoded = msgspec.json.decode(result) if result else None
    if not isinstance(decoded, dict):
        return []
    names = [decoded.get("filename")]
    names += [f.get("filename") for f in decoded.get("files") or [] if isinstance(f, dict)]
    return list(dict.fromkeys(n for n in names if isinstance(n, str)))


def _from_outbox_row(row: sqlite3.Row) -> OutboxEvent:
    return msgspec.convert(dict(row), OutboxEvent)


class Store:
    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self._path = path
        self._fsync = fsync
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ahv-store")
        self._conn: sqlite3.Connection | None = None
        self._lock_file: IO[str] | None = None
        self._queue_order: list[tuple[int, int]] = []  # (rank_ms, seq) of queued jobs
        self._queued_owner: dict[int, str] = {}
        self._owner_counts: Counter[str] = Counter()
        self._pending_enqueues: list[tuple[JobRow, asyncio.Future[tuple[JobRow, bool]]]] = []
        self._flusher: asyncio.Future[None] | None = None
        self._committing: list[JobRow] = []  # the batch inside the current transaction
        self._last_seq = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        await self._call(self._open_sync)
        self._last_seq = await self._call(
            lambda c: c.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0]
        )
        queued = await self._call(
            lambda c: c.execute(
                "SELECT rank_ms, seq, owner FROM jobs WHERE status = 'queued'"
            ).fetchall()
        )
        for rank_ms, seq, owner in queued:
            self._mirror_add(rank_ms, seq, owner)

    def _open_sync(self, _: None) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # One process per queue file: a second ahv on the same data dir would take the
        # first one's running jobs for crashed ones and run them again.
        lock = (self._path.parent / f"{self._path.name}.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise StartupError(
                f"another ahv process is using {self._path} (a server, or `ahv backup` "
                "copying it, for a few seconds); one data_dir per server"
            ) from None
        self._lock_file = lock
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); FULL also survives power loss.
        conn.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={number}; COMMIT;")
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            conn = self._conn
            await self._call(lambda _: conn.close())
            self._conn = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None
        self._executor.shutdown(wait=True)

    async def _call(self, fn: Callable[[Any], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._conn)

    async def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                value = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return value

        return await self._call(run)

    # -- the in-memory mirror of the queued set ------------------------------------------

    def _mirror_add(self, rank_ms: int, seq: int, owner: str) -> None:
        bisect.insort(self._queue_order, (rank_ms, seq))
        self._queued_owner[seq] = owner
        self._owner_counts[owner] += 1

    def _mirror_remove(self, rank_ms: int, seq: int) -> None:
        owner = self._queued_owner.pop(seq, None)
        if owner is None:
            return
        index = bisect.bisect_left(self._queue_order, (rank_ms, seq))
        if index < len(self._queue_order) and self._queue_order[index] == (rank_ms, seq):
            del self._queue_order[index]
        self._owner_counts[owner] -= 1

    @property
    def queued_count(self) -> int:
        return len(self._queue_order)

    def queued_for_owner(self, owner: str) -> int:
        return self._owner_counts[owner]

    @property
    def queued_or_pending_count(self) -> int:
        """Queued jobs plus submissions waiting for the next group commit: what a capacity
        check must count, or concurrent submits would all pass it."""
        return len(self._queue_order) + len(self._pending_enqueues) + len(self._committing)

    def queued_or_pending_for_owner(self, owner: str) -> int:
        waiting = [job for job, _ in self._pending_enqueues]
        pending = sum(1 for job in (*waiting, *self._committing) if job.owner == owner)
        return self._owner_counts[owner] + pending

    def queue_position(self, job: JobRow) -> int:
        """How many queued jobs run before this one (0 = next)."""
        return bisect.bisect_left(self._queue_order, (job.rank_ms, job.seq))

    # -- submitting ----------------------------------------------------------------------

    async def enqueue(self, job: JobRow) -> tuple[JobRow, bool]:
        """Insert a queued job; returns (job, created). With an idempotency key that was
        already used, returns the existing job, or raises IdempotencyConflict when the
        request differs."""
        future: asyncio.Future[tuple[JobRow, bool]] = asyncio.get_running_loop().create_future()
        self._pending_enqueues.append((job, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_pending())
        return await future

    async def _flush_pending(self) -> None:
        # Group commit: while one transaction commits, new submissions pile up and go in
        # the next one together.
        while self._pending_enqueues:
            batch, self._pending_enqueues = self._pending_enqueues, []
            jobs = [job for job, _ in batch]
            self._committing = jobs
            try:
                outcomes = await self._transaction(
                    functools.partial(self._insert_batch_sync, jobs=jobs)
                )
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                self._committing = []
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, IdempotencyConflict):
                    future.set_exception(outcome)
                    continue
                row, created = outcome
                if created:
                    self._mirror_add(row.rank_ms, row.seq, row.owner)
                if not future.done():
                    future.set_result(outcome)
            self._committing = []

    def _insert_batch_sync(
        self, conn: sqlite3.Connection, jobs: list[JobRow]
    ) -> list[tuple[JobRow, bool] | IdempotencyConflict]:
        outcomes: list[tuple[JobRow, bool] | IdempotencyConflict] = []
        new_rows: list[tuple[Any, ...]] = []
        claimed_keys: dict[tuple[str, str], JobRow] = {}
        for job in jobs:
            if job.idempotency_key is not None:
                key = (job.owner, job.idempotency_key)
                existing = claimed_keys.get(key) or self._find_idempotent_sync(conn, *key)
                if existing is not None:
                    same = existing.request_hash == job.request_hash
                    outcomes.append((existing, False) if same else IdempotencyConflict(existing))
                    continue
            self._last_seq += 1
            row = msgspec.structs.replace(job, seq=self._last_seq)
            if job.idempotency_key is not None:
                claimed_keys[(job.owner, job.idempotency_key)] = row
            new_rows.append(_insert_values(row))
            outcomes.append((row, True))
        if new_rows:
            conn.executemany(_INSERT_SQL, new_rows)
        return outcomes

    async def find_idempotent(self, owner: str, key: str) -> JobRow | None:
        return await self._call(lambda c: self._find_idempotent_sync(c, owner, key))

    def _find_idempotent_sync(
        self, conn: sqlite3.Connection, owner: str, key: str
    ) -> JobRow | None:
        found = conn.execute(
            "SELECT * FROM jobs WHERE owner = ? AND idempotency_key = ?", (owner, key)
        ).fetchone()
        return None if found is None else _from_row(found)

    # -- reading -------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRow | None:
        row = await self._call(
            lambda c: c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )
        return None if row is None else _from_row(row)

    async def get_many(self, job_ids: Sequence[str]) -> dict[str, JobRow]:
        """The jobs of these ids that still exist, by id (in one read, a few hundred ids per
        query)."""

        def run(conn: sqlite3.Connection) -> dict[str, JobRow]:
            found: dict[str, JobRow] = {}
            for start in range(0, len(job_ids), 500):
                chunk = job_ids[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                for row in conn.execute(f"SELECT * FROM jobs WHERE id IN ({marks})", chunk):
                    job = _from_row(row)
                    found[job.id] = job
            return found

        return await self._call(run)

    async def list_jobs(
        self,
        *,
        owner: str | None,
        status: str | None,
        task: str | None,
        limit: int,
        before_seq: int | None,
    ) -> list[JobRow]:
        clauses: list[str] = ["1 = 1"]
        params: list[str | int] = []
        for column, value in (("owner", owner), ("status", status), ("task", task)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if before_seq is not None:
            clauses.append("seq < ?")
            params.append(before_seq)
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT ?"
        rows = await self._call(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [_from_row(r) for r in rows]

    async def queued_by_task(self) -> dict[str, int]:
        rows = await self._call(
            lambda c: c.execute(
                "SELECT task, COUNT(*) FROM jobs WHERE status = 'queued' GROUP BY task"
            ).fetchall()
        )
        return {task: count for task, count in rows}

    async def queued_or_pending_by_task(self) -> dict[str, int]:
        """Queued jobs per task, with the submissions waiting for (or inside) the next group
        commit: what a reload must count before it stops serving a task."""
        counts = Counter(await self.queued_by_task())
        waiting = [job for job, _ in self._pending_enqueues]
        counts.update(job.task for job in (*waiting, *self._committing))
        return dict(counts)

    async def counts_by_status(self, owner: str | None) -> dict[str, int]:
        where, params = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        rows = await self._call(
            lambda c: c.execute(
                f"SELECT status, COUNT(*) FROM jobs {where} GROUP BY status", params
            ).fetchall()
        )
        return {status: count for status, count in rows}

    async def recent_durations(self, limit_per_task: int) -> dict[str, list[float]]:
        """Durations (s) of the latest succeeded jobs of each task, oldest first."""
        rows = await self._call(
            lambda c: c.execute(
                """SELECT task, (finished_us - started_us) / 1e6 FROM (
                       SELECT task, started_us, finished_us, ROW_NUMBER() OVER (
                           PARTITION BY task ORDER BY finished_us DESC) AS n
                       FROM jobs WHERE status = 'succeeded' AND started_us IS NOT NULL)
                   WHERE n <= ? ORDER BY finished_us""",
                (limit_per_task,),
            ).fetchall()
        )
        durations: dict[str, list[float]] = {}
        for task, seconds in rows:
            durations.setdefault(task, []).append(seconds)
        return durations

    # -- running -------------------------------------------------------------------------

    async def claim(
        self, tasks: Sequence[str], backend: str, now_us: int, eta_us: Callable[[str], int]
    ) -> JobRow | None:
        """Take the first runnable queued job of one of `tasks` and mark it running."""
        if not tasks:
            return None
        marks = ", ".join("?" for _ in tasks)

        def run(conn: sqlite3.Connection) -> JobRow | None:
            row = conn.execute(
                f"""SELECT * FROM jobs WHERE status = 'queued' AND run_after_us <= ?
                    AND task IN ({marks}) ORDER BY rank_ms, seq LIMIT 1""",
                (now_us, *tasks),
            ).fetchone()
            if row is None:
                return None
            job = _from_row(row)
            job = msgspec.structs.replace(
                job,
                status=RUNNING,
                attempts=job.attempts + 1,
                started_us=now_us,
                backend=backend,
                eta_us=eta_us(job.task),
                progress=0,
            )
            conn.execute(
                """UPDATE jobs SET status = ?, attempts = ?, started_us = ?, backend = ?,
                   eta_us = ?, progress = 0 WHERE seq = ?""",
                (RUNNING, job.attempts, now_us, backend, job.eta_us, job.seq),
            )
            return job

        job = await self._transaction(run)
        if job is not None:
            self._mirror_remove(job.rank_ms, job.seq)
        return job

    async def set_progress(self, job_id: str, progress: int) -> None:
        await self._call(
            lambda c: c.execute(
                "UPDATE jobs SET progress = ? WHERE id = ? AND status = 'running'",
                (progress, job_id),
            )
        )

    async def finish(
        self, job: JobRow, events: Sequence[OutboxEvent], *, expect_status: str
    ) -> bool:
        """Write the job's final state and its webhook events in one transaction.

        Only applies if the job is still in `expect_status`; returns whether it did."""

        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                """UPDATE jobs SET status = ?, progress = ?, finished_us = ?, result = ?,
                   error = ?, eta_us = ? WHERE id = ? AND status = ?""",
                (
                    job.status,
                    job.progress,
                    job.finished_us,
                    None if job.result is None else msgspec.json.encode(job.result),
                    None if job.error is None else msgspec.json.encode(job.error),
                    job.eta_us,
                    job.id,
                    expect_status,
                ),
            )
            if cursor.rowcount != 1:
                return False
            self._insert_events_sync(conn, events)
            return True

        done = await self._transaction(run)
        if done and expect_status == QUEUED:
            self._mirror_remove(job.rank_ms, job.seq)
        return done

    async def requeue(self, job: JobRow, *, run_after_us: int, refund_attempt: bool) -> None:
        """Put a running job back in the queue: a retry after a transient error, or a job
        interrupted by shutdown (which gets its attempt back)."""
        attempts = job.attempts - 1 if refund_attempt else job.attempts
        cursor = await self._transaction(
            lambda c: c.execute(
                """UPDATE jobs SET status = 'queued', attempts = ?, run_after_us = ?,
                   started_us = NULL, backend = NULL, progress = 0, eta_us = NULL,
                   error = ? WHERE id = ? AND status = 'running'""",
                (
                    attempts,
                    run_after_us,
                    None if job.error is None else msgspec.json.encode(job.error),
                    job.id,
                ),
            )
        )
        if cursor.rowcount == 1:  # not if the job was deleted meanwhile
            self._mirror_add(job.rank_ms, job.seq, job.owner)

    async def request_cancel(self, job_id: str) -> bool:
        cursor = await self._transaction(
            lambda c: c.execute(
                "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status IN (?, ?)",
                (job_id, QUEUED, RUNNING),
            )
        )
        return bool(cursor.rowcount)

    async def delete(self, job: JobRow) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
            # A deleted job's expired file is a plain 404, like its other files.
            conn.execute("DELETE FROM expired_files WHERE job_id = ?", (job.id,))

        await self._transaction(run)
        self._mirror_remove(job.rank_ms, job.seq)

    async def running_jobs(self) -> list[JobRow]:
        rows = await self._call(
            lambda c: c.execute("SELECT * FROM jobs WHERE status = 'running'").fetchall()
        )
        return [_from_row(r) for r in rows]

    async def cancel_requested_queued(self) -> list[JobRow]:
        rows = await self._call(
            lambda c: c.execute(
                "SELECT * FROM jobs WHERE status = 'queued' AND cancel_requested = 1"
            ).fetchall()
        )
        return [_from_row(r) for r in rows]

    # -- the webhook outbox --------------------------------------------------------------

    def _insert_events_sync(self, conn: sqlite3.Connection, events: Sequence[OutboxEvent]) -> None:
        for event in events:
            values = msgspec.structs.asdict(event)
            del values["id"]
            columns = ", ".join(values)
            marks = ", ".join(f":{name}" for name in values)
            conn.execute(f"INSERT INTO outbox ({columns}) VALUES ({marks})", values)

    async def outbox_due(
        self, now_us: int, limit: int, skip_ids: set[int], skip_hosts: set[str]
    ) -> list[OutboxEvent]:
        """Due deliveries, oldest first, leaving out those in flight and those to hosts that
        already have their share in flight (so one slow host cannot fill the batch)."""
        sql, params = self._outbox_pending_filter(skip_ids, skip_hosts)
        sql = f"SELECT * FROM outbox WHERE {sql} AND next_attempt_us <= ? "
        sql += "ORDER BY next_attempt_us LIMIT ?"
        rows = await self._call(lambda c: c.execute(sql, (*params, now_us, limit)).fetchall())
        return [_from_outbox_row(r) for r in rows]

    async def outbox_next_due_us(self, skip_ids: set[int], skip_hosts: set[str]) -> int | None:
        sql, params = self._outbox_pending_filter(skip_ids, skip_hosts)
        row = await self._call(
            lambda c: c.execute(
                f"SELECT MIN(next_attempt_us) FROM outbox WHERE {sql}", params
            ).fetchone()
        )
        return None if row is None else row[0]

    @staticmethod
    def _outbox_pending_filter(
        skip_ids: set[int], skip_hosts: set[str]
    ) -> tuple[str, tuple[Any, ...]]:
        sql = "state = 'pending'"
        if skip_ids:
            sql += f" AND id NOT IN ({', '.join('?' for _ in skip_ids)})"
        if skip_hosts:
            sql += f" AND host NOT IN ({', '.join('?' for _ in skip_hosts)})"
        return sql, (*skip_ids, *skip_hosts)

    async def outbox_record(self, event: OutboxEvent) -> bool:
        """Save the outcome of a delivery attempt (state, attempts, next try, last answer).
        False when a redelivery was asked for while the attempt was in flight: the row was
        reset (pending, due now, attempts from 0) and stays so, with this attempt's answer
        as its last one; the sender picks it up again once this attempt is over."""

        def run(conn: sqlite3.Connection) -> bool:
            saved = conn.execute(
                """UPDATE outbox SET state = ?, attempts = ?, next_attempt_us = ?,
                   last_status = ?, last_error = ?, delivered_us = ?
                   WHERE id = ? AND redeliveries = ?""",
                (
                    event.state,
                    event.attempts,
                    event.next_attempt_us,
                    event.last_status,
                    event.last_error,
                    event.delivered_us,
                    event.id,
                    event.redeliveries,
                ),
            ).rowcount
            if not saved:
                conn.execute(
                    "UPDATE outbox SET last_status = ?, last_error = ? WHERE id = ?",
                    (event.last_status, event.last_error, event.id),
                )
            return bool(saved)

        return await self._transaction(run)

    async def outbox_for_job(self, job_id: str) -> list[OutboxEvent]:
        rows = await self._call(
            lambda c: c.execute(
                "SELECT * FROM outbox WHERE job_id = ? ORDER BY id", (job_id,)
            ).fetchall()
        )
        return [_from_outbox_row(r) for r in rows]

    async def outbox_redeliver(self, job_id: str, event: str, now_us: int) -> OutboxEvent | None:
        """Make the job's latest `event` delivery pending again, due now, attempts from 0,
        keeping its event_id and body (receivers deduplicate on them). None if it has none."""

        def run(conn: sqlite3.Connection) -> OutboxEvent | None:
            row = conn.execute(
                "SELECT id FROM outbox WHERE job_id = ? AND event = ? ORDER BY id DESC LIMIT 1",
                (job_id, event),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                """UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_us = ?,
                   delivered_us = NULL, redeliveries = redeliveries + 1 WHERE id = ?""",
                (now_us, row[0]),
            )
            return _from_outbox_row(
                conn.execute("SELECT * FROM outbox WHERE id = ?", (row[0],)).fetchone()
            )

        return await self._transaction(run)

    async def outbox_counts(self) -> dict[str, int]:
        rows = await self._call(
            lambda c: c.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        )
        return {state: count for state, count in rows}

    # -- retention (ahv/retention.py) ----------------------------------------------------
    # A task group is one task (`task`), or every task but the ones with their own rules
    # (`task=None`, `exclude`). Each call handles at most `limit` jobs in one short
    # transaction, so that submissions are not held up behind a long sweep.

    @staticmethod
    def _group_filter(task: str | None, exclude: Sequence[str]) -> tuple[str, tuple[str, ...]]:
        if task is not None:
            return "task = ?", (task,)
        if not exclude:
            return "1 = 1", ()
        return f"task NOT IN ({', '.join('?' for _ in exclude)})", tuple(exclude)

    async def expire_files(
        self, task: str | None, exclude: Sequence[str], before_us: int, now_us: int, limit: int
    ) -> tuple[list[str], int]:
        """Mark the result files of jobs of a group that finished before `before_us` as
        expired (a tombstone per file name); returns (file names to remove, jobs marked)."""
        where, params = self._group_filter(task, exclude)

        def run(conn: sqlite3.Connection) -> tuple[list[str], int]:
            rows = conn.execute(
                f"""SELECT seq, id, result FROM jobs WHERE status = 'succeeded'
                    AND files_expired = 0 AND finished_us < ? AND {where} LIMIT ?""",
                (before_us, *params, limit),
            ).fetchall()
            tombstones: list[tuple[str, str, int]] = []
            for _, job_id, result in rows:
                tombstones += [(name, job_id, now_us) for name in _result_file_names(result)]
            conn.executemany(
                "INSERT OR REPLACE INTO expired_files (name, job_id, expired_us) VALUES (?, ?, ?)",
                tombstones,
            )
            conn.executemany(
                "UPDATE jobs SET files_expired = 1 WHERE seq = ?", [(r[0],) for r in rows]
            )
            return [name for name, _, _ in tombstones], len(rows)

        return await self._transaction(run)

    async def purge_jobs(
        self, task: str | None, exclude: Sequence[str], before_us: int, limit: int
    ) -> tuple[list[str], list[JobRow]]:
        """Delete finished jobs of a group that ended before `before_us`, with their outbox
        rows and tombstones; a job with a webhook still pending stays. Returns (result files
        not yet expired, to remove; the jobs deleted)."""
        where, params = self._group_filter(task, exclude)
        final = ", ".join(f"'{status}'" for status in sorted(TERMINAL))

        def run(conn: sqlite3.Connection) -> tuple[list[str], list[JobRow]]:
            rows = conn.execute(
                f"""SELECT * FROM jobs
                    WHERE finished_us IS NOT NULL AND finished_us < ? AND status IN ({final})
                    AND {where} AND NOT EXISTS (SELECT 1 FROM outbox
                        WHERE outbox.job_id = jobs.id AND outbox.state = 'pending')
                    LIMIT ?""",
                (before_us, *params, limit),
            ).fetchall()
            files: list[str] = []
            for row in rows:
                if not row["files_expired"]:
                    files += _result_file_names(row["result"])
            ids = [(row["id"],) for row in rows]
            conn.executemany("DELETE FROM outbox WHERE job_id = ?", ids)
            conn.executemany("DELETE FROM expired_files WHERE job_id = ?", ids)
            conn.executemany("DELETE FROM jobs WHERE seq = ?", [(row["seq"],) for row in rows])
            return files, [_from_row(row) for row in rows]

        return await self._transaction(run)

    async def purge_leftovers(self, before_us: int, limit: int) -> int:
        """Delivered or failed outbox rows and tombstones older than `before_us` whose job
        was deleted through the API (those of expired jobs go with them)."""

        def run(conn: sqlite3.Connection) -> int:
            outbox = conn.execute(
                """DELETE FROM outbox WHERE id IN (SELECT id FROM outbox
                   WHERE state != 'pending' AND created_us < ? LIMIT ?)""",
                (before_us, limit),
            ).rowcount
            tombstones = conn.execute(
                """DELETE FROM expired_files WHERE name IN (SELECT name FROM expired_files
                   WHERE expired_us < ? LIMIT ?)""",
                (before_us, limit),
            ).rowcount
            return int(outbox) + int(tombstones)

        return await self._transaction(run)

    async def expired_file(self, name: str) -> int | None:
        """When the result file `name` was removed by retention (µs), or None."""
        row = await self._call(
            lambda c: c.execute(
                "SELECT expired_us FROM expired_files WHERE name = ?", (name,)
            ).fetchone()
        )
        return None if row is None else int(row[0])


__all__ = ["CANCELED", "IdempotencyConflict", "OutboxEvent", "Store"]
