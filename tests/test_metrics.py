"""`GET /metrics`: Prometheus text that matches what really happened (jobs, webhook attempts,
slots, batched model runs), its access rules, and one registry per server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

import ahv
from tests import media as fixtures
from tests.conftest import KEY_A, KEY_ADMIN, Api, MediaServer, Receiver, StartServer
from tests.test_batching import matting_dir

__all__ = ["matting_dir"]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(api: Api, **headers: str) -> Samples:
    status, body, response = await api.call(
        "GET", "/metrics", key=headers.pop("key", KEY_ADMIN), headers=headers
    )
    assert status == 200, body
    assert response.headers["Content-Type"].startswith("text/plain")
    assert isinstance(body, bytes)
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def settled(api: Api, job_id: str, state: str) -> None:
    for _ in range(200):
        _, body, _ = await api.call("GET", f"/v1/jobs/{job_id}/deliveries")
        if body["deliveries"] and body["deliveries"][0]["state"] == state:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(body)


async def test_metrics_count_what_happened(api: Api, receiver: Receiver) -> None:
    ok = [
        await api.submit("sleep", {"seconds": 0.05}, webhook_url=receiver.url("/ok")),
        await api.submit("sleep", {"seconds": 0.05}, webhook_url=receiver.url("/fail503x2/m")),
        await api.submit("sleep", {"seconds": 0.05}),
    ]
    bad = await api.submit(
        "sleep", {"seconds": 0.05, "fail_code": "corrupt_input"}, webhook_url=receiver.url("/gone")
    )
    docs = [await api.wait(job["job_id"]) for job in [*ok, bad]]
    assert [d["status"] for d in docs] == ["succeeded"] * 3 + ["failed"]
    await settled(api, ok[0]["job_id"], "delivered")
    await settled(api, ok[1]["job_id"], "delivered")
    await settled(api, bad["job_id"], "failed")
    samples = await scrape(api)
    assert value(samples, "ahv_jobs_submitted_total", task="sleep") == 4
    assert value(samples, "ahv_jobs_submitted_total", task="upscale") == 0
    assert value(samples, "ahv_jobs_finished_total", task="sleep", status="succeeded") == 3
    assert value(samples, "ahv_jobs_finished_total", task="sleep", status="failed") == 1
    assert value(samples, "ahv_job_wait_seconds_count", task="sleep") == 4
    assert value(samples, "ahv_job_run_seconds_count", task="sleep") == 4
    # Each ran about 0.05 s: all four in the 0.05-0.25 s range of buckets, none above 10 s.
    assert value(samples, "ahv_job_run_seconds_bucket", task="sleep", le="0.05") == 0
    assert value(samples, "ahv_job_run_seconds_bucket", task="sleep", le="10.0") == 4
    run_sum = value(samples, "ahv_job_run_seconds_sum", task="sleep")
    assert 0.2 <= run_sum < 2
    assert value(samples, "ahv_queue_depth") == 0
    assert value(samples, "ahv_queue_depth_by_task", task="sleep") == 0
    assert value(samples, "ahv_jobs_running") == 0
    assert value(samples, "ahv_backend_slots", backend="cpu") == 2
    assert value(samples, "ahv_backend_slots_busy", backend="cpu") == 0
    # /ok: 1 delivered; /fail503x2: 2 failed attempts then delivered; /gone (410): gave up.
    assert value(samples, "ahv_webhook_attempts_total", result="delivered") == 2
    assert value(samples, "ahv_webhook_attempts_total", result="failed_attempt") == 2
    assert value(samples, "ahv_webhook_attempts_total", result="gave_up") == 1
    assert value(samples, "ahv_webhook_deliveries_failed_total") == 1
    assert value(samples, "ahv_info", version=ahv.__version__) == 1


async def test_queue_depth_and_busy_slots_while_jobs_wait(start_server: StartServer) -> None:
    api = await start_server(backends=[{"name": "cpu", "slots": 1, "tasks": ["sleep"]}])
    running = await api.submit("sleep", {"seconds": 30, "steps": 300})
    await api.wait(running["job_id"], frozenset({"running"}))
    waiting = [await api.submit("sleep", {"seconds": 0}) for _ in range(3)]
    samples = await scrape(api)
    assert value(samples, "ahv_queue_depth") == 3
    assert value(samples, "ahv_queue_depth_by_task", task="sleep") == 3
    assert value(samples, "ahv_jobs_running") == 1
    assert value(samples, "ahv_backend_slots", backend="cpu") == 1
    assert value(samples, "ahv_backend_slots_busy", backend="cpu") == 1
    # The queued ones first: canceling the running one first frees the slot, and the next
    # queued job could be claimed before its own cancel arrives.
    for job in [*waiting, running]:
        await api.call("POST", f"/v1/jobs/{job['job_id']}/cancel")
    await api.wait(running["job_id"])
    samples = await scrape(api)
    assert value(samples, "ahv_queue_depth") == 0
    assert value(samples, "ahv_jobs_finished_total", task="sleep", status="canceled") == 4
    # Canceled while queued: they never ran, so only the one that ran has a run time.
    assert value(samples, "ahv_job_run_seconds_count", task="sleep") == 1


async def test_metrics_access(start_server: StartServer) -> None:
    api = await start_server(server={"metrics_token": "scrape-token-123"})
    status, body, _ = await api.call("GET", "/metrics", key=KEY_A)
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body, _ = await api.call("GET", "/metrics", key=None)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body, _ = await api.call("GET", "/metrics", key="not-a-key")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    bearer = {"Authorization": "Bearer scrape-token-123"}
    status, body, _ = await api.call("GET", "/metrics", key=None, headers=bearer)
    assert status == 200 and b"ahv_info" in body
    wrong = {"Authorization": "Bearer scrape-token-124"}
    status, body, _ = await api.call("GET", "/metrics", key=None, headers=wrong)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    # A client key with the right token is let in by the token.
    status, _, _ = await api.call("GET", "/metrics", key=KEY_A, headers=bearer)
    assert status == 200


async def test_without_a_token_bearer_is_not_accepted(api: Api) -> None:
    bearer = {"Authorization": "Bearer "}
    status, body, _ = await api.call("GET", "/metrics", key=None, headers=bearer)
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_each_server_has_its_own_registry(start_server: StartServer, tmp_path: Path) -> None:
    first = await start_server()
    await first.wait((await first.submit("sleep", {"seconds": 0}))["job_id"])
    second = await start_server(server={"data_dir": str(tmp_path / "other")})
    assert value(await scrape(first), "ahv_jobs_submitted_total", task="sleep") == 1
    assert value(await scrape(second), "ahv_jobs_submitted_total", task="sleep") == 0
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "ahv_" not in default


async def test_batch_sizes_of_batched_model_runs(
    start_server: Any, matting_dir: Path, media: MediaServer
) -> None:
    api: Api = await start_server(
        models={
            "dir": str(matting_dir),
            "files": {"batch_matting": {"file": "batch_matting.onnx"}},
        },
        images={"matting": "batch_matting"},
        batching={"max_batch": 8, "max_wait_ms": 50},
        backends=[{"name": "cpu", "slots": 6, "tasks": ["remove_background"]}],
    )
    url = media.add("a.png", fixtures.astronaut_png())
    jobs = [await api.submit("remove_background", {"image_url": url}) for _ in range(6)]
    for job in jobs:
        assert (await api.wait(job["job_id"], timeout_s=60))["status"] == "succeeded"
    _, diag, _ = await api.call("GET", "/diag/backends")
    stats = diag["backends"][0]["batching"]["batch_matting"]
    samples = await scrape(api)
    assert value(samples, "ahv_batch_size_count", model="batch_matting") == stats["batches"]
    assert value(samples, "ahv_batch_size_sum", model="batch_matting") == stats["items"] == 6
    assert (
        value(samples, "ahv_batch_size_bucket", model="batch_matting", le="+Inf")
        == (stats["batches"])
    )
    assert (
        value(samples, "ahv_batch_size_bucket", model="batch_matting", le="8") == (stats["batches"])
    )
