"""Webhook delivery: a durable outbox for `job.finished`, best effort for the rest.

`job.finished` rows are written in the same transaction as the job's final status (see
Store.finish) and delivered at least once, across restarts, with the Standard Webhooks
headers. Every delivery runs in its own task with its own timeout, and no host gets more than
a few deliveries in flight, so a slow or dead receiver never holds up jobs, cancel or other
receivers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import functools
import hashlib
import hmac
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import cast

import aiohttp
import msgspec
import yarl

from ahv.api_types import EventName, WebhookEnvelope
from ahv.config import Config
from ahv.errors import AhvError
from ahv.ids import new_id
from ahv.jobs import JobRow, job_document
from ahv.netguard import AddressPolicy, check_url
from ahv.retention import expires_us
from ahv.store import OutboxEvent, Store
from ahv.timeutil import iso, now_us

log = logging.getLogger(__name__)

FINISHED = "job.finished"
EPHEMERAL_EVENTS = frozenset({"job.started", "job.progress"})
EVENTS = frozenset({FINISHED, *EPHEMERAL_EVENTS})
_PER_HOST_IN_FLIGHT = 8
_RETRY_STATUSES = frozenset({408, 425, 429})


def secret_bytes(secret: str) -> bytes:
    """Standard Webhooks secrets look like `whsec_<base64>`; other strings are used as-is."""
    if secret.startswith("whsec_"):
        with contextlib.suppress(ValueError):
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    return secret.encode()


def sign(secret: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def event_body(event: str, event_id: str, job: JobRow, expires_us: int | None = None) -> bytes:
    envelope = WebhookEnvelope(event=cast(EventName, event), event_id=event_id, ts=iso(now_us()))
    return msgspec.json.encode(
        {
            **msgspec.to_builtins(envelope),
            **msgspec.to_builtins(job_document(job, expires_us=expires_us)),
        }
    )


class _BodyTask(msgspec.Struct):
    task: str = ""


_BODY_TASK = msgspec.json.Decoder(_BodyTask)


def _task_of(body: bytes) -> str:
    """The job's task, for the delivery's log line (`task` is on every job line): the body
    is the job's document, so it is at hand without a read of the job."""
    try:
        return _BODY_TASK.decode(body).task
    except msgspec.DecodeError:
        return ""


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class WebhookSender:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        http: aiohttp.ClientSession,
        policy: AddressPolicy,
        on_attempt: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config.webhooks
        # Told of each job.finished attempt's outcome: delivered, failed_attempt, gave_up.
        self._on_attempt = on_attempt or (lambda result: None)
        self._store = store
        self._http = http
        self._policy = policy
        self._secrets = {key.name: secret_bytes(key.webhook_secret) for key in config.keys}
        self._retention = config.retention
        self._wake = asyncio.Event()
        self._running = False
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._host_in_flight: Counter[str] = Counter()
        self._ephemeral: set[asyncio.Task[None]] = set()
        self._last_progress_s: dict[str, float] = {}

    def apply_config(self, config: Config) -> None:
        """Reload: new settings and secrets for deliveries from now on. A removed key's
        secret is kept, so the webhooks of its jobs still pending are signed as promised."""
        self._config = config.webhooks
        self._retention = config.retention
        self._secrets.update({k.name: secret_bytes(k.webhook_secret) for k in config.keys})

    # -- events ----------------------------------------------------------------------------

    def finished_events(self, job: JobRow) -> list[OutboxEvent]:
        self._last_progress_s.pop(job.id, None)
        if not job.webhook_url:
            return []
        event_id = new_id()
        now = now_us()
        return [
            OutboxEvent(
                event_id=event_id,
                job_id=job.id,
                owner=job.owner,
                event=FINISHED,
                url=job.webhook_url,
                host=yarl.URL(job.webhook_url).host or "",
                body=event_body(FINISHED, event_id, job, expires_us(self._retention, job)),
                next_attempt_us=now,
                created_us=now,
            )
        ]

    def send_ephemeral(self, job: JobRow, event: str) -> None:
        """`job.started` / `job.progress`: only when asked for, throttled, never retried."""
        if not job.webhook_url or event not in job.webhook_events:
            return
        if event == "job.progress":
            now = time.monotonic()
            if now - self._last_progress_s.get(job.id, 0.0) < self._config.progress_interval_s:
                return
            self._last_progress_s[job.id] = now
        event_id = new_id()
        body = event_body(event, event_id, job)
        task = asyncio.ensure_future(self._post_once(job.owner, job.webhook_url, event_id, body))
        self._ephemeral.add(task)
        task.add_done_callback(self._ephemeral.discard)

    # -- the delivery loop ---------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._running = True
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self, flush_s: float) -> None:
        """Deliver what is due for up to `flush_s`; the rest stays in the outbox for later."""
        deadline = time.monotonic() + flush_s
        while time.monotonic() < deadline:
            due = await self._store.outbox_due(
                now_us(), 1, set(self._in_flight), self._full_hosts()
            )
            if not due and not self._in_flight:
                break
            await asyncio.sleep(0.05)
        self._running = False
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        pending = [*self._in_flight.values(), *self._ephemeral]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _loop(self) -> None:
        while self._running:
            self._wake.clear()
            try:
                await self._dispatch_due()
                next_due = await self._store.outbox_next_due_us(
                    set(self._in_flight), self._full_hosts()
                )
            except Exception:
                log.exception("webhook outbox read failed")
                next_due = None
            wait_s = 1.0 if next_due is None else (next_due - now_us()) / 1e6
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(1.0, max(0.01, wait_s)))

    async def _dispatch_due(self) -> None:
        room = self._config.concurrency - len(self._in_flight)
        if room <= 0:
            return
        due = await self._store.outbox_due(now_us(), room, set(self._in_flight), self._full_hosts())
        for event in due:
            host = event.host
            if self._host_in_flight[host] >= _PER_HOST_IN_FLIGHT:
                continue  # filled up by an earlier event of this batch; next round
            self._host_in_flight[host] += 1
            task = asyncio.create_task(self._deliver(event))
            self._in_flight[event.id] = task
            task.add_done_callback(functools.partial(self._delivered, event.id, host))

    def _full_hosts(self) -> set[str]:
        return {h for h, n in self._host_in_flight.items() if n >= _PER_HOST_IN_FLIGHT}

    def _delivered(self, event_id: int, host: str, _: object) -> None:
        self._in_flight.pop(event_id, None)
        self._host_in_flight[host] -= 1
        if self._host_in_flight[host] <= 0:
            del self._host_in_flight[host]
        self._wake.set()

    async def _deliver(self, event: OutboxEvent) -> None:
        status, error, retry_after = await self._post(
            event.owner, event.url, event.event_id, event.body
        )
        event.attempts += 1
        event.last_status = status
        event.last_error = error
        retryable = error is not None and status is None  # timeouts, connection errors
        if status is not None:
            retryable = 300 <= status < 400 or status >= 500 or status in _RETRY_STATUSES
        if error == "url_not_allowed":
            retryable = False
        fields = {
            "job_id": event.job_id,
            "task": _task_of(event.body),
            "event_id": event.event_id,
            "webhook_event": event.event,
            "host": event.host,  # not the URL: its query may hold the receiver's token
            "status_code": status,
            "attempt": event.attempts,
        }
        delivered = status is not None and 200 <= status < 300
        delay_s = 0.0
        if delivered:
            event.state = "delivered"
            event.delivered_us = now_us()
        elif retryable and event.attempts < self._config.max_attempts:
            delay_s = self._backoff_s(event, retry_after)
            event.next_attempt_us = now_us() + int(delay_s * 1e6)
        else:
            event.state = "failed"
        # If shutdown cancels us before this write, the event stays pending and is sent
        # again after the restart: at least once, under the same webhook-id.
        if not await self._store.outbox_record(event):
            # POST /redeliver reset the event while this attempt was in flight: the reset
            # stands (due now, attempts from 0); _delivered wakes the loop to send it.
            log.info(
                "job %s: webhook %s attempt %d ended (%s); a redelivery was asked for "
                "meanwhile, sending again",
                event.job_id,
                event.event_id,
                event.attempts,
                f"HTTP {status}" if delivered else error,
                extra={**fields, "event": "webhook_redelivery_pending", "error": error},
            )
            self._on_attempt("delivered" if delivered else "failed_attempt")
        elif delivered:
            log.info(
                "job %s: webhook %s delivered (HTTP %s, attempt %d)",
                event.job_id,
                event.event_id,
                status,
                event.attempts,
                extra={**fields, "event": "webhook_delivered"},
            )
            self._on_attempt("delivered")
        elif event.state == "pending":
            log.info(
                "job %s: webhook %s attempt %d failed (%s), retrying in %.1f s",
                event.job_id,
                event.event_id,
                event.attempts,
                error,
                delay_s,
                extra={
                    **fields,
                    "event": "webhook_retry",
                    "error": error,
                    "retry_in_s": round(delay_s, 3),
                },
            )
            self._on_attempt("failed_attempt")
        else:
            log.warning(
                "job %s: webhook %s failed for good after %d attempts (%s)",
                event.job_id,
                event.event_id,
                event.attempts,
                error,
                extra={**fields, "event": "webhook_failed", "error": error},
            )
            self._on_attempt("gave_up")

    def _backoff_s(self, event: OutboxEvent, retry_after_s: float | None) -> float:
        base = self._config.retry_base_s * 2 ** (event.attempts - 1)
        delay: float = min(self._config.retry_max_s, base) * random.uniform(0.5, 1.5)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self._config.retry_after_max_s))
        return delay

    async def _post_once(self, owner: str, url: str, event_id: str, body: bytes) -> None:
        await self._post(owner, url, event_id, body)

    async def _post(
        self, owner: str, url: str, event_id: str, body: bytes
    ) -> tuple[int | None, str | None, float | None]:
        """One attempt: (HTTP status or None, error text or None, Retry-After seconds)."""
        secret = self._secrets.get(owner, b"")
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "ahv-webhooks",
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, event_id, timestamp, body),
        }
        timeout = aiohttp.ClientTimeout(total=self._config.timeout_s)
        try:
            await check_url(url, self._policy, field="webhook_url")
            async with self._http.post(
                url, data=body, headers=headers, allow_redirects=False, timeout=timeout
            ) as response:
                await response.content.read(65536)
                error = None if response.status < 300 else f"HTTP {response.status}"
                if 300 <= response.status < 400:
                    error = f"HTTP {response.status} redirect (not followed)"
                retry_after = _retry_after_s(response.headers.get("Retry-After"))
                return response.status, error, retry_after
        except AhvError as exc:
            return None, exc.code, None
        except TimeoutError:
            return None, f"timed out after {self._config.timeout_s:g} s", None
        except aiohttp.ClientError as exc:
            return None, f"connection failed: {type(exc).__name__}", None
        except OSError as exc:
            return None, f"connection failed: {exc.strerror or type(exc).__name__}", None
