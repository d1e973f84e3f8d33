"""The application's core, below HTTP: submit, look up, cancel and delete jobs, and own the
parts that run them (store, scheduler, webhook sender)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Annotated, Any

import msgspec

import ahv
from ahv.api_types import BackendReport, BatchingStats, HistoryBucket, JobDocument, Stats
from ahv.auth import Caller, KeyRing
from ahv.config import Config, KeyConfig
from ahv.diskguard import DiskGuard
from ahv.errors import AhvError, StartupError, invalid_payload
from ahv.ids import new_id
from ahv.jobs import QUEUED, RUNNING, JobRow, job_document
from ahv.models.registry import ModelRegistry
from ahv.models.sessions import SessionCache
from ahv.netguard import AddressPolicy, check_url, make_client_session
from ahv.providers.hub import ProviderHub
from ahv.retention import Sweeper, expires_us
from ahv.scheduler.predict import Predictor
from ahv.scheduler.scheduler import Scheduler
from ahv.store import IdempotencyConflict, OutboxEvent, Store
from ahv.tasks import TaskSpec, load_registry
from ahv.timeutil import now_us
from ahv.watch import JobWatch
from ahv.webhooks import EVENTS, FINISHED, WebhookSender

log = logging.getLogger(__name__)


class SubmitRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    task: str
    payload: msgspec.Raw = msgspec.Raw(b"{}")
    webhook_url: str | None = None
    priority: Annotated[int, msgspec.Meta(ge=0, le=9)] | None = None
    webhook_events: list[str] = []


def validation_message(exc: msgspec.ValidationError, prefix: str) -> str:
    """msgspec says "Expected `int`, got `str` - at `$.scale`"; we say
    "payload.scale: expected `int`, got `str`", naming the field first."""
    text = str(exc)
    problem, _, where = text.rpartition(" - at `")
    if not problem:
        problem, where = text, "$`"
    path = where.rstrip("`").removeprefix("$").lstrip(".")
    field = re.match(r"Object (missing required|contains unknown) field `(.+)`$", problem)
    if field:
        path = f"{path}.{field.group(2)}" if path else field.group(2)
        problem = "required field is missing" if "missing" in problem else "unknown field"
    joined = ".".join(p for p in (prefix, path) if p).replace(".[", "[")
    return f"{joined or 'body'}: {problem[:1].lower()}{problem[1:]}"


def _changed_key_names(old: list[KeyConfig], new: list[KeyConfig]) -> set[str]:
    """Names of keys removed, or whose key or role changed (names only: values are secret)."""

    def identity(key: KeyConfig) -> tuple[str, str]:
        digest = key.key_sha256 or hashlib.sha256(key.key.encode()).hexdigest()
        return digest, key.role

    now = {key.name: identity(key) for key in new}
    return {key.name for key in old if now.get(key.name) != identity(key)}


class Orchestrator:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry: dict[str, TaskSpec] = load_registry(config)
        data_dir = Path(config.server.data_dir)
        self.files_dir = data_dir / "files"
        self.store = Store(data_dir / "ahv.sqlite3", fsync=config.queue.fsync)
        self.keys = KeyRing(config.keys)
        self.policy = AddressPolicy(config.fetch.allowed_networks)
        # Model files and the ONNX Runtime sessions loaded from them (lazily, in job threads).
        self.models = ModelRegistry(config.models)
        self.sessions = SessionCache(
            self.models,
            gpu_mem_limit_mb=config.models.gpu_mem_limit_mb,
            require_gpu={b.device for b in config.backends if b.require_gpu},
        )
        # Cloud providers (ahv/providers/): the tasks each one runs, keys read at start.
        self.providers = ProviderHub(
            config,
            {n: s.provider(config) for n, s in self.registry.items() if s.provider is not None},
        )
        self.predictor = Predictor(
            {name: spec.default_predict_s for name, spec in self.registry.items()},
            config.queue.keep_durations,
        )
        self.draining = False
        self._drained = False
        self.seen_base_url = ""
        self._waiters: dict[str, list[asyncio.Future[JobRow]]] = {}
        self._scheduler: Scheduler | None = None
        self._webhooks: WebhookSender | None = None
        # Live event streams, metrics and stats history, fed by every job change.
        self.watch = JobWatch(
            store=self.store,
            document=self.document,
            version=ahv.__version__,
            tasks=sorted(self.registry),
            batch_sizes=self.sessions.batch_sizes,
        )
        self.disk = DiskGuard(data_dir)
        self.sweeper = Sweeper(
            self.store,
            self.files_dir,
            lambda: self.config.retention,
            on_purged=self.watch.deleted,  # event streams (the dashboard) drop the job
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._check_devices()  # first: a refused start leaves nothing open
        await self.providers.start()  # reads key files: a missing one refuses the start
        self.files_dir.mkdir(parents=True, exist_ok=True)
        for partial in self.files_dir.glob("*.part"):
            partial.unlink(missing_ok=True)  # outputs of jobs cut off by a crash
        for workdir in self.files_dir.glob(".video-*"):
            shutil.rmtree(workdir, ignore_errors=True)  # their downloaded inputs
        await self.store.open()
        self.predictor.seed(await self.store.recent_durations(self.config.queue.keep_durations))
        self._http = make_client_session(self.policy)
        self._webhooks = WebhookSender(
            config=self.config,
            store=self.store,
            http=self._http,
            policy=self.policy,
            on_attempt=self.watch.metrics.webhook_attempt,
        )
        self._scheduler = Scheduler(
            config=self.config,
            store=self.store,
            registry=self.registry,
            predictor=self.predictor,
            webhooks=self._webhooks,
            http=self._http,
            policy=self.policy,
            files_dir=self.files_dir,
            public_url=lambda: self.public_url,
            on_finished=self._on_finished,
            sessions=self.sessions,
            providers=self.providers,
            on_change=self.watch.changed,
        )
        await self._scheduler.start()
        self.watch.seed([key.name for key in self.config.keys])
        await self._webhooks.start()
        await self.sweeper.start()

    async def drain(self) -> None:
        """First half of a graceful stop, while HTTP still answers: refuse new jobs (503) and
        let running ones finish, requeueing those still running after the grace period."""
        self.draining = True
        if self._scheduler is not None and not self._drained:
            self._drained = True
            await self._scheduler.stop(self.config.server.shutdown_grace_s)

    async def stop(self) -> None:
        """Drain if not done yet, deliver due webhooks, close the store."""
        self.watch.hub.close()
        await self.drain()
        await self.sweeper.stop()
        if self._webhooks is not None:
            await self._webhooks.stop(self.config.webhooks.flush_on_shutdown_s)
        await self._http.close()
        await self.providers.close()
        await self.store.close()
        self.sessions.clear()

    def apply_config(self, config: Config) -> None:
        """A reloaded ahv.toml (SIGHUP), already cut down by ahv/reload.py to what may change
        while running: keys, queue and limit settings, webhooks, backend slots and tasks."""
        changed = _changed_key_names(self.config.keys, config.keys)
        retention_changed = config.retention != self.config.retention
        self.config = config
        if retention_changed:
            self.sweeper.kick()  # a shorter retention frees space now, not an interval later
        self.keys.replace(config.keys)
        if changed:
            # A removed key gets 401 from now on; its open event streams end too (and those
            # of a key whose secret or role changed: they reconnect with what holds now).
            ended = self.watch.hub.end_streams_of(changed)
            if ended:
                log.info(
                    "config reload: %d event streams of removed or changed keys ended",
                    ended,
                    extra={"event": "streams_ended", "streams": ended},
                )
        if self._webhooks is not None:
            self._webhooks.apply_config(config)
        if self._scheduler is not None:
            self._scheduler.apply_config(config)

    async def _check_devices(self) -> None:
        """Learn which providers each backend's device really runs (a trivial session, no
        model file needed). A `cuda:N` device running on CPU is degraded: a warning, shown
        in /diag/backends, or a refused start when a backend on it has `require_gpu`."""
        for device in sorted({b.device for b in self.config.backends}):
            providers, reason = await asyncio.to_thread(self.sessions.probe, device)
            if reason is None:
                log.info("device %s: %s", device, ", ".join(providers))
                continue
            strict = [b.name for b in self.config.backends if b.device == device and b.require_gpu]
            if strict:
                raise StartupError(f"backend {strict[0]!r} has require_gpu = true, but {reason}")
        # Hash the model files now, off the event loop; later checks reuse the digests.
        for name, problem in (await asyncio.to_thread(self._model_problems)).items():
            log.warning("model %s is unavailable: %s", name, problem)

    def _model_problems(self) -> dict[str, str]:
        problems = {name: self.models.problem(name) for name in self.models.names()}
        return {name: problem for name, problem in problems.items() if problem is not None}

    def _unavailable_tasks(self) -> dict[str, str]:
        """Tasks whose models are not configured or not all there and intact, with the first
        reason."""
        unavailable: dict[str, str] = {}
        for task, spec in self.registry.items():
            reason = spec.unconfigured(self.config) if spec.unconfigured is not None else None
            if reason is not None:
                unavailable[task] = reason
                continue
            for name in spec.models(self.config) if spec.models is not None else []:
                problem = self.models.problem(name)
                if problem is not None:
                    unavailable[task] = problem
                    break
        return unavailable

    @property
    def scheduler(self) -> Scheduler:
        assert self._scheduler is not None, "Orchestrator.start() has not run"
        return self._scheduler

    @property
    def public_url(self) -> str:
        return self.config.server.public_url.rstrip("/") or self.seen_base_url

    # -- submit ------------------------------------------------------------------------------

    async def submit(
        self,
        caller: Caller,
        request: SubmitRequest,
        *,
        idempotency_key: str | None = None,
        priority: int | None = None,
    ) -> tuple[JobRow, bool]:
        if self.draining:
            raise AhvError("draining", "the server is shutting down", status=503, retry_after_s=5)
        spec = self._spec(request.task)
        payload = self._decode_payload(spec, request.payload)
        for field in spec.url_fields:
            url = getattr(payload, field, None)
            if isinstance(url, str):
                await check_url(url, self.policy, field=f"payload.{field}")
        for field in spec.list_url_fields:
            for i, url in enumerate(getattr(payload, field, None) or []):
                await check_url(url, self.policy, field=f"payload.{field}[{i}]")
        await self._check_webhook(request)
        if priority is None:
            priority = (
                self.config.queue.default_priority if request.priority is None else request.priority
            )
        canonical_payload = msgspec.json.encode(payload)
        request_hash = self._request_hash(request, canonical_payload, priority)
        if idempotency_key is not None:
            # A replay gets its job back even when the queue is full now.
            existing = await self.store.find_idempotent(caller.name, idempotency_key)
            if existing is not None:
                return self._replay(existing, request_hash, idempotency_key)
        self.disk.check(self.config.limits.min_free_disk_mb)
        self._check_capacity(caller)
        # Again after the awaits above: a reload (SIGHUP) may have stopped serving the task
        # meanwhile. From here to the enqueue nothing awaits, so the reload's count of queued
        # and pending jobs (ahv/reload.py) sees this one.
        self._check_served(spec.name)
        now = now_us()
        job = JobRow(
            id=new_id(),
            owner=caller.name,
            task=spec.name,
            status=QUEUED,
            priority=priority,
            rank_ms=now // 1000 - int(priority * self.config.queue.age_step_s * 1000),
            payload=canonical_payload,
            webhook_url=request.webhook_url,
            webhook_events=sorted(set(request.webhook_events)),
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            max_attempts=self.config.queue.max_attempts,
            created_us=now,
            queued_us=now,
            predict_time=self.predictor.predict_s(spec.name),
        )
        try:
            row, created = await self.store.enqueue(job)
        except IdempotencyConflict as exc:
            return self._replay(exc.existing, request_hash, idempotency_key)
        if created:
            self.scheduler.wake()
            self.watch.changed("submitted", row)
            log.info(
                "job %s: submitted %s (priority %d)",
                row.id,
                row.task,
                row.priority,
                extra={
                    "job_id": row.id,
                    "task": row.task,
                    "owner": row.owner,
                    "priority": row.priority,
                    "event": "submitted",
                },
            )
        return row, created

    @staticmethod
    def _replay(existing: JobRow, request_hash: str, key: str | None) -> tuple[JobRow, bool]:
        if existing.request_hash != request_hash:
            raise AhvError(
                "idempotency_conflict",
                f"Idempotency-Key {key!r} was used for job {existing.id} with a different request",
                status=409,
            )
        return existing, False

    def _spec(self, task: str) -> TaskSpec:
        spec = self.registry.get(task)
        if spec is None:
            known = ", ".join(sorted(self.registry))
            raise AhvError(
                "unknown_task", f"task: unknown task {task!r} (known: {known})", status=422
            )
        missing_provider = self.providers.unavailable_reason(task)
        if missing_provider is not None:
            raise AhvError("model_unavailable", f"task: {missing_provider}", status=422)
        unconfigured = spec.unconfigured(self.config) if spec.unconfigured is not None else None
        if unconfigured is not None:
            raise AhvError("model_unavailable", f"task: {unconfigured}", status=422)
        self._check_served(task)
        return spec

    def _check_served(self, task: str) -> None:
        if self.scheduler.slots_for(task) == 0:
            raise AhvError(
                "task_unavailable", f"task: no backend in ahv.toml serves {task!r}", status=422
            )

    def _decode_payload(self, spec: TaskSpec, raw: msgspec.Raw) -> Any:
        try:
            payload = msgspec.json.decode(raw, type=spec.payload_type)
        except msgspec.ValidationError as exc:
            raise AhvError(
                "invalid_payload", validation_message(exc, "payload"), status=422
            ) from None
        except msgspec.DecodeError as exc:
            raise AhvError(
                "invalid_json", f"payload is not valid JSON: {exc}", status=400
            ) from None
        except RecursionError:
            raise AhvError("invalid_json", "payload: JSON nested too deeply", status=400) from None
        if spec.validate is not None:
            spec.validate(payload, self.config)
        return payload

    async def _check_webhook(self, request: SubmitRequest) -> None:
        unknown = set(request.webhook_events) - EVENTS
        if unknown:
            raise invalid_payload(
                "webhook_events", f"unknown events {sorted(unknown)} (known: {sorted(EVENTS)})"
            )
        if request.webhook_url is not None:
            await check_url(request.webhook_url, self.policy, field="webhook_url")

    def _check_capacity(self, caller: Caller) -> None:
        # No await between this check and Store.enqueue taking the job in: both run in one
        # step of the event loop, so concurrent submits cannot overshoot the limits.
        self.keys.take_rate_token(caller)
        queue = self.config.queue
        depth = self.store.queued_or_pending_count
        if depth >= queue.max_depth:
            raise AhvError(
                "queue_full",
                f"the queue holds {depth} jobs, its limit is {queue.max_depth}",
                status=429,
                retry_after_s=self._drain_estimate_s(),
            )
        mine = self.store.queued_or_pending_for_owner(caller.name)
        if caller.max_queued and mine >= caller.max_queued:
            raise AhvError(
                "queue_full",
                f"key {caller.name!r} already has {caller.max_queued} jobs queued (its limit)",
                status=429,
                retry_after_s=self._drain_estimate_s(),
            )

    def _drain_estimate_s(self) -> float:
        means = self.predictor.mean_durations()
        return max(1.0, min(60.0, sum(means.values()) / max(1, len(means)) if means else 5.0))

    @staticmethod
    def _request_hash(request: SubmitRequest, payload: bytes, priority: int) -> str:
        parts = [request.task, payload.decode(), request.webhook_url or "", str(priority)]
        parts.extend(sorted(request.webhook_events))
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()

    # -- read, cancel, delete -------------------------------------------------------------------

    async def visible_job(self, caller: Caller, job_id: str) -> JobRow:
        job = await self.store.get(job_id)
        if job is None or (job.owner != caller.name and not caller.is_admin):
            raise AhvError("job_not_found", f"no job {job_id!r}", status=404)
        return job

    def document(self, job: JobRow) -> JobDocument:
        if job.status != QUEUED:
            return job_document(job, expires_us=expires_us(self.config.retention, job))
        position = self.store.queue_position(job)
        eta = self.scheduler.eta_us(job.task, position, now_us())
        return job_document(msgspec.structs.replace(job, eta_us=eta), queue_position=position)

    async def cancel(self, caller: Caller, job_id: str) -> JobRow:
        job = await self.visible_job(caller, job_id)
        if job.is_terminal:
            if job.status == "canceled":
                return job
            raise AhvError(
                "job_finished", f"job {job_id} already ended with status {job.status}", status=409
            )
        return await self.scheduler.cancel(job)

    async def delete(self, caller: Caller, job_id: str, stop_wait_s: float = 10.0) -> None:
        job = await self.visible_job(caller, job_id)
        if not job.is_terminal:
            job = await self.scheduler.cancel(job)
            if job.status == RUNNING:
                job = await self.wait_finished(job.id, stop_wait_s) or job
        if job.result and job.result.get("filename"):
            (self.files_dir / str(job.result["filename"])).unlink(missing_ok=True)
        for extra in (job.result or {}).get("files") or []:  # tasks with several results
            (self.files_dir / str(extra["filename"])).unlink(missing_ok=True)
        await self.store.delete(job)
        self.watch.deleted(job)
        log.info(
            "job %s: deleted",
            job.id,
            extra={"job_id": job.id, "task": job.task, "event": "deleted"},
        )

    async def redeliver(self, caller: Caller, job_id: str) -> OutboxEvent:
        """Send a finished job's `job.finished` event again, now: the same event (webhook-id
        and body, so receivers deduplicate), attempts from 0, delivered or given up before."""
        job = await self.visible_job(caller, job_id)
        if not job.is_terminal:
            raise AhvError(
                "not_finished",
                f"job {job_id} is {job.status}; it has no job.finished event yet",
                status=409,
            )
        event = None
        if job.webhook_url:
            event = await self.store.outbox_redeliver(job.id, FINISHED, now_us())
        if event is None:
            raise AhvError("no_webhook", f"job {job_id} has no webhook_url", status=409)
        if self._webhooks is not None:
            self._webhooks.wake()
        return event

    # -- waiting for the end of a job -------------------------------------------------------------

    async def wait_finished(self, job_id: str, timeout_s: float) -> JobRow | None:
        job = await self.store.get(job_id)
        if job is None or job.is_terminal:
            return job
        future: asyncio.Future[JobRow] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(job_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(job_id, None)

    def _on_finished(self, job: JobRow) -> None:
        self.watch.changed("finished", job)
        for future in self._waiters.pop(job.id, []):
            if not future.done():
                future.set_result(job)

    # -- what /stats and /diag show ----------------------------------------------------------------

    async def stats(self, caller: Caller) -> Stats:
        recent = await self.store.list_jobs(
            owner=None if caller.is_admin else caller.name,
            status=None,
            task=None,
            limit=20,
            before_seq=None,
        )
        return Stats(
            ok=True,
            counts=await self.store.counts_by_status(None if caller.is_admin else caller.name),
            queue_depth=self.store.queued_count,
            running=self.scheduler.running_count,
            mean_duration_s=self.predictor.mean_durations(),
            predict_time_s={t: math.ceil(self.predictor.predict_s(t)) for t in self.registry},
            webhooks=await self.store.outbox_counts(),
            recent=[self.document(job) for job in recent],
            # Per minute, the last hour (in memory, since the server started).
            history=msgspec.convert(
                self.watch.history.view(now_us() // 1000, None if caller.is_admin else caller.name),
                list[HistoryBucket],
            ),
        )

    async def backends(self) -> list[BackendReport]:
        queued = await self.store.queued_by_task()
        unavailable = await asyncio.to_thread(self._unavailable_tasks)  # may hash a new file
        rows = []
        for backend in self.scheduler.backends:
            device = backend.config.device
            rows.append(
                BackendReport(
                    name=backend.config.name,
                    kind=backend.kind,
                    device=device,
                    slots=backend.config.slots,
                    busy=len(backend.busy),
                    running_jobs=sorted(backend.busy.values()),
                    queued=sum(queued.get(task, 0) for task in backend.tasks),
                    tasks=backend.tasks,
                    # What ONNX Runtime really runs on this device (probed at start, then
                    # updated from each session), not what was asked for.
                    providers=self.sessions.providers(device),
                    degraded=self.sessions.degraded(device),
                    models_loaded=self.sessions.loaded(device),
                    batching=msgspec.convert(
                        self.sessions.batching(device), dict[str, BatchingStats]
                    ),
                    unavailable_tasks={
                        task: reason
                        for task, reason in unavailable.items()
                        if task in backend.tasks
                    },
                    **self.providers.diag(backend.config.device),
                )
            )
        return rows
