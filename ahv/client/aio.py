"""`AsyncClient`: ahv's HTTP API on aiohttp, typed.

async with AsyncClient("http://gpu-box:2022", "my-key") as ahv:
    job = await ahv.submit("upscale", {"image_url": url, "scale": 2})
    job = await ahv.wait(job.job_id)
    print(job.status, job.result.url if job.result else job.error)
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import msgspec

from ahv import __version__
from ahv.client.sse import iter_events
from ahv.client.types import AhvClientError, Job, JobEvent, JobPage, error_from_response

_JOB = msgspec.json.Decoder(Job)
_PAGE = msgspec.json.Decoder(JobPage)
# `GET /v1/jobs` takes at most this many per page.
MAX_PAGE = 200


class _Hello(msgspec.Struct):
    resumed: bool = False  # a server that does not say so did not resume


def _resumed(hello: str | bytes) -> bool:
    try:
        return msgspec.json.decode(hello, type=_Hello).resumed
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False


class _Deleted(msgspec.Struct):
    job_id: str


def _is_transient(exc: AhvClientError) -> bool:
    """No answer, or a gateway's or a draining server's: worth asking again."""
    return exc.code in ("connection_error", "timeout") or exc.status in (502, 503, 504)


class AsyncClient:
    """One server, one API key. Errors raise AhvClientError (the server's code and message;
    `connection_error` or `timeout` with status 0 when no answer came). `timeout_s` bounds
    each request; event streams are bounded by their caller instead."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"X-API-Key": api_key, "User-Agent": f"ahv-client/{__version__}"}
        self._timeout_s = timeout_s
        self._session = session
        self._own_session = session is None
        # None: not known yet; False: this server has no events endpoint (wait() polls).
        self._events_supported: bool | None = None
        # Whether the server has ever answered this client: from then on wait() takes no
        # answer for a restart and waits, while a wrong URL still fails at once.
        self._reached = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (aiohttp wants one).
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        all_headers = {**self._headers, **(headers or {})}
        data = None
        if body is not None:
            data = msgspec.json.encode(body)
            all_headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(
                method,
                self.base_url + path,
                data=data,
                params=params,
                headers=all_headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            ) as response:
                self._reached = True
                raw = await response.read()
                if response.status >= 400:
                    retry_after = response.headers.get("Retry-After")
                    raise error_from_response(response.status, raw, retry_after)
                return raw
        except aiohttp.ClientError as exc:
            raise AhvClientError("connection_error", f"{method} {path}: {exc}") from exc
        except TimeoutError as exc:
            raise AhvClientError("timeout", f"{method} {path}: no answer in time") from exc

    # -- jobs ----------------------------------------------------------------------------------

    async def submit(
        self,
        task: str,
        payload: dict[str, Any],
        *,
        webhook_url: str | None = None,
        priority: int | None = None,
        webhook_events: builtins.list[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """`POST /v1/jobs`. With `idempotency_key`, sending the same request again (after a
        timeout, say) returns the same job instead of making a second one."""
        body: dict[str, Any] = {"task": task, "payload": payload}
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        if priority is not None:
            body["priority"] = priority
        if webhook_events is not None:
            body["webhook_events"] = webhook_events
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return _JOB.decode(await self._call("POST", "/v1/jobs", body=body, headers=headers))

    async def get(self, job_id: str) -> Job:
        return _JOB.decode(await self._call("GET", f"/v1/jobs/{job_id}"))

    async def cancel(self, job_id: str) -> Job:
        """Queued: canceled at once; running: stops at its next checkpoint (the returned
        document may still say `running`; `wait` for the end)."""
        return _JOB.decode(await self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    async def delete(self, job_id: str) -> None:
        """Cancels the job if needed, then removes it and its files."""
        await self._call("DELETE", f"/v1/jobs/{job_id}")

    async def list_page(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of `GET /v1/jobs`, newest first."""
        params = {"limit": str(limit)}
        for name, value in (("status", status), ("task", task), ("cursor", cursor)):
            if value is not None:
                params[name] = value
        return _PAGE.decode(await self._call("GET", "/v1/jobs", params=params))

    async def list(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        limit: int | None = None,
        page_size: int = 100,
    ) -> AsyncGenerator[Job, None]:
        """Every visible job (newest first, at most `limit`), page after page."""
        cursor: str | None = None
        left = limit
        while left is None or left > 0:
            size = min(page_size, MAX_PAGE) if left is None else min(page_size, MAX_PAGE, left)
            page = await self.list_page(status=status, task=task, limit=size, cursor=cursor)
            for job in page.jobs:
                yield job
            if left is not None:
                left -= len(page.jobs)
            if page.next_cursor is None or not page.jobs:
                return
            cursor = page.next_cursor

    # -- events and waiting --------------------------------------------------------------------

    async def events(
        self,
        job_id: str | None = None,
        *,
        task: str | None = None,
        status: str | None = None,
        last_event_id: str | None = None,
    ) -> AsyncGenerator[JobEvent, None]:
        """The server's event stream: with `job_id`, that job's documents (the current one
        first) until its final status, then the iterator ends; without, every visible job's
        changes (`task`/`status` filter them) and deletions, until the caller stops.

        `last_event_id` (the `id` of the last event received, after a broken stream): the
        server first sends the current document of each job that changed since (deletions
        too), then goes on live. When it cannot (an id from before a restart of the server,
        or from too long ago) the first event is of type "resync": re-list with `list()`.
        A job's stream needs no id: it always opens with the job's current document."""
        if job_id is not None:
            path, params = f"/v1/jobs/{job_id}/events", {}
        else:
            path = "/v1/events"
            params = {k: v for k, v in (("task", task), ("status", status)) if v is not None}
        headers = {**self._headers, "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout_s)
        try:
            async with self._http().get(
                self.base_url + path, params=params, headers=headers, timeout=timeout
            ) as response:
                self._reached = True
                if response.status >= 400:
                    raw = await response.read()
                    retry_after = response.headers.get("Retry-After")
                    raise error_from_response(response.status, raw, retry_after)
                if response.content_type != "text/event-stream":
                    raise AhvClientError(
                        "not_an_event_stream",
                        f"GET {path} answered {response.content_type}",
                        response.status,
                    )
                async for sse in iter_events(response.content.iter_any()):
                    if sse.event == "hello" and job_id is None and last_event_id is not None:
                        if not _resumed(sse.data):
                            yield JobEvent(type="resync", job_id="")
                    elif sse.event == "job":
                        job = _JOB.decode(sse.data)
                        yield JobEvent(type="job", job_id=job.job_id, job=job, id=sse.id)
                    elif sse.event == "deleted":
                        gone = msgspec.json.decode(sse.data, type=_Deleted)
                        yield JobEvent(type="deleted", job_id=gone.job_id, id=sse.id)
        except aiohttp.ClientError as exc:
            raise AhvClientError("connection_error", f"GET {path}: {exc}") from exc

    async def wait(
        self, job_id: str, timeout_s: float = 600.0, poll_interval_s: float = 1.0
    ) -> Job:
        """The job's document once it is final (succeeded, failed, rejected, canceled).
        Follows the job's event stream where the server has one, else (or when the stream
        breaks off) polls every `poll_interval_s`. Once the server has answered this client, a
        server that goes away for a while (a restart: jobs survive it) is waited for.
        TimeoutError after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                job = await self._wait_streamed(job_id)
                while job is None or not job.is_final:
                    try:
                        job = await self.get(job_id)
                    except AhvClientError as exc:
                        if not (self._reached and _is_transient(exc)):
                            raise
                    if job is None or not job.is_final:
                        await asyncio.sleep(poll_interval_s)
                return job
        except TimeoutError:
            raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s") from None

    async def _wait_streamed(self, job_id: str) -> Job | None:
        if self._events_supported is False:
            return None
        last: Job | None = None
        try:
            # aclosing: leaving the loop early closes the stream now, not at garbage collection.
            async with contextlib.aclosing(self.events(job_id)) as events:
                async for event in events:
                    self._events_supported = True
                    last = event.job or last
                    if last is not None and last.is_final:
                        return last
        except AhvClientError as exc:
            # `not_found` is an unknown endpoint (a server without events); an unknown job
            # is `job_not_found` and goes up to the caller. No answer, or a gateway's or a
            # draining server's (a reverse proxy says 502 while ahv restarts): polled out as
            # wait() polls them out.
            if exc.status in (404, 405) and exc.code in ("not_found", "method_not_allowed"):
                self._events_supported = False
            elif not _is_transient(exc):
                raise
        return None
