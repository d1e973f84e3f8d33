"""SIGHUP re-reads ahv.toml: new keys and slots apply without touching queued or running
jobs; a broken file is rejected and the running config stays."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from tests.conftest import KEY_A, KEY_ADMIN, StartServer, base_config, merge
from tests.fake_providers import FakeGoogle
from tests.process import AhvProcess
from tests.sse import SseReader
from tests.test_config import broken_plugins
from tests.test_crash import ahv_process
from tests.test_providers_google import GOOGLE_KEY

__all__ = ["ahv_process"]

KEY_C = "key-client-c-new"


class Server:
    """A server subprocess, its config file and its log, as a reload test drives them."""

    def __init__(self, process: AhvProcess, config: dict[str, Any]) -> None:
        self.process = process
        self.config = config
        self.url = ""

    async def start(self) -> None:
        self.url = await asyncio.to_thread(self.process.start)

    def log_text(self) -> str:
        return self.process.log_path.read_text()

    async def reload(self, config: dict[str, Any] | str, expect: str) -> str:
        """Write the file, send SIGHUP, wait for a log line containing `expect`."""
        seen = len(self.log_text())
        text = config if isinstance(config, str) else msgspec.toml.encode(config).decode()
        self.process.config_path.write_text(text)
        assert self.process.proc is not None
        os.kill(self.process.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            fresh = self.log_text()[seen:]
            if expect in fresh:
                return fresh
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {expect!r} in the log after SIGHUP: {self.log_text()[-2000:]}")

    async def post(
        self, session: aiohttp.ClientSession, key: str, body: dict[str, Any]
    ) -> tuple[int, Any]:
        async with session.post(
            f"{self.url}/v1/jobs", json=body, headers={"X-API-Key": key}
        ) as response:
            return response.status, await response.json()

    async def job(self, session: aiohttp.ClientSession, job_id: str) -> dict[str, Any]:
        async with session.get(
            f"{self.url}/v1/jobs/{job_id}", headers={"X-API-Key": KEY_ADMIN}
        ) as response:
            assert response.status == 200
            return dict(await response.json())

    async def wait(
        self, session: aiohttp.ClientSession, job_id: str, statuses: set[str], timeout_s: float = 15
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            doc = await self.job(session, job_id)
            if doc["status"] in statuses:
                return doc
            assert time.monotonic() < deadline, doc["status"]
            await asyncio.sleep(0.05)


def _server(ahv_process: Any, tmp_path: Path, **overrides: Any) -> Server:
    process = ahv_process(**overrides)
    return Server(process, merge(base_config(tmp_path / "data"), overrides))


SLEEP = {"task": "sleep", "payload": {"seconds": 2, "steps": 20}}


async def test_sighup_new_key_and_more_slots_keep_jobs(ahv_process: Any, tmp_path: Path) -> None:
    one_slot = {"backends": [{"name": "cpu", "slots": 1, "tasks": ["sleep"]}]}
    server = _server(ahv_process, tmp_path, **one_slot)
    await server.start()
    async with aiohttp.ClientSession() as session:
        ids = []
        for _ in range(3):
            status, body = await server.post(session, KEY_A, SLEEP)
            assert status == 202
            ids.append(body["job_id"])
        first = await server.wait(session, ids[0], {"running"})
        assert (await server.job(session, ids[1]))["status"] == "queued"
        # client-a's key is replaced by client-c's, and the backend gets 3 slots.
        new = dict(server.config)
        new["keys"] = [
            {"name": "client-c", "key": KEY_C, "webhook_secret": "secret-of-client-c-0123"},
            *[key for key in server.config["keys"] if key["name"] != "client-a"],
        ]
        new["backends"] = [{"name": "cpu", "slots": 3, "tasks": ["sleep"]}]
        line = await server.reload(new, "config reloaded")
        assert "keys" in line and "backends" in line
        assert "needs restart" not in line
        status, body = await server.post(session, KEY_A, SLEEP)
        assert status == 401 and body["error"]["code"] == "unauthorized"
        status, body = await server.post(session, KEY_C, {"task": "sleep", "payload": {}})
        assert status == 202
        fresh = body["job_id"]
        # The queued jobs start on the new slots while the first one is still running.
        second = await server.wait(session, ids[1], {"running", "succeeded"})
        third = await server.wait(session, ids[2], {"running", "succeeded"})
        docs = [await server.wait(session, i, {"succeeded", "failed"}) for i in ids]
        assert [d["status"] for d in docs] == ["succeeded"] * 3
        assert [d["attempts"] for d in docs] == [1, 1, 1]
        # The job running across the reload ran once, on slot 1, from before to after it.
        assert docs[0]["started_at_ms"] == first["started_at_ms"]
        assert docs[0]["result"]["meta"]["backend"] == "cpu-1"
        # All three ran at once: each started before any of them finished.
        latest_start = max(second["started_at_ms"], third["started_at_ms"])
        assert latest_start < min(d["finished_at_ms"] for d in docs)
        assert {d["result"]["meta"]["backend"] for d in docs} == {"cpu-1", "cpu-2", "cpu-3"}
        assert (await server.wait(session, fresh, {"succeeded"}))["attempts"] == 1
        async with session.get(
            f"{server.url}/diag/backends", headers={"X-API-Key": KEY_ADMIN}
        ) as response:
            assert (await response.json())["backends"][0]["slots"] == 3


async def test_sighup_with_a_broken_file_keeps_the_running_config(
    ahv_process: Any, tmp_path: Path
) -> None:
    # The running config refuses new jobs: the disk guard's bound is above any real disk.
    server = _server(ahv_process, tmp_path, limits={"min_free_disk_mb": 10**12})
    await server.start()
    async with aiohttp.ClientSession() as session:
        status, body = await server.post(session, KEY_A, {"task": "sleep"})
        assert status == 503 and body["error"]["code"] == "disk_full"
        broken = merge(
            server.config,
            {"limits": {"min_free_disk_mb": 0}, "backends": [{"name": "cpu", "slots": 0}]},
        )
        line = await server.reload(broken, "config reload rejected")
        assert "backends[0].slots" in line and "ERROR" in line
        line = await server.reload("[server\nport = ", "config reload rejected")
        assert "TOML" in line
        # The old config stays: the same bound, the same keys.
        status, body = await server.post(session, KEY_A, {"task": "sleep"})
        assert status == 503 and body["error"]["code"] == "disk_full"
        # A good file applies; what needs a restart is named and left as it runs.
        fixed = merge(
            server.config,
            {"limits": {"min_free_disk_mb": 0}, "fetch": {"allowed_networks": ["10.0.0.0/8"]}},
        )
        line = await server.reload(fixed, "config reloaded")
        assert "needs restart: fetch.allowed_networks" in line
        assert "limits.min_free_disk_mb" in line
        status, body = await server.post(session, KEY_A, {"task": "sleep"})
        assert status == 202
        assert (await server.wait(session, body["job_id"], {"succeeded"}))["attempts"] == 1
        # SIGTERM still drains and exits cleanly after reloads.
        server.process.terminate()
        assert await asyncio.to_thread(server.process.wait_exit, 20) == 0


async def test_fewer_slots_let_running_jobs_finish_first(start_server: StartServer) -> None:
    api = await start_server(backends=[{"name": "cpu", "slots": 3, "tasks": ["sleep"]}])
    running = [await api.submit("sleep", {"seconds": 1, "steps": 10}) for _ in range(3)]
    for job in running:
        await api.wait(job["job_id"], frozenset({"running"}))
    old = api.orchestrator.config
    (backend,) = old.backends
    fewer = msgspec.structs.replace(old, backends=[msgspec.structs.replace(backend, slots=1)])
    api.orchestrator.apply_config(fewer)
    later = [await api.submit("sleep", {"seconds": 0.3, "steps": 3}) for _ in range(3)]
    docs = [await api.wait(job["job_id"]) for job in running + later]
    assert [d["status"] for d in docs] == ["succeeded"] * 6
    assert [d["attempts"] for d in docs] == [1] * 6
    # The jobs submitted after the change ran one at a time, on the slot that stays.
    spans = sorted((d["started_at_ms"], d["finished_at_ms"]) for d in docs[3:])
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert {d["result"]["meta"]["backend"] for d in docs[3:]} == {"cpu-1"}
    status, body, _ = await api.call("GET", "/diag/backends", key=KEY_ADMIN)
    assert status == 200 and body["backends"][0]["slots"] == 1
    # And back up again: idle workers start at once.
    api.orchestrator.apply_config(old)
    again = [await api.submit("sleep", {"seconds": 1, "steps": 10}) for _ in range(3)]
    for job in again:
        await api.wait(job["job_id"], frozenset({"running"}))
    docs = [await api.wait(job["job_id"]) for job in again]
    assert {d["result"]["meta"]["backend"] for d in docs} == {"cpu-1", "cpu-2", "cpu-3"}


async def test_sighup_with_event_streams_open_and_a_cloud_provider(
    ahv_process: Any, tmp_path: Path, aiohttp_server: Any
) -> None:
    # Open event streams go on across a reload; [providers] is read at start only: a new
    # key there is named as needing a restart, and the provider backend keeps its slots and
    # its running key (its jobs still succeed). The grace time logged on SIGTERM is the
    # reloaded one.
    google = await FakeGoogle.start(aiohttp_server, GOOGLE_KEY)
    section = {"api_key": GOOGLE_KEY, "base_url": google.url, "concurrency": 2}
    server = _server(ahv_process, tmp_path, providers={"google": section})
    await server.start()
    async with aiohttp.ClientSession() as session:
        async with (
            session.get(f"{server.url}/v1/events", headers={"X-API-Key": KEY_ADMIN}) as all_events,
        ):
            stream = SseReader(all_events)
            assert (await stream.next()).event == "hello"  # type: ignore[union-attr]
            status, body = await server.post(session, KEY_A, SLEEP)
            assert status == 202
            running = body["job_id"]
            await server.wait(session, running, {"running"})
            async with session.get(
                f"{server.url}/v1/jobs/{running}/events", headers={"X-API-Key": KEY_A}
            ) as job_events:
                own = SseReader(job_events)
                first = await own.next()
                assert first is not None and first.json["status"] == "running"
                moved = {**section, "api_key": "AIzaSyNEW-key-never-used-0000", "concurrency": 5}
                new = merge(
                    server.config,
                    {"providers": {"google": moved}, "server": {"shutdown_grace_s": 7}},
                )
                line = await server.reload(new, "config reloaded")
                assert "needs restart: providers" in line and "server.shutdown_grace_s" in line
                assert "AIzaSy" not in server.log_text()
                # The job's own stream ends with its final status, after the reload.
                rest = await own.events(timeout_s=15)
                assert rest[-1].json["status"] == "succeeded"
                assert rest[-1].json["job_id"] == running
            # The all-jobs stream saw it too, and sees the provider job made after the reload.
            status, body = await server.post(
                session, KEY_A, {"task": "gg_image", "payload": {"prompt": "after"}}
            )
            assert status == 202
            made = body["job_id"]
            seen: dict[str, str] = {}
            while seen.get(made) != "succeeded":
                message = await stream.next(timeout_s=15)
                assert message is not None
                if message.event == "job":
                    seen[message.json["job_id"]] = message.json["status"]
            assert seen[running] == "succeeded"
        assert google.of("predict")[-1].headers["x-goog-api-key"] == GOOGLE_KEY
        async with session.get(
            f"{server.url}/diag/backends", headers={"X-API-Key": KEY_ADMIN}
        ) as response:
            backends = {b["name"]: b for b in (await response.json())["backends"]}
        assert backends["google"]["slots"] == 2 and backends["google"]["kind"] == "provider"
    server.process.terminate()
    assert await asyncio.to_thread(server.process.wait_exit, 20) == 0
    assert "running jobs get 7.0 s" in server.log_text()


async def test_sighup_ends_the_event_streams_of_removed_and_changed_keys(
    ahv_process: Any, tmp_path: Path
) -> None:
    # A removed key gets 401 at once, and so must its open streams end: else a revoked key
    # would go on watching jobs. client-a is removed, client-b becomes an admin (its stream
    # was filtered to its own jobs); the admin's stream is untouched and goes on.
    server = _server(ahv_process, tmp_path, server={"sse_keepalive_s": 0.2})
    await server.start()
    key_b = "key-client-b"
    async with aiohttp.ClientSession() as session:
        status, body = await server.post(session, KEY_A, SLEEP)
        assert status == 202
        running = body["job_id"]
        await server.wait(session, running, {"running"})
        urls = {
            "a": f"{server.url}/v1/events",
            "a-job": f"{server.url}/v1/jobs/{running}/events",
            "b": f"{server.url}/v1/events",
            "admin": f"{server.url}/v1/events",
        }
        keys = {"a": KEY_A, "a-job": KEY_A, "b": key_b, "admin": KEY_ADMIN}
        async with contextlib.AsyncExitStack() as stack:
            readers = {}
            for name, url in urls.items():
                response = await stack.enter_async_context(
                    session.get(url, headers={"X-API-Key": keys[name]})
                )
                assert response.status == 200
                readers[name] = SseReader(response)
                assert (await readers[name].next()) is not None  # hello, or the job now
            new = dict(server.config)
            new["keys"] = [
                {**key, "role": "admin"} if key["name"] == "client-b" else key
                for key in server.config["keys"]
                if key["name"] != "client-a"
            ]
            line = await server.reload(new, "config reloaded")
            assert "keys" in line

            async def ends(reader: SseReader) -> bool:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if await reader.next() is None:
                        return True
                return False

            for name in ("a", "a-job", "b"):
                assert await ends(readers[name]), f"the {name} stream goes on"
            # The admin's stream goes on: it sees the job end.
            while True:
                message = await readers["admin"].next(timeout_s=15)
                assert message is not None
                if message.event == "job" and message.json["status"] == "succeeded":
                    break
        async with session.get(urls["a"], headers={"X-API-Key": KEY_A}) as again:
            assert again.status == 401


async def test_sighup_that_would_strand_queued_jobs_is_rejected(
    ahv_process: Any, tmp_path: Path
) -> None:
    # Taking `sleep` off the only backend while a `sleep` job waits: no worker would ever claim
    # it (queued for ever, no log line). The reload is refused, naming the task and the count,
    # and the old config goes on: the waiting job runs, new ones are taken.
    one_slot = {"backends": [{"name": "cpu", "slots": 1, "tasks": ["sleep", "upscale"]}]}
    server = _server(ahv_process, tmp_path, **one_slot)
    await server.start()
    without_sleep = merge(
        server.config, {"backends": [{"name": "cpu", "slots": 1, "tasks": ["upscale"]}]}
    )
    async with aiohttp.ClientSession() as session:
        status, body = await server.post(session, KEY_A, SLEEP)
        assert status == 202
        running = body["job_id"]
        await server.wait(session, running, {"running"})
        queued = []
        for _ in range(2):
            status, body = await server.post(session, KEY_A, {"task": "sleep", "payload": {}})
            assert status == 202
            queued.append(body["job_id"])
        line = await server.reload(without_sleep, "config reload rejected")
        assert "'sleep'" in line and "2 queued jobs" in line and "ERROR" in line
        assert "cancel" in line and "config reloaded" not in line
        # The running config stays: `sleep` is still taken and every job runs.
        status, body = await server.post(session, KEY_A, {"task": "sleep", "payload": {}})
        assert status == 202
        docs = [
            await server.wait(session, job_id, {"succeeded", "failed"})
            for job_id in [running, *queued, body["job_id"]]
        ]
        assert [d["status"] for d in docs] == ["succeeded"] * 4
        # With nothing of `sleep` waiting the same file applies, and `sleep` is refused.
        line = await server.reload(without_sleep, "config reloaded")
        assert "backends" in line
        status, body = await server.post(session, KEY_A, {"task": "sleep", "payload": {}})
        assert status == 422 and body["error"]["code"] == "task_unavailable"


async def test_sighup_with_a_plugin_that_raises_is_rejected(
    ahv_process: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plugin whose import raises something else than ImportError: the reload is rejected
    # with the plugin and the error named, like a bad file, not a background task's
    # "exception was never retrieved" with a traceback; the running config stays.
    monkeypatch.setenv("PYTHONPATH", broken_plugins(tmp_path)["PYTHONPATH"])
    server = _server(ahv_process, tmp_path)
    await server.start()
    async with aiohttp.ClientSession() as session:
        for plugin, words in (
            ("boom_plugin", "RuntimeError: plugin boom"),
            ("syntax_plugin", "SyntaxError"),
        ):
            plugins = ["tests.plugin_tasks", plugin]
            new = merge(server.config, {"server": {"plugins": plugins}})
            line = await server.reload(new, "config reload rejected")
            assert f"server.plugins[1]: importing '{plugin}' failed" in line and words in line
            assert "ERROR" in line
        log = server.log_text()
        assert "Traceback" not in log and "never retrieved" not in log
        assert "config reloaded" not in log
        status, body = await server.post(session, KEY_A, {"task": "sleep", "payload": {}})
        assert status == 202
        assert (await server.wait(session, body["job_id"], {"succeeded"}))["attempts"] == 1
