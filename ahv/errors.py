"""The one error type of ahv: a stable snake_case code, a message and an HTTP status.

An AhvError raised while handling a request becomes the HTTP error body
`{"ok": false, "error": {"code", "message"}}`; raised inside a job it becomes the job's
`error` and the job ends `failed` (or `rejected` for content-filter codes).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ahv.api_types import ErrorBody, ErrorDetail


class AhvError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        retry_after_s: float | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        # A transient error (network blip, provider 5xx) is worth another attempt of the job.
        self.transient = transient

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"AhvError({self.code!r}, {self.message!r}, status={self.status})"


class JobCanceled(Exception):
    """Raised at a checkpoint when the running job was asked to stop."""

    def __init__(self, reason: str = "canceled") -> None:
        super().__init__(reason)
        self.reason = reason


class StartupError(Exception):
    """The server cannot start (data dir in use, ...); the message says why."""


def invalid_payload(field: str, problem: str) -> AhvError:
    return AhvError("invalid_payload", f"{field}: {problem}", status=422)


def error_body(code: str, message: str) -> dict[str, Any]:
    # Built through the Struct that /openapi.json documents; a dict for web.json_response.
    body: dict[str, Any] = msgspec.to_builtins(
        ErrorBody(ok=False, error=ErrorDetail(code, message))
    )
    return body
