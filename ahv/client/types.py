"""What the client returns: the job document as a typed Struct, events, and its one error.

Unknown fields are tolerated (msgspec's default), so a newer server's extra fields do not
break an older client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

FINAL_STATUSES = frozenset({"succeeded", "failed", "rejected", "canceled"})


class JobError(msgspec.Struct, kw_only=True):
    code: str
    message: str = ""


class ResultFile(msgspec.Struct, kw_only=True):
    """One file of a job with several results (cloud image generation): `meta` holds its
    width, height, mime, bytes and index."""

    url: str
    filename: str
    meta: dict[str, Any] = {}


class JobResult(msgspec.Struct, kw_only=True):
    """What a succeeded job made: `url`/`filename` are its (first) result file, `files` every
    file of a task with several outputs (empty for the others)."""

    ok: bool = True
    status: str = ""
    url: str | None = None
    filename: str | None = None
    meta: dict[str, Any] = {}
    files: list[ResultFile] = []


class Job(msgspec.Struct, kw_only=True):
    """The job document of `GET /v1/jobs/{id}` (the webhook's body without its envelope)."""

    job_id: str
    task: str
    status: str
    progress: int = 0
    ok: bool = True
    created_at: datetime | None = None
    created_at_ms: int | None = None
    queued_at: datetime | None = None
    queued_at_ms: int | None = None
    started_at: datetime | None = None
    started_at_ms: int | None = None
    finished_at: datetime | None = None
    finished_at_ms: int | None = None
    duration: float | None = None
    predict_time: float | None = None
    eta_utc: datetime | None = None
    result: JobResult | None = None
    error: JobError | None = None
    priority: int | None = None
    attempts: int = 0
    # When the result files expire (retention); None until the job is final, or kept for ever.
    expires_at: datetime | None = None
    expires_at_ms: int | None = None
    queue_position: int | None = None
    # The job's payload as the server decoded it (defaults filled in); only `get()` has it.
    payload: dict[str, Any] | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class WebhookEvent(Job, kw_only=True):
    """A webhook's body: the job document plus the event envelope. Build one from what
    `verify_webhook` returns: `msgspec.convert(data, WebhookEvent)`."""

    event: str = ""
    event_id: str = ""
    ts: datetime | None = None


class JobPage(msgspec.Struct, kw_only=True):
    """One page of `GET /v1/jobs`; `next_cursor` is None on the last page."""

    jobs: list[Job] = []
    next_cursor: str | None = None


class JobEvent(msgspec.Struct, kw_only=True):
    """One event of an events stream: `type` "job" carries the job's new document; "deleted"
    only its id; "resync" (no job, `job_id` empty) says that the server could not send what
    happened since the `last_event_id` given: list the jobs again. `id` is the stream's event
    id: pass the last one received as `events(last_event_id=...)` to resume a broken stream
    (the server's Last-Event-ID)."""

    type: Literal["job", "deleted", "resync"]
    job_id: str
    job: Job | None = None
    id: str | None = None


class AhvClientError(Exception):
    """The server's error body `{ok: false, error: {code, message}}` with the HTTP status
    (`status` 0: no HTTP answer at all: `connection_error`, `timeout`). `retry_after_s` is
    the server's Retry-After on 429 and 503."""

    def __init__(
        self, code: str, message: str, status: int = 0, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" if status == 0 else f"{status} {code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s


class _ErrorDetail(msgspec.Struct):
    code: str = "error"
    message: str = ""


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


def error_from_response(status: int, body: bytes, retry_after: str | None) -> AhvClientError:
    retry_after_s: float | None = None
    if retry_after:
        try:
            retry_after_s = float(retry_after)
        except ValueError:
            retry_after_s = None
    try:
        detail = msgspec.json.decode(body, type=_ErrorBody).error
        return AhvClientError(detail.code, detail.message, status, retry_after_s)
    except msgspec.MsgspecError:
        # Not ahv's error shape: a proxy's page, say. Keep the start of it for the message.
        text = body[:200].decode(errors="replace").strip()
        return AhvClientError(f"http_{status}", text or "no body", status, retry_after_s)
