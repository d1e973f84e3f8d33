"""`ahv serve --log-format json`: every stderr line is one JSON object; each job event is a
line with the job id; no key or webhook secret is ever written. Also: systemd's READY=1."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ahv.logging_setup import setup_logging
from tests.conftest import KEY_A, KEY_ADMIN, SECRET_A, SECRET_ADMIN, SECRET_B, Receiver
from tests.test_crash import ahv_process, job, submit, wait_all_final

__all__ = ["ahv_process"]


async def test_json_logs_one_line_per_event_with_the_job_id(
    ahv_process: Any, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd's notify socket, as `Type=notify` sets it up.
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    server = ahv_process(queue={"max_attempts": 3, "retry_base_s": 0.01, "retry_max_s": 0.02})
    url = await asyncio.to_thread(server.start, 20, ["--log-format", "json"])
    assert await asyncio.to_thread(notify.recv, 100) == b"READY=1"
    async with aiohttp.ClientSession() as session:
        hook = receiver.url("/ok")
        ok = await submit(
            session, url, {"task": "sleep", "payload": {"seconds": 0}, "webhook_url": hook}
        )
        flaky = await submit(
            session, url, {"task": "sleep", "payload": {"seconds": 0, "transient_failures": 1}}
        )
        failing = await submit(
            session, url, {"task": "sleep", "payload": {"fail_code": "corrupt_input"}}
        )
        docs = await wait_all_final(session, url, [ok, flaky, failing], timeout_s=10)
        await receiver.wait_for("/ok")
        await job(session, url, ok)
        await asyncio.sleep(0.3)  # the delivery's log line follows its 200
    server.terminate()
    assert await asyncio.to_thread(server.wait_exit, 20) == 0
    assert await asyncio.to_thread(notify.recv, 100) == b"STOPPING=1"
    notify.close()

    text = server.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    assert lines and all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert all(line["ts"].endswith("+00:00") for line in lines)
    for secret in (KEY_A, KEY_ADMIN, SECRET_A, SECRET_B, SECRET_ADMIN, hook):
        assert secret not in text

    def events(job_id: str) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("job_id") == job_id]

    by_event = {line.get("event"): line for line in events(ok)}
    assert by_event["submitted"]["task"] == "sleep"
    assert by_event["started"]["backend"].startswith("cpu-")
    assert by_event["started"]["attempt"] == 1
    finished = by_event["finished"]
    assert finished["status"] == "succeeded" and finished["error_code"] is None
    assert finished["duration_s"] == docs[ok]["duration"]
    delivered = by_event["webhook_delivered"]
    assert delivered["status_code"] == 200 and delivered["attempt"] == 1
    assert delivered["webhook_event"] == "job.finished" and delivered["event_id"]
    retried = [line for line in events(flaky) if line.get("event") == "retried"]
    assert len(retried) == 1 and retried[0]["error_code"] == "download_failed"
    assert [line["attempt"] for line in events(flaky) if line.get("event") == "started"] == [1, 2]
    (failed,) = [line for line in events(failing) if line.get("event") == "finished"]
    assert failed["status"] == "failed" and failed["error_code"] == "corrupt_input"


def test_json_formatter_keeps_tracebacks_in_their_own_field(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # pytest's own, put back after
    out = (tmp_path / "log.jsonl").open("w")
    logs = setup_logging("json", "info", stream=out)
    log = logging.getLogger("ahv.test")
    try:
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("job %s: crashed", "j1", extra={"job_id": "j1", "path": tmp_path})
        log.debug("not logged at info")
    finally:
        logs.close()
        out.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)
    (line,) = [json.loads(text) for text in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert line["msg"] == "job j1: crashed" and line["job_id"] == "j1"
    assert line["level"] == "ERROR" and "ValueError: bad" in line["exc"]
    assert line["path"] == str(tmp_path)  # anything else is written as its str()
