"""The job record, its statuses and the job document clients see (GET and webhooks)."""

from __future__ import annotations

from typing import Any, Final, cast

import msgspec
from msgspec import UNSET

from ahv.api_types import ErrorDetail, JobDocument, JobResult, JobStatus
from ahv.timeutil import iso, ms

QUEUED: Final = "queued"
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
REJECTED: Final = "rejected"
CANCELED: Final = "canceled"

STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, REJECTED, CANCELED)
TERMINAL = frozenset({SUCCEEDED, FAILED, REJECTED, CANCELED})

# Error codes that mean "refused by a content filter" end a job as `rejected`, not `failed`.
# `content_blocked`: a cloud provider's safety system refused the prompt, an input or the result.
REJECTION_CODES = frozenset({"nsfw_blocked", "content_blocked"})


class JobRow(msgspec.Struct, kw_only=True):
    """One row of the `jobs` table, as the store reads and writes it."""

    seq: int = 0
    id: str
    owner: str
    task: str
    status: str
    priority: int
    rank_ms: int
    payload: bytes
    webhook_url: str | None = None
    webhook_events: list[str] = []
    idempotency_key: str | None = None
    request_hash: str | None = None
    attempts: int = 0
    max_attempts: int
    run_after_us: int = 0
    progress: int = 0
    created_us: int
    queued_us: int
    started_us: int | None = None
    finished_us: int | None = None
    predict_time: float
    eta_us: int | None = None
    backend: str | None = None
    cancel_requested: bool = False
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def duration_s(self) -> float | None:
        if self.started_us is None or self.finished_us is None:
            return None
        return round((self.finished_us - self.started_us) / 1e6, 6)


def job_document(
    job: JobRow, *, queue_position: int | None = None, expires_us: int | None = None
) -> JobDocument:
    """The seed's webhook body minus the event envelope; the same fields on GET.
    `expires_us`: when the job's result files expire (ahv/retention.py), for final jobs."""
    predict = _predict_number(job.predict_time)
    return JobDocument(
        job_id=job.id,
        task=job.task,
        status=cast(JobStatus, job.status),
        progress=job.progress,
        ok=job.status not in (FAILED, REJECTED, CANCELED),
        created_at=iso(job.created_us),
        created_at_ms=ms(job.created_us),
        queued_at=iso(job.queued_us),
        queued_at_ms=ms(job.queued_us),
        started_at=iso(job.started_us),
        started_at_ms=ms(job.started_us),
        finished_at=iso(job.finished_us),
        finished_at_ms=ms(job.finished_us),
        duration=job.duration_s,
        predict_time=predict,
        eta_utc=iso(job.eta_us),
        # Stored as JSON objects; typed here so that what is sent is what the schema says.
        result=None if job.result is None else msgspec.convert(job.result, JobResult),
        error=None if job.error is None else msgspec.convert(job.error, ErrorDetail),
        predictTime=predict,
        priority=job.priority,
        attempts=job.attempts,
        expires_at=iso(expires_us),
        expires_at_ms=ms(expires_us),
        queue_position=queue_position if job.status == QUEUED else UNSET,
    )


def _predict_number(seconds: float) -> float | int:
    # The seed shows whole seconds (`"predict_time": 3`); keep tenths for sub-second tasks.
    return int(seconds) if seconds >= 10 or seconds == int(seconds) else round(seconds, 1)
