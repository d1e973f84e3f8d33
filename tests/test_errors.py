"""Every HTTP error path answers one body shape, a fitting status and a stable code, with a
message that names the problem. Nothing here is a 500."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api

LARGE = b'{"task": "sleep", "payload": {"pad": "' + b"x" * 2_000_000 + b'"}}'


def cases(image_url: str) -> list[tuple[str, str, dict[str, Any], int, str, str]]:
    """(method, path, request kwargs, status, code, a word the message must contain)."""
    job = "/v1/jobs"
    return [
        ("POST", job, {"data": b"{"}, 400, "invalid_json", "JSON"),
        ("POST", job, {"data": b"[]"}, 422, "invalid_request", "object"),
        ("POST", job, {"json": {"payload": {}}}, 422, "invalid_request", "task"),
        ("POST", job, {"json": {"task": "sleep", "bogus": 1}}, 422, "invalid_request", "bogus"),
        ("POST", job, {"json": {"task": "sleep", "priority": "hi"}}, 422, "invalid_request",
         "priority"),
        ("POST", job, {"json": {"task": "sleep", "priority": 12}}, 422, "invalid_request",
         "priority"),
        ("POST", job, {"json": {"task": "sleep", "priority": "9"}}, 422, "invalid_request",
         "priority"),
        ("POST", job, {"data": b'{"task": "sleep", "payload": {"x": ' + b"[" * 100_000
                       + b"]" * 100_000 + b"}}"}, 400, "invalid_json", "nested"),
        ("POST", job, {"json": {"task": "nope"}}, 422, "unknown_task", "nope"),
        ("POST", job, {"json": {"task": "upscale", "payload": {}}}, 422, "invalid_payload",
         "payload.image_url"),
        ("POST", job, {"json": {"task": "upscale", "payload": {"image_url": image_url,
                                                                 "scale": 3}}},
         422, "invalid_payload", "payload.scale"),
        ("POST", job, {"json": {"task": "upscale", "payload": {"image_url": image_url,
                                                                 "colour": 1}}},
         422, "invalid_payload", "colour"),
        ("POST", job, {"json": {"task": "upscale", "payload": {"image_url": image_url,
                                                                 "max_side": 99999}}},
         422, "invalid_payload", "max_side"),
        ("POST", job, {"json": {"task": "upscale", "payload": {"image_url": "file:///etc/passwd"}}},
         422, "url_not_allowed", "payload.image_url"),
        ("POST", job, {"json": {"task": "sleep", "webhook_events": ["job.exploded"]}}, 422,
         "invalid_payload", "webhook_events"),
        ("POST", job, {"json": {"task": "sleep", "webhook_url": "http://169.254.169.254/"}}, 422,
         "url_not_allowed", "webhook_url"),
        ("POST", job, {"data": LARGE}, 413, "body_too_large", "1048576"),
        ("POST", job, {"json": {"task": "sleep"}, "key": None}, 401, "unauthorized", "X-API-Key"),
        ("POST", job, {"json": {"task": "sleep"}, "key": "wrong"}, 401, "unauthorized",
         "X-API-Key"),
        ("POST", "/upscale", {"data": b"not json"}, 400, "invalid_json", "JSON"),
        ("POST", "/upscale", {"json": {"scale": 2}}, 422, "invalid_payload", "image_url"),
        ("GET", "/v1/jobs?limit=0", {}, 422, "invalid_request", "limit"),
        ("GET", "/v1/jobs?limit=abc", {}, 422, "invalid_request", "limit"),
        ("GET", "/v1/jobs?status=done", {}, 422, "invalid_request", "status"),
        ("GET", "/v1/jobs?cursor=x", {}, 422, "invalid_request", "cursor"),
        ("GET", "/v1/jobs/" + "0" * 32, {}, 404, "job_not_found", "0" * 32),
        ("POST", "/v1/jobs/nope/cancel", {}, 404, "job_not_found", "nope"),
        ("DELETE", "/tasks/nope", {}, 404, "job_not_found", "nope"),
        ("DELETE", "/v1/jobs/nope", {}, 404, "job_not_found", "nope"),
        ("GET", "/v2/anything", {}, 404, "not_found", "/v2/anything"),
        ("GET", "/files/..%5Cahv.sqlite3", {"key": None}, 404, "file_not_found", "sqlite3"),
        ("GET", "/files/abc.jpg", {"key": None}, 404, "file_not_found", "abc.jpg"),
        ("PUT", job, {}, 405, "method_not_allowed", "PUT"),
    ]  # fmt: skip


def check_shape(status: int, body: Any, response: Any) -> None:
    assert response.headers["Content-Type"].startswith("application/json")
    assert set(body) == {"ok", "error"} and body["ok"] is False
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"].replace("_", "").isalpha()
    assert body["error"]["code"] == body["error"]["code"].lower()
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]


async def test_every_error_path_has_the_one_shape(start_server: Any, media: Any) -> None:
    from tests import media as fixtures

    api: Api = await start_server()
    image_url = media.add("a.png", fixtures.astronaut_png(), "image/png")
    for method, path, kwargs, status, code, word in cases(image_url):
        kwargs = dict(kwargs)
        got_status, body, response = await api.call(method, path, **kwargs)
        where = f"{method} {path} {kwargs.get('json', '')}"
        assert got_status == status, (where, body)
        check_shape(got_status, body, response)
        assert body["error"]["code"] == code, (where, body)
        assert word in body["error"]["message"], (where, body)


async def test_conflicts_and_limits(start_server: Any) -> None:
    api: Api = await start_server(
        backends=[{"name": "cpu", "slots": 1, "tasks": ["upscale"]}], queue={"max_depth": 1}
    )
    # A known task that no backend serves.
    status, body, response = await api.call("POST", "/v1/jobs", json={"task": "sleep"})
    assert status == 422 and body["error"]["code"] == "task_unavailable"
    check_shape(status, body, response)
    # Idempotency conflict.
    headers = {"Idempotency-Key": "k1"}
    payload = {"image_url": "http://127.0.0.1:9/a.png"}
    first = {"task": "upscale", "payload": payload}
    status, job, _ = await api.call("POST", "/v1/jobs", json=first, headers=headers)
    assert status == 202
    other = {"task": "upscale", "payload": payload, "priority": 1}
    status, body, response = await api.call("POST", "/v1/jobs", json=other, headers=headers)
    assert status == 409 and body["error"]["code"] == "idempotency_conflict"
    assert job["job_id"] in body["error"]["message"]
    check_shape(status, body, response)
    done = await api.wait(job["job_id"])
    assert done["status"] == "failed" and done["error"]["code"] == "download_failed"
    status, body, response = await api.call("POST", f"/v1/jobs/{job['job_id']}/cancel")
    assert status == 409 and body["error"]["code"] == "job_finished"
    check_shape(status, body, response)
