"""Logging for `ahv serve`: one line per event, as text or as JSON (`--log-format json`).

A JSON line is `{"ts", "level", "logger", "msg", ...}` plus the fields a call site passes in
`extra=` (`job_id`, `task`, `backend`, `status`, `error_code`, `duration_s`, `event_id`, ...),
and `exc` with the traceback when there is one. Records are handed to a queue and written by a
thread of their own, so a slow stderr (a full pipe to journald) never stalls the event loop.
That thread writes what has queued up in one write and one flush, not one per line: under a
burst of submissions (a line each) a write per line held the GIL often enough to cost the
event loop a quarter of its submit throughput. Keys and webhook secrets are never passed to a
logger.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
import time
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
        # keep them apart (the JSON formatter puts the traceback in its own field). The
        # record is changed in place (the stdlib copies it): the message and traceback text
        # are the same for any handler after this one, and a copy costs the event loop.
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_STOP = logging.LogRecord("ahv.logging", logging.INFO, "", 0, "stop", None, None)
_MOST_PER_WRITE = 1024  # lines
# After a write the thread lets lines gather this long before the next: under a burst it wakes
# (and takes the GIL from the event loop) ~50 times a second instead of once a line. A lone
# line is still written at once.
_GATHER_S = 0.02


class _Writer:
    """The thread that formats queued records and writes them to the stream, as many as have
    queued up (at most _MOST_PER_WRITE) in one write and one flush."""

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord],
        stream: TextIO,
        formatter: logging.Formatter,
    ) -> None:
        self._records = records
        self._stream = stream
        self._formatter = formatter
        self._thread = threading.Thread(target=self._run, name="ahv-log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write out everything queued before this call, then end the thread."""
        self._records.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            batch = [self._records.get()]
            while len(batch) < _MOST_PER_WRITE:
                try:
                    batch.append(self._records.get_nowait())
                except queue.Empty:
                    break
            lines = [self._format(record) for record in batch if record is not _STOP]
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):  # a closed or broken stream: nowhere to say so
                    pass
            if any(record is _STOP for record in batch):
                return
            time.sleep(_GATHER_S)

    def _format(self, record: logging.LogRecord) -> str:
        try:
            return self._formatter.format(record)
        except Exception as exc:  # a bad call site's fields must not end the thread
            said = logging.LogRecord(
                "ahv.logging",
                logging.ERROR,
                "",
                0,
                f"unprintable record from {record.name} ({exc!r}): {record.msg!r}",
                None,
                None,
            )
            said.created = record.created
            return self._formatter.format(said)


class LogSetup:
    """The installed handlers; `close()` writes out what is queued and stops the thread."""

    def __init__(self, writer: _Writer | None) -> None:
        self._writer = writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            self._writer = None


def make_formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def console_line(log_format: str, level: int, msg: str, **fields: Any) -> str:
    """A line ahv prints itself rather than logs (`ahv listening on http://HOST:PORT` on
    stdout, a refused start on stderr): `msg` as it is in text mode; in json mode one JSON log
    line with `msg` in it, as under systemd stdout and stderr go to the same journal and
    every line there must parse."""
    if log_format != "json":
        return msg
    record = logging.LogRecord("ahv", level, "", 0, msg, None, None)
    record.__dict__.update(fields)
    return JsonFormatter().format(record)


def setup_logging(
    log_format: str = "text", level: str = "info", *, stream: TextIO | None = None
) -> LogSetup:
    """Route the root logger (and Python warnings) through one queue to `stream`."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    writer = _Writer(records, stream or sys.stderr, make_formatter(log_format))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_QueueHandler(records))
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a warning is one more line of the chosen format
    writer.start()
    return LogSetup(writer)
