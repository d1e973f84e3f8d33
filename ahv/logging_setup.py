"""Logging for `ahv serve`: one line per event, as text or as JSON (`--log-format json`).

A JSON line is `{"ts", "level", "logger", "msg", ...}` plus the fields a call site passes in
`extra=` (`job_id`, `task`, `backend`, `status`, `error_code`, `duration_s`, `event_id`, ...),
and `exc` with the traceback when there is one. Records are handed to a queue and written by a
thread of their own, so a slow stderr (a full pipe to journald) never stalls the event loop.
Keys and webhook secrets are never passed to a logger.
"""

from __future__ import annotations

import copy
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", None, None).__dict__,
        "message",
        "asctime",
        "taskName",
    }
)


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="microseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return msgspec.json.encode(line, enc_hook=str).decode()


class _QueueHandler(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The stdlib's prepare() formats the message with the traceback folded into it;
        # keep them apart (the JSON formatter puts the traceback in its own field).
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


class LogSetup:
    """The installed handlers; `close()` writes out what is queued and stops the thread."""

    def __init__(self, listener: logging.handlers.QueueListener | None) -> None:
        self._listener = listener

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(
    log_format: str = "text", level: str = "info", *, stream: TextIO | None = None
) -> LogSetup:
    """Route the root logger (and Python warnings) through one queue to `stream`."""
    output = logging.StreamHandler(stream or sys.stderr)
    output.setFormatter(make_formatter(log_format))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, output, respect_handler_level=False)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_QueueHandler(records))
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a warning is one more line of the chosen format
    listener.start()
    return LogSetup(listener)
