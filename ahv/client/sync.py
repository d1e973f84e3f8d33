"""`Client`: the same API for code without an event loop.

It runs an AsyncClient on a private event loop in a daemon thread and waits for each call, so
there is one implementation of the protocol and no second HTTP library.

    with Client("http://gpu-box:2022", "my-key") as ahv:
        job = ahv.wait(ahv.submit("upscale", {"image_url": url}).job_id)
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from ahv.client.aio import AsyncClient
from ahv.client.types import Job, JobEvent, JobPage

T = TypeVar("T")


class Client:
    """Blocking twin of AsyncClient (same methods and errors); safe to share between
    threads. Close it (or use `with`) to stop its thread."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 30.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ahv-client", daemon=True
        )
        self._thread.start()
        self._async = AsyncClient(base_url, api_key, timeout_s=timeout_s)
        self.base_url = self._async.base_url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C in the caller's thread: stop the call on the loop too.
            future.cancel()
            raise

    def _iterate(self, source: AsyncIterator[T]) -> Iterator[T]:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(source)
            except StopAsyncIteration:
                return False, None

        try:
            while True:
                more, item = self._run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            if not self._loop.is_closed():
                closing = asyncio.run_coroutine_threadsafe(_aclose(source), self._loop)
                try:
                    closing.result()
                except (concurrent.futures.CancelledError, RuntimeError):
                    pass

    def submit(
        self,
        task: str,
        payload: dict[str, Any],
        *,
        webhook_url: str | None = None,
        priority: int | None = None,
        webhook_events: builtins.list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        return self._run(
            self._async.submit(
                task,
                payload,
                webhook_url=webhook_url,
                priority=priority,
                webhook_events=webhook_events,
                idempotency_key=idempotency_key,
            )
        )

    def get(self, job_id: str) -> Job:
        return self._run(self._async.get(job_id))

    def wait(self, job_id: str, timeout_s: float = 600.0, poll_interval_s: float = 1.0) -> Job:
        return self._run(self._async.wait(job_id, timeout_s, poll_interval_s))

    def cancel(self, job_id: str) -> Job:
        return self._run(self._async.cancel(job_id))

    def delete(self, job_id: str) -> None:
        self._run(self._async.delete(job_id))

    def list_page(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        return self._run(
            self._async.list_page(status=status, task=task, limit=limit, cursor=cursor)
        )

    def list(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        return self._iterate(
            self._async.list(status=status, task=task, limit=limit, page_size=page_size)
        )

    def events(
        self,
        job_id: str | None = None,
        *,
        task: str | None = None,
        status: str | None = None,
        last_event_id: str | None = None,
    ) -> Iterator[JobEvent]:
        return self._iterate(
            self._async.events(job_id, task=task, status=status, last_event_id=last_event_id)
        )


async def _aclose(source: AsyncIterator[Any]) -> None:
    close = getattr(source, "aclose", None)
    if close is not None:
        await close()
