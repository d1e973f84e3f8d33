"""SIGHUP: re-read ahv.toml and apply what can change while jobs run.

The file is validated by the same loader as at start; a file that does not load is rejected
and the running config stays (`config reload rejected: <reason>` at ERROR). Applied at once:
keys (added, removed, changed roles and secrets), queue and limit settings read per request,
webhook settings, retention, task settings (for jobs that start from then on) and each
backend's slots and tasks. What needs a restart keeps its running value and is logged as
`needs restart: <key>`: [providers], server host, port, data_dir, max_body_bytes, plugins and log
settings, queue.fsync, queue.keep_durations, fetch.allowed_networks, the [models] section,
and adding or removing backends or changing their device or require_gpu. A file under which no
backend would serve a task that has queued jobs is rejected too: they would never run.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import msgspec

from ahv.config import Config, ConfigError, load_config
from ahv.orchestrator import Orchestrator
from ahv.tasks import load_registry

log = logging.getLogger(__name__)

# (section, key) pairs read only at start.
RESTART_ONLY: tuple[tuple[str, str], ...] = (
    ("server", "host"),
    ("server", "port"),
    ("server", "data_dir"),
    ("server", "max_body_bytes"),
    ("server", "plugins"),
    ("server", "log_format"),
    ("server", "log_level"),
    ("queue", "fsync"),
    ("queue", "keep_durations"),
    ("fetch", "allowed_networks"),
    ("models", "dir"),
    ("models", "gpu_mem_limit_mb"),
    ("models", "files"),
)


def with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """`ahv serve --port/--host/--log-format/--log-level` win over the file, on every load."""
    given = {key: value for key, value in overrides.items() if value is not None}
    if not given:
        return config
    return msgspec.structs.replace(config, server=msgspec.structs.replace(config.server, **given))


def live_config(old: Config, new: Config) -> tuple[Config, list[str]]:
    """`new`, with what needs a restart put back to its running value; and those keys."""
    restart: list[str] = []
    sections: dict[str, dict[str, Any]] = {}
    for section, key in RESTART_ONLY:
        running = getattr(getattr(old, section), key)
        if getattr(getattr(new, section), key) != running:
            restart.append(f"{section}.{key}")
            sections.setdefault(section, {})[key] = running
    replaced = {
        section: msgspec.structs.replace(getattr(new, section), **keys)
        for section, keys in sections.items()
    }
    if new.providers != old.providers:
        # Keys are read and provider backends built at start (ahv/providers/hub.py).
        restart.append("providers")
        replaced["providers"] = old.providers
    backends, backend_restart = _live_backends(old, new)
    return msgspec.structs.replace(new, backends=backends, **replaced), restart + backend_restart


def _live_backends(old: Config, new: Config) -> tuple[list[Any], list[str]]:
    restart: list[str] = []
    wanted = {backend.name: backend for backend in new.backends}
    running = {backend.name for backend in old.backends}
    restart += [f"backends.{name} (added)" for name in wanted if name not in running]
    backends = []
    for backend in old.backends:
        target = wanted.get(backend.name)
        if target is None:
            restart.append(f"backends.{backend.name} (removed)")
            backends.append(backend)
            continue
        for key in ("device", "require_gpu"):
            if getattr(target, key) != getattr(backend, key):
                restart.append(f"backends.{backend.name}.{key}")
        backends.append(
            msgspec.structs.replace(backend, slots=target.slots, tasks=list(target.tasks))
        )
    return backends, restart


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted names of what differs (names only: values may be secrets)."""
    before, after = msgspec.to_builtins(old), msgspec.to_builtins(new)
    changed: list[str] = []
    for section in after:
        a, b = before.get(section), after[section]
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [f"{section}.{key}" for key in sorted(a.keys() | b.keys())
                        if a.get(key) != b.get(key)]  # fmt: skip
        else:
            changed.append(section)
    return changed


class Reloader:
    """Reloads one config file into a running orchestrator; one reload at a time."""

    def __init__(
        self, orchestrator: Orchestrator, path: str | Path, overrides: dict[str, Any]
    ) -> None:
        self._orchestrator = orchestrator
        self._path = Path(path)
        self._overrides = overrides
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[bool]] = set()

    def trigger(self) -> None:
        """The SIGHUP handler: reload in the background."""
        task = asyncio.ensure_future(self.reload())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def reload(self) -> bool:
        async with self._lock:
            orchestrator = self._orchestrator
            if orchestrator.draining:
                log.warning("config reload ignored: the server is stopping")
                return False
            old = orchestrator.config
            try:
                # Reading the file and importing plugins block: off the event loop.
                new = await asyncio.to_thread(self._load)
                live, restart = live_config(old, new)
                await asyncio.to_thread(load_registry, live)  # against the running plugins
                await self._check_queued(live)
            except ConfigError as exc:
                log.error(
                    "config reload rejected: %s; the running config stays",
                    exc,
                    extra={"event": "config_reload_rejected", "reason": str(exc)},
                )
                return False
            except Exception as exc:
                # A bug, not a bad file; still the running config stays, and the reason is
                # logged here rather than as a background task's unretrieved exception.
                log.error(
                    "config reload rejected: %s: %s; the running config stays",
                    type(exc).__name__,
                    exc,
                    exc_info=True,
                    extra={"event": "config_reload_rejected", "reason": repr(exc)},
                )
                return False
            for key in restart:
                log.warning(
                    "config reload: needs restart: %s (the running value stays)",
                    key,
                    extra={"event": "config_needs_restart", "key": key},
                )
            changed = changed_keys(old, live)
            orchestrator.apply_config(live)
            log.info(
                "config reloaded from %s: %s",
                self._path,
                ", ".join(changed) or "no changes",
                extra={"event": "config_reloaded", "changed": changed},
            )
            return True

    async def _check_queued(self, live: Config) -> None:
        """Refuse a config under which no backend serves a task that has queued jobs: they
        would stay queued for ever (no worker claims a task its backend does not list)."""
        scheduler = self._orchestrator.scheduler
        served_now, served_after = scheduler.served_tasks(), scheduler.served_tasks(live)
        # Nothing awaits from this count to apply_config, and a submit checks again that its
        # task is served after its own awaits (Orchestrator.submit): no job slips in between.
        queued = await self._orchestrator.store.queued_or_pending_by_task()
        # Jobs of a task that was not served before this reload either are not its doing.
        stranded = {
            task: count
            for task, count in sorted(queued.items())
            if count and task in served_now and task not in served_after
        }
        if stranded:
            raise ConfigError(
                "; ".join(
                    f"backends: no backend would serve {task!r} any more, which has {count} "
                    f"queued job{'s' if count != 1 else ''} that would never run; cancel "
                    f"them (POST /v1/jobs/ID/cancel) or keep {task!r} in a backend's tasks"
                    for task, count in stranded.items()
                )
            )

    def _load(self) -> Config:
        new = with_overrides(load_config(self._path), self._overrides)
        load_registry(new)  # unknown tasks, plugins that do not import
        return new
