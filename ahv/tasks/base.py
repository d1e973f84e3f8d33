"""What a task is: a payload type, an async `run`, and the context a running job gets."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ParamSpec, TypeVar

import aiohttp
import msgspec

from ahv.config import Config
from ahv.errors import JobCanceled
from ahv.fetch import Fetched, fetch_url
from ahv.netguard import AddressPolicy

if TYPE_CHECKING:  # onnxruntime is imported only where sessions are used
    from ahv.models.sessions import SessionCache
    from ahv.providers.hub import ProviderHub

P = ParamSpec("P")
T = TypeVar("T")


class OutputFile(msgspec.Struct, kw_only=True):
    """One of several result files: its name and its own meta (width, height, mime, ...)."""

    filename: str
    meta: dict[str, Any] = {}


class TaskOutput(msgspec.Struct, kw_only=True):
    """What a task hands back: the result file it saved (if any) and `result.meta`."""

    filename: str | None = None
    meta: dict[str, Any] = {}
    # A task that makes several files lists them all here (`result.files`); `filename` is
    # the first of them.
    files: list[OutputFile] = []


@dataclass(frozen=True)
class TaskSpec:
    name: str
    payload_type: type[msgspec.Struct]
    run: Callable[[TaskContext, Any], Awaitable[TaskOutput]]
    # Payload fields holding input URLs; they are checked against the address guard at submit.
    url_fields: tuple[str, ...] = ()
    # Payload fields holding lists of input URLs, checked the same way.
    list_url_fields: tuple[str, ...] = ()
    direct_path: str | None = None
    default_predict_s: float = 5.0
    # Extra submit-time checks that need no download (ranges, combinations); raise AhvError.
    validate: Callable[[Any, Config], None] | None = None
    # Names in ahv.toml [models.files] the task needs (None: none). A task whose models are
    # missing or corrupt is listed as unavailable in /diag/backends.
    models: Callable[[Config], list[str]] | None = None
    # Why this config cannot run the task at all (a model setting left empty), else None:
    # then a submit is refused (422 model_unavailable) and /diag/backends lists the task.
    unconfigured: Callable[[Config], str | None] | None = None
    # The cloud provider that runs the task (None: a local task). Such a task runs only on
    # that provider's backend, never on a cpu/cuda one (ahv/providers/hub.py).
    provider: Callable[[Config], str] | None = None


@dataclass
class TaskContext:
    """Handed to a running task. `checkpoint()` and `progress()` are safe from any thread."""

    job_id: str
    task: str
    backend: str
    device: str
    config: Config
    files_dir: Path
    executor: Executor
    http: aiohttp.ClientSession
    policy: AddressPolicy
    loop: asyncio.AbstractEventLoop
    on_progress: Callable[[int], None]
    attempt: int = 1
    # ONNX Runtime sessions, cached across jobs; the view of this job's slot.
    sessions: SessionCache | None = None
    # The configured cloud providers, for provider tasks.
    providers: ProviderHub | None = None
    cancel_reason: str | None = None
    runner: asyncio.Future[Any] | None = None
    saved_files: list[str] = field(default_factory=list)
    _cancel: threading.Event = field(default_factory=threading.Event)
    # The same signal for the event loop side (the scheduler waits on it).
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def cancel(self, reason: str) -> None:
        """Ask the job to stop; called on the event loop (cancel, timeout, shutdown)."""
        if self.cancel_reason is not None:
            return
        self.cancel_reason = reason
        self._cancel.set()
        self.stopping.set()
        # Also interrupt awaits outside threads, such as a download in progress.
        if self.runner is not None and not self.runner.done():
            self.runner.cancel()

    def checkpoint(self) -> None:
        """Stop here if the job was canceled (or timed out, or the server is stopping)."""
        if self._cancel.is_set():
            raise JobCanceled(self.cancel_reason or "canceled")

    def progress(self, percent: int) -> None:
        self.checkpoint()
        self.loop.call_soon_threadsafe(self.on_progress, max(0, min(99, int(percent))))

    async def run_in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking work off the event loop. If the job is canceled meanwhile, the thread
        is told to stop at its next checkpoint and the slot stays busy until it has."""
        future = self.loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if self.cancel_reason is None:
                self.cancel_reason = "canceled"
            self._cancel.set()
            while not future.done():
                with suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # retrieved: the cancel is what we report
            raise

    async def fetch(
        self, url: str, *, field: str, max_bytes: int | None = None, sink: BinaryIO | None = None
    ) -> Fetched:
        """Download an input; into `sink` (an open file) instead of memory when given."""
        self.checkpoint()
        return await fetch_url(
            self.http,
            url,
            policy=self.policy,
            config=self.config.fetch,
            field=field,
            max_bytes=max_bytes,
            sink=sink,
        )

    def new_output(self, extension: str) -> tuple[str, Path]:
        """A result file written in place by the task (a video): its final name and the
        `.part` path to write; `publish_output(name)` moves it into place."""
        name = f"{uuid.uuid4().hex}.{extension}"
        self.saved_files.append(name)
        return name, self.files_dir / f"{name}.part"

    def publish_output(self, name: str) -> None:
        (self.files_dir / f"{name}.part").rename(self.files_dir / name)

    def save_output(self, data: bytes, extension: str) -> str:
        """Write a result file; its name is unguessable. Runs in a worker thread."""
        name = f"{uuid.uuid4().hex}.{extension}"
        partial = self.files_dir / f"{name}.part"
        partial.write_bytes(data)
        partial.rename(self.files_dir / name)
        self.saved_files.append(name)
        return name
