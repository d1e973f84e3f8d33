"""The configured cloud providers, below the tasks: their keys (read at start), one HTTP
session, the scheduler backends they become, and which tasks each one serves.

Each configured provider is a backend of kind `provider` (device `provider:NAME`, slots =
its `concurrency`) serving only its tasks, so provider jobs are queued, limited and shown in
/diag/backends like GPU jobs and never take a cpu/cuda slot.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import yarl

from ahv.config import BackendConfig, Config
from ahv.errors import AhvError, StartupError
from ahv.providers.config import (
    KEY_TEXT,
    PROVIDERS,
    ProvidersConfig,
    is_configured,
    section,
)
from ahv.providers.google import GeminiClient
from ahv.providers.openai import OpenAIClient

_TITLES = {"google": "Google's Gemini API", "openai": "OpenAI's Images API"}


class ProviderHub:
    def __init__(self, config: Config, task_providers: dict[str, str]) -> None:
        """`task_providers`: task name -> the provider that runs it (from the registry)."""
        self._config = config.providers
        self._task_providers = task_providers
        self._keys: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None

    # -- what is configured ------------------------------------------------------------------

    def configured(self, name: str) -> bool:
        return is_configured(self._config, name)

    def tasks_of(self, name: str) -> list[str]:
        return sorted(task for task, owner in self._task_providers.items() if owner == name)

    def backend_configs(self) -> list[BackendConfig]:
        """One scheduler backend per configured provider that serves a task."""
        return [
            BackendConfig(
                name=name,
                device=f"provider:{name}",
                slots=section(self._config, name).concurrency,
                tasks=self.tasks_of(name),
            )
            for name in PROVIDERS
            if self.configured(name) and self.tasks_of(name)
        ]

    def unavailable_reason(self, task: str) -> str | None:
        """Why `task` cannot run, when it is a provider task whose provider is not set up."""
        name = self._task_providers.get(task)
        if name is None or self.configured(name):
            return None
        return (
            f"{task} runs on {_TITLES.get(name, name)}, and [providers.{name}] in ahv.toml "
            f"has no api_key or api_key_file"
        )

    def diag(self, device: str) -> dict[str, Any]:
        """Extra /diag/backends fields of a provider backend ({} for cpu/cuda ones)."""
        name = device.removeprefix("provider:")
        if not device.startswith("provider:") or name not in PROVIDERS:
            return {}
        return {"provider": name, "configured": True, "base_url": self._base_url(name)}

    def unconfigured_rows(self) -> list[dict[str, Any]]:
        """The providers not set up, for /diag/backends: why their tasks are unavailable."""
        return [
            {
                "provider": name,
                "configured": False,
                "base_url": self._base_url(name),
                "unavailable_tasks": {t: self.unavailable_reason(t) for t in self.tasks_of(name)},
            }
            for name in PROVIDERS
            if not self.configured(name) and self.tasks_of(name)
        ]

    def _base_url(self, name: str) -> str:
        # The config refuses credentials in base_url; shown without any all the same.
        url = yarl.URL(section(self._config, name).base_url.rstrip("/"))
        return str(url.with_user(None))

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the key files (off the event loop) and open the providers' HTTP session."""
        for name in PROVIDERS:
            if self.configured(name):
                self._keys[name] = await asyncio.to_thread(_read_key, name, self._config)
        if self._keys:
            # No cookie jar: nothing one job's answer sets may ride along on another's.
            # Each request's time limit is the provider's `timeout_s` (Transport), not aiohttp's.
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None)
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- clients, for the tasks --------------------------------------------------------------

    def google(self) -> GeminiClient:
        settings = self._config.google
        key, session = self._credentials("google")
        return GeminiClient(GeminiClient.transport(settings, key, session), settings)

    def openai(self) -> OpenAIClient:
        settings = self._config.openai
        key, session = self._credentials("openai")
        return OpenAIClient(OpenAIClient.transport(settings, key, session), settings)

    def _credentials(self, name: str) -> tuple[str, aiohttp.ClientSession]:
        key = self._keys.get(name)
        if key is None or self._session is None:
            raise AhvError("model_unavailable", f"[providers.{name}] is not configured in ahv.toml")
        return key, self._session


def _read_key(name: str, providers: ProvidersConfig) -> str:
    """The key itself, or the first line of `api_key_file`. Errors name the setting and the
    file, never what is in it."""
    entry = section(providers, name)
    if entry.api_key:
        return str(entry.api_key)
    where = f"providers.{name}.api_key_file"
    try:
        # utf-8-sig: a key saved by an editor that writes a byte-order mark still reads.
        text = Path(entry.api_key_file).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise StartupError(f"{where}: cannot read {entry.api_key_file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise StartupError(f"{where}: {entry.api_key_file} is not UTF-8 text") from None
    key = (text.strip().splitlines() or [""])[0].strip()
    if not key:
        raise StartupError(f"{where}: {entry.api_key_file} is empty")
    if not KEY_TEXT.match(key):
        raise StartupError(
            f"{where}: the key in {entry.api_key_file} holds characters an HTTP header cannot "
            "carry (spaces, control or non-ASCII characters)"
        )
    return key
