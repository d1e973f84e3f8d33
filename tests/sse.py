"""A small server-sent-events reader for tests, over a real aiohttp response: it parses the
wire format itself (fields, comments, blank-line-terminated messages), so the tests check
what goes over the wire, not what a library makes of it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec


@dataclass
class Message:
    event: str | None  # None for a comment
    id: int | None
    data: bytes
    comment: str | None = None

    @property
    def json(self) -> dict[str, Any]:
        return dict(msgspec.json.decode(self.data))


class SseReader:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout_s: float = 10) -> Message | None:
        """The next message or comment; None at the end of the stream."""
        return await asyncio.wait_for(self._read(), timeout_s)

    async def _read(self) -> Message | None:
        fields: dict[str, str] = {}
        comment: str | None = None
        while True:
            raw = await self.response.content.readline()
            if not raw:
                assert not fields and comment is None, f"stream ended mid-message: {fields}"
                return None
            line = raw.decode().rstrip("\n")
            if line == "":
                if comment is not None and not fields:
                    return Message(None, None, b"", comment=comment)
                event_id = fields.get("id")
                return Message(
                    fields.get("event", "message"),
                    None if event_id is None else int(event_id),
                    fields.get("data", "").encode(),
                )
            if line.startswith(":"):
                comment = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")

    async def events(self, timeout_s: float = 10) -> list[Message]:
        """Every event (no comments) up to the end of the stream."""
        found: list[Message] = []
        while True:
            message = await self.next(timeout_s)
            if message is None:
                return found
            if message.event is not None:
                found.append(message)

    async def next_event(self, timeout_s: float = 10) -> Message:
        """The next event, skipping comments; fails at the end of the stream."""
        while True:
            message = await self.next(timeout_s)
            assert message is not None, "the stream ended"
            if message.event is not None:
                return message
