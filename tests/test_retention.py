"""Retention: result files and finished job records expire (410 for an expired file), and the
disk guard refuses new jobs with 503 while running ones finish."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ahv.config import Config, ConfigError, parse_config
from ahv.jobs import JobRow
from ahv.reload import live_config
from ahv.store import _INSERT_SQL, _MIGRATIONS, _insert_values
from tests.conftest import KEY_A, KEY_B, Api, Receiver, StartServer, base_config, merge
from tests.sse import SseReader


async def _file_status(api: Api, url: str) -> tuple[int, Any]:
    status, body, _ = await api.call("GET", url.removeprefix(api.url), key=None)
    return status, body


async def _until(check: Any, timeout_s: float = 10) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _rows(db: Path, sql: str, *params: Any) -> list[Any]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


async def test_files_then_records_expire_with_a_short_retention(
    start_server: StartServer, receiver: Receiver
) -> None:
    api = await start_server(retention={"files_s": 0.5, "jobs_s": 1.5, "sweep_interval_s": 0.05})
    hook = receiver.url("/ok")
    job = await api.submit("sleep", {"seconds": 0, "write_file": True}, webhook_url=hook)
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded"
    # The document says when the files go: 0.5 s after the job ended.
    assert doc["expires_at_ms"] - doc["finished_at_ms"] == 500
    assert doc["expires_at"].endswith("+00:00")
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["expires_at_ms"] == doc["expires_at_ms"]  # and so does the webhook
    url = doc["result"]["url"]
    name = doc["result"]["filename"]
    path = api.orchestrator.files_dir / name
    assert (await _file_status(api, url))[0] == 200 and path.is_file()

    async def expired() -> Any:
        status, body = await _file_status(api, url)
        return body if status == 410 else None

    body = await _until(expired)
    assert body["error"]["code"] == "file_expired" and name in body["error"]["message"]
    assert not path.exists()
    assert (await api.job(job["job_id"]))["status"] == "succeeded"  # the record outlives it

    async def record_gone() -> bool:
        status, _, _ = await api.call("GET", f"/v1/jobs/{job['job_id']}")
        return status == 404

    await _until(record_gone)
    # With the record, its tombstone and its webhook delivery rows are gone: a plain 404.
    status, body = await _file_status(api, url)
    assert status == 404 and body["error"]["code"] == "file_not_found"
    db = api.orchestrator.store._path
    assert _rows(db, "SELECT COUNT(*) FROM outbox WHERE job_id = ?", job["job_id"]) == [(0,)]
    assert _rows(db, "SELECT COUNT(*) FROM expired_files") == [(0,)]


async def test_per_task_retention_and_pending_webhooks(
    start_server: StartServer, receiver: Receiver
) -> None:
    # The sweep runs with explicit times here: days pass in a moment.
    api = await start_server(
        retention={
            "files_s": 60,
            "jobs_s": 7200,
            "sweep_interval_s": 3600,
            "tasks": {"sleep": {"files_s": 3600}},  # jobs_s from the section
        },
        # A receiver that fails the first attempt and is retried much later: pending.
        webhooks={"retry_base_s": 300, "retry_max_s": 600},
    )
    kept = await api.wait((await api.submit("sleep", {"seconds": 0, "write_file": True}))["job_id"])
    pending = await api.wait(
        (
            await api.submit(
                "sleep",
                {"seconds": 0, "write_file": True},
                webhook_url=receiver.url("/fail503x2/a"),
            )
        )["job_id"]
    )
    await receiver.wait_for("/fail503x2/a")
    assert kept["expires_at_ms"] - kept["finished_at_ms"] == 3_600_000  # the task's own rule
    sweeper = api.orchestrator.sweeper
    files = api.orchestrator.files_dir
    finished_us = kept["finished_at_ms"] * 1000
    # Past the section's 60 s, within the task's 3600 s: kept.
    report = await sweeper.sweep(now=finished_us + 1800 * 10**6)
    assert report.files == 0 and (files / kept["result"]["filename"]).is_file()
    report = await sweeper.sweep(now=finished_us + 3700 * 10**6)
    assert report.files == 2 and not (files / kept["result"]["filename"]).exists()
    # Past jobs_s: the record goes, but not the one whose webhook is still being retried.
    report = await sweeper.sweep(now=finished_us + 8000 * 10**6)
    assert report.jobs == 1
    status, _, _ = await api.call("GET", f"/v1/jobs/{kept['job_id']}")
    assert status == 404
    doc = await api.job(pending["job_id"])
    assert doc["status"] == "succeeded"
    status, body, _ = await api.call("GET", f"/v1/jobs/{pending['job_id']}/webhooks")
    assert body["deliveries"][0]["state"] == "pending"
    status, body = await _file_status(api, pending["result"]["url"])
    assert status == 410
    # A job deleted through the API takes its tombstone along: its file is a plain 404.
    status, _, _ = await api.call("DELETE", f"/v1/jobs/{pending['job_id']}")
    assert status == 200
    status, body = await _file_status(api, pending["result"]["url"])
    assert status == 404


async def test_event_streams_hear_of_expired_records(start_server: StartServer) -> None:
    # A record removed by retention is gone like a deleted job: the live streams (the
    # dashboard's) say `deleted`, so nothing keeps showing a job that is now a 404.
    api = await start_server(
        retention={"files_s": 60, "jobs_s": 120, "sweep_interval_s": 3600},
        server={"sse_keepalive_s": 0.2},
    )
    async with (
        api.session.get(api.url + "/v1/events", headers={"X-API-Key": KEY_A}) as response,
        api.session.get(api.url + "/v1/events", headers={"X-API-Key": KEY_B}) as other_response,
    ):
        stream, other = SseReader(response), SseReader(other_response)
        for reader in (stream, other):
            assert (await reader.next()).event == "hello"  # type: ignore[union-attr]
        job = await api.submit("sleep", {"seconds": 0, "write_file": True})
        doc = await api.wait(job["job_id"])
        report = await api.orchestrator.sweeper.sweep(
            now=doc["finished_at_ms"] * 1000 + 121 * 10**6
        )
        assert report.jobs == 1
        seen = []
        deadline = time.monotonic() + 10
        while not seen or seen[-1].event != "deleted":
            assert time.monotonic() < deadline, [m.event for m in seen]
            message = await stream.next()
            assert message is not None
            if message.event is not None:
                seen.append(message)
        assert seen[-1].json == {"job_id": job["job_id"]}
        # Another client's stream never heard of the job, nor of its end.
        assert (await other.next()).comment == "keepalive"  # type: ignore[union-attr]


async def test_a_reloaded_retention_sweeps_at_once(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    # An hour between sweeps; a reload that shortens files_s (to free disk space) sweeps now.
    caplog.set_level(logging.INFO, logger="ahv.retention")
    api = await start_server(retention={"files_s": 3600, "jobs_s": 7200, "sweep_interval_s": 3600})
    doc = await api.wait((await api.submit("sleep", {"seconds": 0, "write_file": True}))["job_id"])
    path = api.orchestrator.files_dir / doc["result"]["filename"]
    await asyncio.sleep(0.2)  # the job ended 0.2 s ago: past the new files_s below
    assert path.is_file()
    old = api.orchestrator.config
    shorter = msgspec.structs.replace(old.retention, files_s=0.1)
    api.orchestrator.apply_config(msgspec.structs.replace(old, retention=shorter))

    async def removed() -> bool:
        return not path.exists()

    await _until(removed, timeout_s=5)
    assert (await _file_status(api, doc["result"]["url"]))[0] == 410

    async def swept() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", None) == "retention_swept"]

    (line,) = await _until(swept)  # its log line, with the counts as fields
    assert (line.files_removed, line.jobs_removed) == (1, 0)  # type: ignore[attr-defined]


async def test_a_database_from_before_retention_is_migrated(
    start_server: StartServer, tmp_path: Path
) -> None:
    db = tmp_path / "data" / "ahv.sqlite3"
    db.parent.mkdir()
    finished_us = time.time_ns() // 1000 - 10 * 10**6
    old_job = JobRow(
        seq=1,
        id="0" * 32,
        owner="client-a",
        task="sleep",
        status="succeeded",
        priority=5,
        rank_ms=0,
        payload=b"{}",
        max_attempts=3,
        created_us=finished_us - 10**6,
        queued_us=finished_us - 10**6,
        started_us=finished_us - 10**5,
        finished_us=finished_us,
        predict_time=1.0,
        result={"ok": True, "status": "succeeded", "url": None, "filename": None, "meta": {}},
    )
    with sqlite3.connect(db) as conn:  # the schema as the first release left it
        conn.executescript(f"{_MIGRATIONS[0]}; PRAGMA user_version=1;")
        conn.execute(_INSERT_SQL, _insert_values(old_job))
    api = await start_server(retention={"files_s": 60, "jobs_s": 120})
    doc = await api.job(old_job.id)
    assert doc["expires_at_ms"] == finished_us // 1000 + 60_000
    report = await api.orchestrator.sweeper.sweep(now=finished_us + 121 * 10**6)
    assert report.jobs == 1
    assert _rows(db, "PRAGMA user_version") == [(len(_MIGRATIONS),)]


async def test_queued_and_running_jobs_are_never_swept(start_server: StartServer) -> None:
    api = await start_server(
        retention={"files_s": 1, "jobs_s": 1},
        backends=[{"name": "cpu", "slots": 1, "tasks": ["sleep"]}],
    )
    running = await api.submit("sleep", {"seconds": 2, "steps": 20, "write_file": True})
    queued = await api.submit("sleep", {"seconds": 0})
    await api.wait(running["job_id"], frozenset({"running"}))
    report = await api.orchestrator.sweeper.sweep(now=time.time_ns() // 1000 + 10**12)
    assert report.jobs == 0 and report.files == 0
    assert (await api.job(queued["job_id"]))["expires_at"] is None
    assert (await api.wait(running["job_id"]))["status"] == "succeeded"
    assert (await api.wait(queued["job_id"]))["status"] == "succeeded"


async def test_disk_guard_refuses_new_jobs_and_lets_running_ones_finish(
    start_server: StartServer, tmp_path: Path
) -> None:
    api = await start_server()
    running = await api.submit("sleep", {"seconds": 1, "steps": 10})
    await api.wait(running["job_id"], frozenset({"running"}))
    old = api.orchestrator.config
    huge = msgspec.structs.replace(old.limits, min_free_disk_mb=10**12)  # a million TB
    api.orchestrator.apply_config(msgspec.structs.replace(old, limits=huge))
    for path in ("/v1/jobs", "/test/sleep"):
        body = {"task": "sleep", "payload": {"seconds": 0}} if path == "/v1/jobs" else {}
        status, answer, response = await api.call("POST", path, json=body)
        assert status == 503, answer
        assert answer["error"]["code"] == "disk_full"
        message = answer["error"]["message"]
        assert "MB free" in message and "1000000000000 MB" in message
        assert "limits.min_free_disk_mb" in message
        assert int(response.headers["Retry-After"]) >= 1
    # Reading and polling still work, and the job that was running finishes.
    assert (await api.wait(running["job_id"]))["status"] == "succeeded"
    api.orchestrator.apply_config(old)
    accepted = await api.submit("sleep", {"seconds": 0})
    assert (await api.wait(accepted["job_id"]))["status"] == "succeeded"


def test_retention_settings_are_checked() -> None:
    key = '[[keys]]\nname = "a"\nkey = "k"\nwebhook_secret = "0123456789abcdef"\n'
    with pytest.raises(ConfigError, match=r"retention\.jobs_s"):
        parse_config(key + "[retention]\nfiles_s = 100\njobs_s = 10\n")
    with pytest.raises(ConfigError, match=r"retention\.tasks\.upscale\.jobs_s"):
        parse_config(key + "[retention]\njobs_s = 100\n[retention.tasks.upscale]\nfiles_s = 1000\n")
    with pytest.raises(ConfigError, match=r"retention\.sweep_interval_s"):
        parse_config(key + "[retention]\nsweep_interval_s = 0\n")
    assert parse_config(key + "[retention]\nfiles_s = 0\njobs_s = 0\n").retention.files_s == 0


def test_reload_keeps_what_needs_a_restart(tmp_path: Path) -> None:
    old = msgspec.convert(base_config(tmp_path), Config)
    new = msgspec.convert(
        merge(
            base_config(tmp_path / "elsewhere"),
            {
                "limits": {"min_free_disk_mb": 5},
                "backends": [
                    {"name": "cpu", "device": "cuda:0", "slots": 4, "tasks": ["sleep"]},
                    {"name": "gpu9", "device": "cuda:9", "tasks": ["sleep"]},
                ],
            },
        ),
        Config,
    )
    live, restart = live_config(old, new)
    assert restart == [
        "server.data_dir",
        "backends.gpu9 (added)",
        "backends.cpu.device",
    ]
    assert live.server.data_dir == old.server.data_dir
    assert live.limits.min_free_disk_mb == 5
    (backend,) = live.backends
    assert (backend.device, backend.slots, backend.tasks) == ("cpu", 4, ["sleep"])
