"""A server-sent events reader (the WHATWG event-stream format) over raw byte chunks.

Lines are split here rather than with aiohttp's readline, whose line-length limit a large job
document could pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

import msgspec

MAX_LINE_BYTES = 16 * 1024 * 1024


class ServerSentEvent(msgspec.Struct, kw_only=True):
    event: str = "message"
    data: str = ""
    id: str | None = None


class SseParser:
    """Feed it lines (without their end of line); it returns an event at each blank line that
    ends one. Comments (`: keepalive`) and unknown fields are skipped, as the format asks."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None

    def feed_line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if self._id is not None:
            self.last_id = self._id
        data, event = self._data, self._event
        self._data, self._event, self._id = [], "", None
        if not data:
            return None
        return ServerSentEvent(event=event or "message", data="\n".join(data), id=self.last_id)


async def iter_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[ServerSentEvent]:
    """The events of a stream given as byte chunks cut anywhere (also inside a line or a
    UTF-8 sequence); lines end with LF, CRLF or CR."""
    parser = SseParser()
    buffer = b""
    pending_cr = False
    async for chunk in chunks:
        if pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF cut between two chunks
        pending_cr = False
        buffer += chunk
        lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if buffer.endswith(b"\r"):
            pending_cr = True
        buffer = lines.pop()
        if len(buffer) > MAX_LINE_BYTES:
            raise ValueError(f"event stream line longer than {MAX_LINE_BYTES} bytes")
        for raw in lines:
            event = parser.feed_line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                yield event
