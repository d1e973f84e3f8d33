"""Cancel, timeout, retries, failures and delete, seen through the API and the webhooks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.conftest import Api, Receiver

ONE_SLOT = [{"name": "cpu", "slots": 1, "tasks": ["sleep"]}]


async def test_cancel_queued_job_is_immediate(start_server: Any, receiver: Receiver) -> None:
    api = await start_server(backends=ONE_SLOT)
    blocker = await api.submit("sleep", {"seconds": 0.5, "steps": 50})
    queued = await api.submit("sleep", {"seconds": 0}, webhook_url=receiver.url("/ok"))
    status, doc, _ = await api.call("POST", f"/v1/jobs/{queued['job_id']}/cancel")
    assert status == 200
    assert doc["status"] == "canceled" and doc["ok"] is False and doc["started_at"] is None
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "canceled" and delivery.json["job_id"] == queued["job_id"]
    # Canceling again is harmless; canceling a finished job is a conflict.
    status, again, _ = await api.call("POST", f"/v1/jobs/{queued['job_id']}/cancel")
    assert status == 200 and again["status"] == "canceled"
    assert (await api.wait(blocker["job_id"]))["status"] == "succeeded"
    status, body, _ = await api.call("POST", f"/v1/jobs/{blocker['job_id']}/cancel")
    assert status == 409 and body["error"]["code"] == "job_finished"


async def test_cancel_running_job_stops_at_next_checkpoint(api: Api, receiver: Receiver) -> None:
    job = await api.submit("sleep", {"seconds": 30, "steps": 300}, webhook_url=receiver.url("/ok"))
    await api.wait(job["job_id"], frozenset({"running"}))
    started = time.monotonic()
    status, _, _ = await api.call("POST", f"/v1/jobs/{job['job_id']}/cancel")
    assert status == 200
    done = await api.wait(job["job_id"], timeout_s=5)
    assert done["status"] == "canceled"
    assert time.monotonic() - started < 2  # a 30 s job, stopped between two 0.1 s steps
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "canceled"
    # The slot is free again.
    quick = await api.submit("sleep", {"seconds": 0})
    assert (await api.wait(quick["job_id"]))["status"] == "succeeded"


async def test_timeout_fails_the_job(start_server: Any) -> None:
    api = await start_server(queue={"timeouts_s": {"sleep": 0.3}})
    job = await api.submit("sleep", {"seconds": 10, "steps": 100})
    done = await api.wait(job["job_id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "timeout"
    assert "0.3" in done["error"]["message"]
    assert done["duration"] < 2


async def test_transient_failures_are_retried_with_backoff(api: Api) -> None:
    job = await api.submit("sleep", {"seconds": 0, "transient_failures": 2})
    done = await api.wait(job["job_id"])
    assert done["status"] == "succeeded"
    assert done["attempts"] == 3


async def test_transient_failures_stop_after_max_attempts(api: Api, receiver: Receiver) -> None:
    job = await api.submit(
        "sleep", {"seconds": 0, "transient_failures": 5}, webhook_url=receiver.url("/ok")
    )
    done = await api.wait(job["job_id"])
    assert done["status"] == "failed" and done["attempts"] == 3
    assert done["error"]["code"] == "download_failed"
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "failed"
    assert delivery.json["error"] == done["error"] and delivery.json["result"] is None


async def test_permanent_error_rejected_and_crash(api: Api) -> None:
    failed = await api.submit("sleep", {"seconds": 0, "fail_code": "corrupt_input"})
    rejected = await api.submit("sleep", {"seconds": 0, "fail_code": "nsfw_blocked"})
    crashed = await api.submit("sleep", {"seconds": 0, "crash": True})
    done = await api.wait(failed["job_id"])
    assert (done["status"], done["error"]["code"], done["attempts"]) == (
        "failed",
        "corrupt_input",
        1,
    )
    done = await api.wait(rejected["job_id"])
    assert done["status"] == "rejected" and done["error"]["code"] == "nsfw_blocked"
    done = await api.wait(crashed["job_id"])
    assert done["status"] == "failed" and done["error"]["code"] == "internal_error"
    assert "Traceback" not in done["error"]["message"]


async def test_delete_removes_job_and_its_files(api: Api, tmp_path: Path) -> None:
    job = await api.submit("sleep", {"seconds": 0, "write_file": True})
    done = await api.wait(job["job_id"])
    async with api.session.get(done["result"]["url"]) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
    path = api.orchestrator.files_dir / done["result"]["filename"]
    assert path.exists()
    status, body, _ = await api.call("DELETE", f"/tasks/{job['job_id']}")
    assert status == 200 and body == {"ok": True, "job_id": job["job_id"], "deleted": True}
    assert not path.exists()
    status, body, _ = await api.call("GET", f"/v1/jobs/{job['job_id']}")
    assert status == 404
    async with api.session.get(done["result"]["url"]) as response:
        assert response.status == 404


async def test_delete_running_job_cancels_it_first(api: Api) -> None:
    job = await api.submit("sleep", {"seconds": 30, "steps": 300, "write_file": True})
    await api.wait(job["job_id"], frozenset({"running"}))
    status, _, _ = await api.call("DELETE", f"/v1/jobs/{job['job_id']}")
    assert status == 200
    status, _, _ = await api.call("GET", f"/v1/jobs/{job['job_id']}")
    assert status == 404
    assert list(api.orchestrator.files_dir.iterdir()) == []
    assert api.orchestrator.scheduler.running_count == 0


async def test_started_and_progress_events_only_when_asked(api: Api, receiver: Receiver) -> None:
    plain = await api.submit("sleep", {"seconds": 0.3}, webhook_url=receiver.url("/plain"))
    chatty = await api.submit(
        "sleep",
        {"seconds": 0.3},
        webhook_url=receiver.url("/chatty"),
        webhook_events=["job.started", "job.progress"],
    )
    await receiver.wait_for("/plain")
    finished = await receiver.wait_for("/chatty", event="job.finished")
    assert [d.json["event"] for d in receiver.at("/plain")] == ["job.finished"]
    events = [d.json["event"] for d in receiver.at("/chatty")]
    assert events[0] == "job.started" and "job.progress" in events
    assert events[-1] == "job.finished"
    progress = [
        d.json["progress"] for d in receiver.at("/chatty") if d.json["event"] == "job.progress"
    ]
    assert progress == sorted(progress) and all(0 < p < 100 for p in progress)
    assert finished[0].json["job_id"] == chatty["job_id"] != plain["job_id"]


async def test_a_task_that_skips_checkpoints_still_ends_its_job(start_server: Any) -> None:
    api = await start_server(
        backends=ONE_SLOT, queue={"timeouts_s": {"sleep": 0.2}, "cancel_wait_s": 0.3}
    )
    stubborn = await api.submit("sleep", {"seconds": 2, "steps": 4, "ignore_cancel": True})
    waiting = await api.submit("sleep", {"seconds": 0})
    began = time.monotonic()
    done = await api.wait(stubborn["job_id"], timeout_s=5)
    assert done["status"] == "failed" and done["error"]["code"] == "timeout"
    assert time.monotonic() - began < 1.5  # not the 2 s the thread keeps running
    # The thread still holds the slot: the next job waits for it, never running beside it.
    _, diag, _ = await api.call("GET", "/diag/backends")
    assert diag["backends"][0]["busy"] == 1
    assert (await api.job(waiting["job_id"]))["status"] == "queued"
    after = await api.wait(waiting["job_id"], timeout_s=5)
    assert after["status"] == "succeeded"
    assert after["started_at_ms"] - done["finished_at_ms"] > 1000
