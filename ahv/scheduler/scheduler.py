"""Claims queued jobs onto free backend slots and runs them.

Each slot of each backend is one asyncio worker: it claims the best queued job of a task its
backend serves, runs the task (blocking work goes to threads), and writes the final state
together with the job's webhook event. Cancel, timeout and shutdown all stop a running job
the same way: the job's context is told to stop, and the task notices at its next checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aiohttp
import msgspec
from msgspec import UNSET, UnsetType

from ahv.api_types import FileEntry, JobResult
from ahv.config import BackendConfig, Config
from ahv.errors import AhvError, JobCanceled
from ahv.jobs import CANCELED, FAILED, QUEUED, REJECTION_CODES, RUNNING, SUCCEEDED, JobRow
from ahv.netguard import AddressPolicy
from ahv.scheduler.predict import Predictor
from ahv.store import Store
from ahv.tasks.base import TaskContext, TaskOutput, TaskSpec
from ahv.timeutil import now_us
from ahv.webhooks import WebhookSender

if TYPE_CHECKING:
    from ahv.models.sessions import SessionCache
    from ahv.providers.hub import ProviderHub

log = logging.getLogger(__name__)


@dataclass
class Backend:
    config: BackendConfig
    tasks: list[str]
    busy: dict[int, str] = field(default_factory=dict)  # slot number -> job id

    @property
    def kind(self) -> str:
        if self.config.device.startswith("provider:"):
            return "provider"
        return "cuda" if self.config.device.startswith("cuda") else "cpu"


@dataclass
class _Running:
    job: JobRow
    ctx: TaskContext


def _fields(job: JobRow, event: str | None = None) -> dict[str, Any]:
    """The structured fields of a job's log line (JSON logs, ahv/logging_setup.py)."""
    fields: dict[str, Any] = {"job_id": job.id, "task": job.task}
    if event is not None:
        fields["event"] = event
    return fields


def _retrieve(future: asyncio.Future[TaskOutput]) -> None:
    # The outcome is read in _await_runner, or deliberately dropped for a task that was
    # abandoned; either way asyncio should not report it as never retrieved.
    if not future.cancelled():
        future.exception()


class Scheduler:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        registry: dict[str, TaskSpec],
        predictor: Predictor,
        webhooks: WebhookSender,
        http: aiohttp.ClientSession,
        policy: AddressPolicy,
        files_dir: Path,
        public_url: Callable[[], str],
        on_finished: Callable[[JobRow], None],
        sessions: SessionCache | None = None,
        providers: ProviderHub | None = None,
        on_change: Callable[[Any, JobRow], None] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._registry = registry
        self._predictor = predictor
        self._webhooks = webhooks
        self._http = http
        self._policy = policy
        self._files_dir = files_dir
        self._public_url = public_url
        self._on_finished = on_finished
        self._sessions = sessions
        # Told of each change of a job but its end (claimed, progress, requeued): the live
        # events, metrics and history (ahv/watch.py); the end goes through on_finished.
        self._on_change = on_change or (lambda kind, job: None)
        self._providers = providers
        # Each configured cloud provider is one more backend, serving only its own tasks.
        extra = providers.backend_configs() if providers is not None else []
        self.backends = [
            Backend(b, [t for t in b.tasks if t in registry]) for b in [*config.backends, *extra]
        ]
        total_slots = sum(b.config.slots for b in self.backends)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, total_slots), thread_name_prefix="ahv-work"
        )
        self._executor_size = max(1, total_slots)
        self._old_executors: list[ThreadPoolExecutor] = []  # outgrown on reload; joined on stop
        self._slot_workers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._claiming = True
        self._workers: list[asyncio.Task[None]] = []
        self._running: dict[str, _Running] = {}
        # Cancels that arrived between a job's claim and the start of its run.
        self._early_cancels: set[str] = set()
        self._background: set[asyncio.Future[None]] = set()

    # -- capacity, for ETAs and /diag ----------------------------------------------------

    def slots_for(self, task: str) -> int:
        return sum(b.config.slots for b in self.backends if task in b.tasks)

    def served_tasks(self, config: Config | None = None) -> set[str]:
        """The tasks some backend serves now or, given a reloaded config, after
        apply_config(config): the same per-backend rule (provider backends keep theirs)."""
        wanted = {b.name: b for b in (config or self._config).backends}
        served: set[str] = set()
        for backend in self.backends:
            tasks = wanted.get(backend.config.name, backend.config).tasks
            served.update(t for t in tasks if t in self._registry)
        return served

    def eta_us(self, task: str, queue_position: int, start_us: int) -> int:
        wait_s = self._predictor.wait_s(task, queue_position, self.slots_for(task))
        return start_us + int(wait_s * 1e6)

    @property
    def running_count(self) -> int:
        return len(self._running)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.recover()
        for backend in self.backends:
            for slot in range(1, backend.config.slots + 1):
                self._start_worker(backend, slot)

    def _start_worker(self, backend: Backend, slot: int) -> None:
        worker = asyncio.create_task(self._worker(backend, slot))
        self._workers.append(worker)
        self._slot_workers[(backend.config.name, slot)] = worker

    def apply_config(self, config: Config) -> None:
        """Reload: jobs claimed from now on get the new settings; running ones keep theirs.
        More slots start workers at once; fewer let the extra workers finish their job and
        then stop (a worker checks its slot number against the count before each claim)."""
        self._config = config
        new = {b.name: b for b in config.backends}
        for backend in self.backends:
            backend.config = new.get(backend.config.name, backend.config)
            backend.tasks = [t for t in backend.config.tasks if t in self._registry]
        total_slots = sum(b.config.slots for b in self.backends)
        if total_slots > self._executor_size:  # the thread pool cannot grow in place
            self._old_executors.append(self._executor)
            self._executor = ThreadPoolExecutor(
                max_workers=total_slots, thread_name_prefix="ahv-work"
            )
            self._executor_size = total_slots
        if self._claiming:
            for backend in self.backends:
                for slot in range(1, backend.config.slots + 1):
                    worker = self._slot_workers.get((backend.config.name, slot))
                    if worker is None or worker.done():
                        self._start_worker(backend, slot)
        self._wake.set()  # idle workers above the new count stop now

    async def recover(self) -> None:
        """After a crash: jobs left `running` are requeued, or failed with `worker_lost`
        when their attempts are spent (or a cancel was asked for)."""
        for job in await self._store.running_jobs():
            if job.cancel_requested:
                await self._finish(job, CANCELED, None, None, expect=RUNNING)
            elif job.attempts < job.max_attempts:
                log.warning(
                    "job %s: requeued after a crash (attempt %d)",
                    job.id,
                    job.attempts,
                    extra=_fields(job, "requeued"),
                )
                await self._store.requeue(job, run_after_us=0, refund_attempt=False)
            else:
                error = {
                    "code": "worker_lost",
                    "message": f"the server stopped while running this job, "
                    f"{job.attempts} of {job.max_attempts} attempts spent",
                }
                await self._finish(job, FAILED, None, error, expect=RUNNING)

    async def stop(self, grace_s: float) -> None:
        """Stop claiming, give running jobs `grace_s` to finish, then requeue the rest."""
        self._claiming = False
        self._wake.set()
        if self._workers:
            busy = [w for w in self._workers if not w.done()]
            await asyncio.wait(busy, timeout=grace_s)
        for running in list(self._running.values()):
            running.ctx.cancel("shutdown")
        await asyncio.gather(*self._workers, return_exceptions=True)
        for executor in (*self._old_executors, self._executor):
            executor.shutdown(wait=True)

    def wake(self) -> None:
        self._wake.set()

    # -- cancel ----------------------------------------------------------------------------

    async def cancel(self, job: JobRow) -> JobRow:
        """Cancel a job: at once if queued; at its next checkpoint if running."""
        if job.status == QUEUED:
            done = await self._finish(job, CANCELED, None, None, expect=QUEUED)
            if done is not None:
                return done
            job = await self._store.get(job.id) or job
        if job.status == RUNNING:
            await self._store.request_cancel(job.id)
            log.info("job %s: cancel requested", job.id, extra=_fields(job, "cancel_requested"))
            running = self._running.get(job.id)
            if running is not None:
                running.ctx.cancel("canceled")
            else:
                self._early_cancels.add(job.id)
        return await self._store.get(job.id) or job

    # -- the slot workers -----------------------------------------------------------------

    async def _worker(self, backend: Backend, slot: int) -> None:
        slot_name = f"{backend.config.name}-{slot}"
        while self._claiming and slot <= backend.config.slots:
            poll_s = self._config.queue.poll_interval_s
            self._wake.clear()
            try:
                job = await self._store.claim(
                    backend.tasks,
                    slot_name,
                    now_us(),
                    lambda task: self.eta_us(task, 0, now_us()),
                )
            except Exception:
                log.exception("claim failed on %s", slot_name)
                job = None
            if job is None:
                if slot > backend.config.slots:
                    break  # fewer slots since the last claim began (reload)
                try:
                    await asyncio.wait_for(self._wake.wait(), poll_s)
                except TimeoutError:
                    pass
                continue
            backend.busy[slot] = job.id
            self._on_change("claimed", job)
            try:
                await self._run(job, backend, slot_name)
            except Exception:
                log.exception("job %s: bookkeeping failed", job.id)
            finally:
                backend.busy.pop(slot, None)

    async def _run(self, job: JobRow, backend: Backend, slot_name: str) -> None:
        spec = self._registry[job.task]
        loop = asyncio.get_running_loop()
        ctx = TaskContext(
            job_id=job.id,
            task=job.task,
            backend=slot_name,
            device=backend.config.device,
            config=self._config,
            files_dir=self._files_dir,
            executor=self._executor,
            http=self._http,
            policy=self._policy,
            loop=loop,
            on_progress=lambda percent: self._progress(job, percent),
            attempt=job.attempts,
            # On CUDA each slot has its own sessions, hence its own stream (ahv/models/sessions.py).
            sessions=self._sessions.for_slot(slot_name) if self._sessions is not None else None,
            providers=self._providers,
        )
        self._running[job.id] = _Running(job, ctx)
        if job.id in self._early_cancels or job.cancel_requested:
            self._early_cancels.discard(job.id)
            ctx.cancel("canceled")
        self._webhooks.send_ephemeral(job, "job.started")
        timeout_s = self._config.queue.timeouts_s.get(job.task, self._config.queue.task_timeout_s)
        log.info(
            "job %s: running %s on %s (attempt %d)",
            job.id,
            job.task,
            slot_name,
            job.attempts,
            extra={
                "job_id": job.id,
                "task": job.task,
                "backend": slot_name,
                "attempt": job.attempts,
                "event": "started",
            },
        )
        runner: asyncio.Future[TaskOutput] | None = None
        try:
            payload = msgspec.json.decode(job.payload, type=spec.payload_type)
            runner = asyncio.ensure_future(spec.run(ctx, payload))
            runner.add_done_callback(_retrieve)
            ctx.runner = runner
            output = await self._await_runner(runner, ctx, timeout_s)
        except JobCanceled:
            await self._stopped(job, ctx)
        except TimeoutError:
            error = {"code": "timeout", "message": f"the job ran past its {timeout_s:g} s limit"}
            await self._failed(job, ctx, error)
        except AhvError as exc:
            if exc.transient and job.attempts < job.max_attempts:
                await self._retry(job, ctx, exc)
            else:
                await self._failed(job, ctx, exc.to_dict())
        except Exception as exc:
            log.exception("job %s: task %s crashed", job.id, job.task, extra=_fields(job))
            error = {"code": "internal_error", "message": f"{type(exc).__name__} in {job.task}"}
            await self._failed(job, ctx, error)
        else:
            await self._succeeded(job, ctx, output)
        finally:
            self._running.pop(job.id, None)
        if runner is not None and not runner.done() and self._claiming:
            # The job has its final status, but its thread is still busy: the slot stays
            # taken until it ends, so the backend is never oversubscribed.
            await asyncio.wait([runner])

    async def _await_runner(
        self, runner: asyncio.Future[TaskOutput], ctx: TaskContext, timeout_s: float
    ) -> TaskOutput:
        """The task's result. On timeout, cancel or shutdown the task is told to stop; if it
        has not stopped `queue.cancel_wait_s` later (a task that skips its checkpoints), the
        job ends anyway, so that no job is left `running` for ever."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        give_up_at = math.inf
        while not runner.done():
            now = loop.time()
            if ctx.cancel_reason is None and now >= deadline:
                ctx.cancel("timeout")
            if ctx.cancel_reason is not None:
                give_up_at = min(give_up_at, now + self._config.queue.cancel_wait_s)
                if now >= give_up_at:
                    log.warning(
                        "job %s: the task did not stop; ending the job",
                        ctx.job_id,
                        extra={"job_id": ctx.job_id, "task": ctx.task},
                    )
                    break
            stop_signal: asyncio.Future[Any] = asyncio.ensure_future(ctx.stopping.wait())
            try:
                await asyncio.wait(
                    [cast("asyncio.Future[Any]", runner), stop_signal],
                    timeout=min(deadline, give_up_at) - now,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                stop_signal.cancel()
        if runner.done() and (
            ctx.cancel_reason is None  # its result, or what it raised
            or (not runner.cancelled() and runner.exception() is None)  # done as told to stop
        ):
            return runner.result()
        if ctx.cancel_reason == "timeout":
            raise TimeoutError
        raise JobCanceled(ctx.cancel_reason or "canceled")

    # -- outcomes --------------------------------------------------------------------------

    async def _succeeded(self, job: JobRow, ctx: TaskContext, output: TaskOutput) -> None:
        meta = {**output.meta, "backend": ctx.backend}
        url = None if output.filename is None else f"{self._public_url()}/files/{output.filename}"
        files: list[FileEntry] | UnsetType = UNSET
        if output.files:  # tasks with several results: each file with its own meta
            files = [
                FileEntry(
                    url=f"{self._public_url()}/files/{f.filename}", filename=f.filename, meta=f.meta
                )
                for f in output.files
            ]
        # Built through the documented type, stored (and later sent) as its JSON object.
        result: dict[str, Any] = msgspec.to_builtins(
            JobResult(
                ok=True, status=SUCCEEDED, url=url, filename=output.filename, meta=meta, files=files
            )
        )
        finished = await self._finish(job, SUCCEEDED, result, None, expect=RUNNING, progress=100)
        if finished is None:  # deleted while it ran: its files go too
            self._remove_files(ctx)
        elif finished.duration_s is not None:
            self._predictor.record(job.task, finished.duration_s)

    async def _failed(self, job: JobRow, ctx: TaskContext, error: dict[str, Any]) -> None:
        self._remove_files(ctx)
        status = "rejected" if error.get("code") in REJECTION_CODES else FAILED
        await self._finish(job, status, None, error, expect=RUNNING)

    async def _stopped(self, job: JobRow, ctx: TaskContext) -> None:
        self._remove_files(ctx)
        if ctx.cancel_reason == "shutdown":
            log.info(
                "job %s: interrupted by shutdown, requeued", job.id, extra=_fields(job, "requeued")
            )
            await self._store.requeue(job, run_after_us=0, refund_attempt=True)
            await self._requeued(job.id)
            return
        await self._finish(job, CANCELED, None, None, expect=RUNNING)

    async def _retry(self, job: JobRow, ctx: TaskContext, exc: AhvError) -> None:
        self._remove_files(ctx)
        queue = self._config.queue
        delay_s = min(queue.retry_max_s, queue.retry_base_s * 2 ** (job.attempts - 1))
        delay_s *= random.uniform(0.5, 1.5)
        if exc.retry_after_s is not None:  # the provider's Retry-After, up to retry_max_s
            delay_s = max(delay_s, min(exc.retry_after_s, queue.retry_max_s))
        log.info(
            "job %s: %s, retrying in %.1f s",
            job.id,
            exc.code,
            delay_s,
            extra={
                **_fields(job, "retried"),
                "error_code": exc.code,
                "attempt": job.attempts,
                "retry_in_s": round(delay_s, 3),
            },
        )
        retried = msgspec.structs.replace(job, error=exc.to_dict())
        await self._store.requeue(
            retried, run_after_us=now_us() + int(delay_s * 1e6), refund_attempt=False
        )
        await self._requeued(job.id)

    async def _requeued(self, job_id: str) -> None:
        job = await self._store.get(job_id)
        if job is not None and job.status == QUEUED:
            self._on_change("requeued", job)

    async def _finish(
        self,
        job: JobRow,
        status: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        *,
        expect: str,
        progress: int | None = None,
    ) -> JobRow | None:
        final = msgspec.structs.replace(
            job,
            status=status,
            result=result,
            error=error,
            finished_us=now_us(),
            progress=job.progress if progress is None else progress,
        )
        events = self._webhooks.finished_events(final)
        if not await self._store.finish(final, events, expect_status=expect):
            return None
        code = None if error is None else error.get("code")
        log.info(
            "job %s: %s%s%s",
            job.id,
            status,
            "" if code is None else f" ({code})",
            "" if final.duration_s is None else f" in {final.duration_s:.3f} s",
            extra={
                **_fields(job, "finished"),
                "status": status,
                "error_code": code,
                "duration_s": final.duration_s,
                "attempt": job.attempts,
            },
        )
        self._on_finished(final)
        if events:
            self._webhooks.wake()
        return final

    def _progress(self, job: JobRow, percent: int) -> None:
        running = self._running.get(job.id)
        if running is None or percent <= running.job.progress:
            return
        running.job = msgspec.structs.replace(running.job, progress=percent)
        self._on_change("progress", running.job)
        write = asyncio.ensure_future(self._store.set_progress(job.id, percent))
        self._background.add(write)
        write.add_done_callback(self._background.discard)
        self._webhooks.send_ephemeral(running.job, "job.progress")

    def _remove_files(self, ctx: TaskContext) -> None:
        for name in ctx.saved_files:
            (self._files_dir / name).unlink(missing_ok=True)
            (self._files_dir / f"{name}.part").unlink(missing_ok=True)
        ctx.saved_files.clear()
