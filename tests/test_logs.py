"""`ahv serve --log-format json`: every stdout and stderr line is one JSON object; each job
event is a line with the job id and task; no key or webhook secret is ever written. Also:
systemd's READY=1."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ahv.logging_setup import setup_logging
from tests.conftest import KEY_A, KEY_ADMIN, SECRET_A, SECRET_ADMIN, SECRET_B, Receiver
from tests.fake_providers import FakeGoogle, FakeOpenAI, google_error, openai_error
from tests.test_crash import ahv_process, job, submit, wait_all_final
from tests.test_providers_google import GOOGLE_KEY
from tests.test_providers_openai import OPENAI_KEY

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

    # Under systemd stdout and stderr go to the same journal: every line of both is JSON,
    # the `ahv listening on` line too (which tests and scripts still find in it).
    out = server.rest_of_stdout()
    (listening,) = [json.loads(line) for line in out]
    assert listening["event"] == "listening" and listening["level"] == "INFO"
    assert listening["msg"] == f"ahv listening on {listening['url']}"
    assert url.rsplit(":", 1)[1] == listening["url"].rsplit(":", 1)[1]
    text = server.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    lines.append(listening)
    assert lines and all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    assert all(line["ts"].endswith("+00:00") for line in lines)
    for secret in (KEY_A, KEY_ADMIN, SECRET_A, SECRET_B, SECRET_ADMIN, hook):
        assert secret not in text
    # `task` is on every job line, the webhook deliveries' too.
    assert all(line.get("task") == "sleep" for line in lines if "job_id" in line)

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
    assert delivered["task"] == "sleep"
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


class CountingStream(io.StringIO):
    """A text stream that counts its write calls."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this")


def test_a_burst_of_lines_is_written_in_few_writes_in_order() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # pytest's own, put back after
    out = CountingStream()
    logs = setup_logging("json", "info", stream=out)
    log = logging.getLogger("ahv.test")
    try:
        log.info("first")
        time.sleep(0.2)  # a lone line is written at once, in a write of its own
        assert out.getvalue().count("\n") == 1 and out.writes == 1
        for i in range(2000):
            log.info("job %d: submitted", i, extra={"job_id": f"j{i}"})
        # A record the formatter cannot write does not end the writer: it says so instead.
        log.info("odd field", extra={"odd": Unprintable()})
        log.info("last")
    finally:
        logs.close()  # writes out everything queued before it
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)
    lines = [json.loads(text) for text in out.getvalue().splitlines()]
    assert [line["job_id"] for line in lines[1:2001]] == [f"j{i}" for i in range(2000)]
    assert lines[-1]["msg"] == "last" and len(lines) == 2003
    odd = lines[-2]
    assert (
        odd["level"] == "ERROR" and "unprintable record" in odd["msg"] and "odd field" in odd["msg"]
    )
    assert out.writes < 200, out.writes  # a write per line would be 2,003


async def test_json_logs_of_provider_jobs_never_hold_a_key(
    ahv_process: Any, aiohttp_server: Any
) -> None:
    # Cloud jobs (several images, a retried 503, refusals) at debug level: each has its
    # lines with job_id, task and the provider's slot, and neither API key appears anywhere,
    # though both providers echo them back in their error messages.
    google = await FakeGoogle.start(aiohttp_server, GOOGLE_KEY)
    openai = await FakeOpenAI.start(aiohttp_server, OPENAI_KEY)
    server = ahv_process(
        queue={"max_attempts": 3, "retry_base_s": 0.01, "retry_max_s": 0.02},
        providers={
            "google": {"api_key": GOOGLE_KEY, "base_url": google.url},
            "openai": {"api_key": OPENAI_KEY, "base_url": openai.url},
        },
    )
    google.script(
        "predict", google_error(400, f"API key not valid: {GOOGLE_KEY}", "INVALID_ARGUMENT")
    )
    echo = f"Incorrect API key provided: {OPENAI_KEY}."
    openai.script(
        "generations",
        openai_error(503, f"overloaded ({OPENAI_KEY})", None, "server_error"),
        openai_error(401, echo, "invalid_api_key", "invalid_request_error"),
    )
    url = await asyncio.to_thread(
        server.start, 20, ["--log-format", "json", "--log-level", "debug"]
    )
    async with aiohttp.ClientSession() as session:
        refused = await submit(session, url, {"task": "gg_image", "payload": {"prompt": "a"}})
        await wait_all_final(session, url, [refused], timeout_s=20)
        made = await submit(
            session, url, {"task": "gg_image", "payload": {"prompt": "b", "number_of_images": 2}}
        )
        revoked = await submit(session, url, {"task": "cx_image", "payload": {"prompt": "c"}})
        docs = await wait_all_final(session, url, [made, revoked], timeout_s=20)
    server.terminate()
    assert await asyncio.to_thread(server.wait_exit, 20) == 0
    assert docs[made]["status"] == "succeeded" and len(docs[made]["result"]["files"]) == 2
    assert docs[revoked]["status"] == "failed"

    text = server.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is JSON
    for secret in (GOOGLE_KEY, OPENAI_KEY, KEY_A, SECRET_A):
        assert secret not in text
    for job_id, provider, attempts, status, code in (
        (refused, "google", 1, "failed", "provider_error"),
        (made, "google", 1, "succeeded", None),
        (revoked, "openai", 2, "failed", "provider_error"),
    ):
        own = [line for line in lines if line.get("job_id") == job_id]
        assert all(line["task"] in ("gg_image", "cx_image") for line in own)
        assert [line.get("event") for line in own if line.get("event") == "submitted"]
        started = [line for line in own if line.get("event") == "started"]
        assert len(started) == attempts
        assert all(line["backend"].startswith(f"{provider}-") for line in started)
        (finished,) = [line for line in own if line.get("event") == "finished"]
        assert (finished["status"], finished["error_code"]) == (status, code)
    (retried,) = [line for line in lines if line.get("event") == "retried"]
    assert retried["job_id"] == revoked and retried["error_code"] == "provider_error"
