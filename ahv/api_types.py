"""The bodies the HTTP API sends, as msgspec Structs.

The server builds its responses through these types and `/openapi.json` is generated from
them (ahv/http/openapi.py), so the published schema cannot drift from what is sent. Field
order is the order on the wire: the job document keeps the product sheet's order.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

EventName = Literal["job.finished", "job.started", "job.progress"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "rejected", "canceled"]

IsoTime = Annotated[
    str, Meta(description="UTC, ISO-8601 with microseconds: 2026-02-04T18:04:19.463754+00:00")
]
EpochMs = Annotated[int, Meta(description="milliseconds since the epoch")]
Seconds = Annotated[
    int | float, Meta(description="seconds; whole seconds from 10 s up, else tenths")
]


class ErrorDetail(msgspec.Struct):
    """A failure: a stable snake_case code and a message meant for people."""

    code: Annotated[str, Meta(examples=["job_not_found"])]
    message: str


class ErrorBody(msgspec.Struct, kw_only=True):
    """The one shape of every HTTP error."""

    ok: Literal[False]
    error: ErrorDetail


class FileEntry(msgspec.Struct, kw_only=True):
    """One result file of a task with several outputs (cloud image generation)."""

    url: str
    filename: str
    meta: Annotated[dict[str, Any], Meta(description="width, height, mime, ... of this file")]


class JobResult(msgspec.Struct, kw_only=True):
    """What a succeeded job produced: the result file (if any) and what the task reports."""

    ok: bool
    status: JobStatus
    url: Annotated[str | None, Meta(description="where the result file is served")]
    filename: str | None
    meta: Annotated[
        dict[str, Any],
        Meta(description="task-specific facts; always `backend`, the slot that ran the job"),
    ]
    files: (
        Annotated[
            list[FileEntry],
            Meta(description="tasks with several outputs: every file, `url` is the first's"),
        ]
        | UnsetType
    ) = UNSET


class JobDocument(msgspec.Struct, kw_only=True):
    """A job as GET /v1/jobs/{id} shows it; the webhook body adds the event envelope."""

    job_id: str
    task: str
    status: JobStatus
    progress: Annotated[int, Meta(ge=0, le=100)]
    ok: Annotated[bool, Meta(description="false for failed, rejected and canceled")]
    created_at: IsoTime
    created_at_ms: EpochMs
    queued_at: IsoTime
    queued_at_ms: EpochMs
    started_at: IsoTime | None
    started_at_ms: EpochMs | None
    finished_at: IsoTime | None
    finished_at_ms: EpochMs | None
    duration: Annotated[float | None, Meta(description="seconds from start to finish")]
    predict_time: Seconds
    eta_utc: IsoTime | None
    result: JobResult | None
    error: ErrorDetail | None
    predictTime: Seconds  # the product sheet's spelling, kept for its clients
    priority: Annotated[int, Meta(ge=0, le=9)]
    attempts: int
    expires_at: Annotated[
        IsoTime | None, Meta(description="when the result files expire; null until final")
    ]
    expires_at_ms: EpochMs | None
    queue_position: (
        Annotated[int | None, Meta(description="only while queued: jobs ahead (0 = next)")]
        | UnsetType
    ) = UNSET
    payload: (
        Annotated[Any, Meta(description="the job's payload, on GET /v1/jobs/{id} only")] | UnsetType
    ) = UNSET


class WebhookEnvelope(msgspec.Struct, kw_only=True):
    """What a webhook body has before the job document's fields."""

    event: EventName
    event_id: Annotated[str, Meta(description="the same on every retry: deduplicate on it")]
    ts: IsoTime


class JobList(msgspec.Struct, kw_only=True):
    ok: Literal[True]
    jobs: list[JobDocument]
    next_cursor: Annotated[str | None, Meta(description="pass as `cursor` for the next page")]


class Deleted(msgspec.Struct, kw_only=True):
    ok: Literal[True]
    job_id: str
    deleted: Literal[True]


class Delivery(msgspec.Struct, kw_only=True):
    """One webhook delivery of a job, from the outbox."""

    event_id: str
    event: str
    url: str
    state: Annotated[str, Meta(examples=["pending", "delivered", "failed"])]
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at_ms: EpochMs | None
    delivered_at_ms: EpochMs | None
    created_at_ms: EpochMs


class Deliveries(msgspec.Struct, kw_only=True):
    ok: Literal[True]
    job_id: str
    deliveries: list[Delivery]


class Redelivered(msgspec.Struct, kw_only=True):
    ok: Literal[True]
    job_id: str
    delivery: Delivery


class HistoryBucket(msgspec.Struct, kw_only=True):
    """One minute of the last hour."""

    t_ms: Annotated[EpochMs, Meta(description="start of the minute")]
    queue_depth: Annotated[int, Meta(description="the most jobs queued in the minute")]
    finished: Annotated[int, Meta(description="jobs that reached any final status")]
    failed: Annotated[int, Meta(description="of those, failed or rejected")]


class Stats(msgspec.Struct, kw_only=True):
    ok: Literal[True]
    counts: Annotated[dict[str, int], Meta(description="jobs by status")]
    queue_depth: int
    running: int
    mean_duration_s: Annotated[dict[str, float], Meta(description="by task, recent jobs")]
    predict_time_s: Annotated[dict[str, int], Meta(description="by task")]
    webhooks: Annotated[dict[str, int], Meta(description="outbox deliveries by state")]
    recent: list[JobDocument]
    history: Annotated[
        list[HistoryBucket], Meta(description="the last 60 minutes, oldest first (in memory)")
    ]


class BatchingStats(msgspec.Struct, kw_only=True):
    batches: int
    items: int
    mean_batch: float


class BackendReport(msgspec.Struct, kw_only=True):
    name: str
    kind: str
    device: str
    slots: int
    busy: int
    running_jobs: list[str]
    queued: int
    tasks: list[str]
    providers: Annotated[
        list[str], Meta(description="what ONNX Runtime really runs on, not what was asked for")
    ]
    degraded: Annotated[str | None, Meta(description="why a cuda:N backend runs on CPU")]
    models_loaded: list[str]
    batching: Annotated[dict[str, BatchingStats], Meta(description="by model")]
    unavailable_tasks: Annotated[
        dict[str, str], Meta(description="task: why its model files are missing or corrupt")
    ]
    # A cloud provider's backend (kind "provider") also says which provider and where.
    provider: str | UnsetType = UNSET
    configured: bool | UnsetType = UNSET
    base_url: str | UnsetType = UNSET


class UnavailableProvider(msgspec.Struct, kw_only=True):
    """A cloud provider not set up in ahv.toml: its tasks cannot run."""

    provider: str
    configured: Literal[False]
    base_url: str
    unavailable_tasks: Annotated[dict[str, str | None], Meta(description="task: why")]


class BackendsReport(msgspec.Struct, kw_only=True):
    ok: Literal[True]
    queue_depth: int
    backends: list[BackendReport]
    unavailable_providers: list[UnavailableProvider]


class Health(msgspec.Struct, kw_only=True):
    ok: bool
    status: Literal["ready", "draining"]
    version: str
