"""X-API-Key on every request; a client sees only its own jobs, an admin sees all."""

from __future__ import annotations

from tests.conftest import KEY_A, KEY_ADMIN, KEY_B, Api


async def test_missing_or_wrong_key_is_401(api: Api) -> None:
    for key in (None, "", "not-a-key", KEY_A + "x"):
        headers = {} if key is None else {"X-API-Key": key}
        status, body, _ = await api.call("GET", "/v1/jobs", key=None, headers=headers)
        assert status == 401, key
        assert body["error"]["code"] == "unauthorized"


async def test_plain_and_sha256_keys_both_work(api: Api) -> None:
    for key in (KEY_A, KEY_B, KEY_ADMIN):
        status, _, _ = await api.call("GET", "/v1/jobs", key=key)
        assert status == 200


async def test_client_sees_and_touches_only_its_own_jobs(api: Api) -> None:
    mine = await api.submit("sleep", {"seconds": 5, "steps": 100}, key=KEY_A)
    theirs = await api.submit("sleep", {"seconds": 0}, key=KEY_B)
    job_id = mine["job_id"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("DELETE", f"/tasks/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/webhooks"),
    ):
        status, body, _ = await api.call(method, path, key=KEY_B)
        assert status == 404, (method, path)
        assert body["error"]["code"] == "job_not_found"
    _, listing, _ = await api.call("GET", "/v1/jobs", key=KEY_B)
    assert [j["job_id"] for j in listing["jobs"]] == [theirs["job_id"]]
    _, stats, _ = await api.call("GET", "/stats", key=KEY_B)
    assert [j["job_id"] for j in stats["recent"]] == [theirs["job_id"]]
    # The admin sees and touches every job.
    _, listing, _ = await api.call("GET", "/v1/jobs", key=KEY_ADMIN)
    assert {j["job_id"] for j in listing["jobs"]} == {job_id, theirs["job_id"]}
    status, doc, _ = await api.call("GET", f"/v1/jobs/{job_id}", key=KEY_ADMIN)
    assert status == 200 and doc["job_id"] == job_id
    status, _, _ = await api.call("POST", f"/v1/jobs/{job_id}/cancel", key=KEY_ADMIN)
    assert status == 200
    assert (await api.wait(job_id))["status"] == "canceled"


async def test_public_paths_need_no_key(api: Api) -> None:
    status, _, _ = await api.call("GET", "/healthz", key=None)
    assert status == 200
    status, body, _ = await api.call("GET", "/files/" + "0" * 32 + ".jpg", key=None)
    assert status == 404 and body["error"]["code"] == "file_not_found"
