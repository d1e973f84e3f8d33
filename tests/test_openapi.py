"""`GET /openapi.json`: every route of the live app is described, the document is valid
OpenAPI 3.1, task payloads come from the task registry, and real responses (and a real
webhook body) validate against the schemas it publishes."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate as validate_spec

from tests.conftest import KEY_A, KEY_ADMIN, Api, Receiver, StartServer
from tests.fake_providers import FakeGoogle

SKIPPED_METHODS = frozenset({"HEAD", "OPTIONS"})
GOOGLE_KEY = "AIza-openapi-test-key"


async def document(api: Api) -> dict[str, Any]:
    status, doc, response = await api.call("GET", "/openapi.json", key=None)
    assert status == 200, doc
    assert response.content_type == "application/json"
    return dict(doc)


def schema_of(doc: dict[str, Any], ref_or_schema: dict[str, Any]) -> dict[str, Any]:
    """A component, by `$ref`."""
    name = ref_or_schema["$ref"].removeprefix("#/components/schemas/")
    return dict(doc["components"]["schemas"][name])


def check_response(doc: dict[str, Any], method: str, path: str, status: int, body: Any) -> None:
    """`body`, answered with `status`, is what the document says `method path` answers."""
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered an undocumented {status}"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    check_schema(doc, schema, body)


def check_schema(doc: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    # Refs point at #/components/...: validate with the components next to the schema.
    OAS31Validator({**schema, "components": doc["components"]}).validate(instance)


async def test_every_route_of_the_app_is_described_and_nothing_else(api: Api) -> None:
    doc = await document(api)
    described = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {
        (route.method, route.resource.canonical)
        for route in api.server.app.router.routes()
        if route.method not in SKIPPED_METHODS and route.resource is not None
    }
    missing = served - described
    assert not missing, f"describe these routes in ahv/http/openapi_routes.py ROUTES: {missing}"
    assert described - served == set()
    assert ("GET", "/openapi.json") in described  # served without a key (see document())


async def test_the_document_is_valid_openapi_3_1(api: Api) -> None:
    doc = await document(api)
    assert doc["openapi"] == "3.1.0"
    validate_spec(doc)
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/files/{name}"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/v1/jobs"]["post"]  # the document-wide key
    # The one error body, for the statuses each route can answer.
    submit = doc["paths"]["/v1/jobs"]["post"]["responses"]
    for status in ("400", "401", "409", "413", "422", "429", "503"):
        assert submit[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
    assert "Retry-After" in submit["429"]["headers"]
    assert set(doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]) == {"200", "401", "404"}
    assert set(doc["webhooks"]) == {"job.finished", "job.started", "job.progress"}


async def test_submit_and_direct_bodies_come_from_the_task_registry(api: Api) -> None:
    doc = await document(api)
    registry = api.orchestrator.registry
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    union = body["schema"]
    assert union["discriminator"]["propertyName"] == "task"
    assert set(union["discriminator"]["mapping"]) == set(registry)  # the plugin's sleep too
    assert len(union["oneOf"]) == len(registry)
    for task, ref in union["discriminator"]["mapping"].items():
        variant = schema_of(doc, {"$ref": ref})
        assert variant["properties"]["task"] == {"enum": [task]}
        payload = schema_of(doc, variant["properties"]["payload"])
        assert payload["title"] == registry[task].payload_type.__name__
        # SubmitRequest's own fields, as it decodes them.
        assert set(variant["properties"]) == {
            "task",
            "payload",
            "webhook_url",
            "priority",
            "webhook_events",
        }
        assert variant["properties"]["priority"]["anyOf"][0] == {
            "type": "integer",
            "minimum": 0,
            "maximum": 9,
        }
    # A payload that `{}` satisfies may be left out; upscale's needs image_url.
    assert (
        "payload"
        not in schema_of(doc, {"$ref": union["discriminator"]["mapping"]["sleep"]})["required"]
    )
    assert (
        "payload"
        in schema_of(doc, {"$ref": union["discriminator"]["mapping"]["upscale"]})["required"]
    )
    for spec in registry.values():
        if spec.direct_path is None:
            continue
        operation = doc["paths"][spec.direct_path]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema_of(doc, schema)["title"] == spec.payload_type.__name__
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/JobDocument"}
    faceswap = doc["paths"]["/faceswap"]["post"]["requestBody"]["content"]["application/json"]
    assert schema_of(doc, faceswap["schema"])["title"] == "FaceSwapPayload"


async def test_servers_is_the_address_asked(api: Api) -> None:
    assert (await document(api))["servers"] == [{"url": api.url}]


async def test_servers_is_the_public_url_when_configured(start_server: Any) -> None:
    api = await start_server(server={"public_url": "https://ahv.example.com/"})
    assert (await document(api))["servers"] == [{"url": "https://ahv.example.com"}]


async def test_real_responses_and_webhooks_match_the_document(api: Api, receiver: Receiver) -> None:
    doc = await document(api)

    async def call(
        method: str, path: str, template: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        status, body, _ = await api.call(method, path, **kwargs)
        check_response(doc, method, template or path.split("?")[0], status, body)
        return dict(body)

    queued = await call(
        "POST",
        "/v1/jobs",
        json={
            "task": "sleep",
            "payload": {"seconds": 0.05, "write_file": True},
            "webhook_url": receiver.url("/ok"),
            "webhook_events": ["job.started", "job.finished"],
        },
    )
    assert queued["status"] == "queued" and "queue_position" in queued
    failing = await api.submit("sleep", {"seconds": 0.01, "fail_code": "provider_error"})
    succeeded = await api.wait(queued["job_id"])
    failed = await api.wait(failing["job_id"])
    assert succeeded["result"]["url"] and failed["error"]["code"] == "provider_error"
    for job in (succeeded, failed):
        await call("GET", f"/v1/jobs/{job['job_id']}", "/v1/jobs/{job_id}")
    await call("GET", "/v1/jobs?limit=5")
    await call("GET", "/stats")
    await call("GET", "/diag/backends")
    await call("GET", "/healthz", key=None)
    await call("POST", "/test/sleep", json={"seconds": 0.01})
    await call("POST", f"/v1/jobs/{failed['job_id']}/cancel", "/v1/jobs/{job_id}/cancel")
    deliveries = await call(
        "GET", f"/v1/jobs/{succeeded['job_id']}/webhooks", "/v1/jobs/{job_id}/webhooks"
    )
    assert deliveries["deliveries"]
    await call("GET", "/v1/jobs/nope", "/v1/jobs/{job_id}")
    await call("GET", "/v1/jobs", key="wrong")
    await call("POST", "/v1/jobs", json={"task": "nope"})
    await call("GET", "/v1/jobs?status=lost", key=KEY_ADMIN)
    await call("DELETE", f"/tasks/{failed['job_id']}", "/tasks/{job_id}")

    # The webhook bodies: the envelope, then the job document's fields.
    for event in ("job.started", "job.finished"):
        (delivery,) = await receiver.wait_for("/ok", event=event)
        schema = doc["webhooks"][event]["post"]["requestBody"]["content"]["application/json"]
        check_schema(doc, schema["schema"], delivery.json)


async def test_405_says_which_methods_are_allowed(api: Api) -> None:
    # Found by schemathesis' unsupported_method check: the error body used to drop `Allow`.
    status, body, response = await api.call("PUT", "/v1/jobs/nope")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(",")) >= {"GET", "DELETE"}
    status, _, response = await api.call("PATCH", "/openapi.json", key=None)
    assert status == 405 and "GET" in response.headers["Allow"]


async def test_cloud_jobs_stats_backends_and_deliveries_match_the_document(
    start_server: StartServer, aiohttp_server: Any, receiver: Receiver
) -> None:
    google = await FakeGoogle.start(aiohttp_server, GOOGLE_KEY)
    # Google set up, OpenAI not: a provider backend and an unavailable provider.
    api = await start_server(providers={"google": {"api_key": GOOGLE_KEY, "base_url": google.url}})
    doc = await document(api)

    async def call(
        method: str, path: str, template: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        status, body, _ = await api.call(method, path, **kwargs)
        check_response(doc, method, template or path.split("?")[0], status, body)
        return dict(body)

    job = await call(
        "POST",
        "/v1/jobs",
        json={
            "task": "gg_image",
            "payload": {"prompt": "a red fox", "number_of_images": 3},
            "webhook_url": receiver.url("/ok"),
        },
    )
    job_id = job["job_id"]
    await api.wait(job_id)
    # A result of several files, with the job's payload and its expiry (GET only).
    done = await call("GET", f"/v1/jobs/{job_id}", "/v1/jobs/{job_id}")
    assert done["status"] == "succeeded", done["error"]
    assert (
        len(done["result"]["files"]) == 3
        and done["result"]["url"] == done["result"]["files"][0]["url"]
    )
    assert done["payload"]["number_of_images"] == 3
    assert done["expires_at"] is not None and done["expires_at_ms"] is not None
    listed = await call("GET", "/v1/jobs?task=gg_image")
    assert listed["jobs"][0]["result"]["files"] == done["result"]["files"]
    assert "payload" not in listed["jobs"][0]

    # /stats: the hour's history with this minute's finished job in it.
    stats = await call("GET", "/stats")
    assert len(stats["history"]) == 60
    assert sum(bucket["finished"] for bucket in stats["history"]) == 1
    assert stats["recent"][0]["result"]["files"] == done["result"]["files"]

    # /diag/backends: the provider's backend says which and where; OpenAI is unavailable.
    backends = await call("GET", "/diag/backends")
    (provider,) = [b for b in backends["backends"] if b["kind"] == "provider"]
    assert provider["provider"] == "google" and provider["configured"] is True
    assert provider["base_url"] == google.url and "gg_image" in provider["tasks"]
    (openai,) = backends["unavailable_providers"]
    assert openai["provider"] == "openai" and "cx_image" in openai["unavailable_tasks"]
    assert GOOGLE_KEY not in str(backends)

    # The delivery log (both names), then a redelivery (202) of the same event.
    await receiver.wait_for("/ok")
    for name in ("deliveries", "webhooks"):
        log = await call("GET", f"/v1/jobs/{job_id}/{name}", f"/v1/jobs/{{job_id}}/{name}")
        (delivery,) = log["deliveries"]
        assert delivery["state"] == "delivered" and delivery["attempts"] == 1
        assert delivery["created_at_ms"] <= delivery["delivered_at_ms"]
    again = await call("POST", f"/v1/jobs/{job_id}/redeliver", "/v1/jobs/{job_id}/redeliver")
    assert again["delivery"]["event_id"] == delivery["event_id"]
    assert again["delivery"]["state"] == "pending" and again["delivery"]["attempts"] == 0
    await receiver.wait_for("/ok", count=2)
    # Redeliver errors: a job without a webhook (409), an unknown job (404).
    bare = await api.submit("sleep", {"seconds": 0.01})
    await api.wait(bare["job_id"])
    refused = await call(
        "POST", f"/v1/jobs/{bare['job_id']}/redeliver", "/v1/jobs/{job_id}/redeliver"
    )
    assert refused["error"]["code"] == "no_webhook"
    await call("POST", "/v1/jobs/nope/redeliver", "/v1/jobs/{job_id}/redeliver")

    # /metrics: documented as text, with this job counted.
    status, text, response = await api.call("GET", "/metrics", key=KEY_ADMIN)
    assert status == 200 and response.content_type == "text/plain"
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert b'ahv_jobs_finished_total{status="succeeded",task="gg_image"} 1.0' in text
    await call("GET", "/metrics", key=KEY_A)  # 403, documented
    await call("GET", "/metrics", key=None)  # 401, documented
    # Either credential is documented: an admin key, or the bearer metrics token.
    schemes = doc["components"]["securitySchemes"]
    assert schemes["metricsToken"] == {
        **schemes["metricsToken"],
        "type": "http",
        "scheme": "bearer",
    }
    assert doc["paths"]["/metrics"]["get"]["security"] == [{"apiKey": []}, {"metricsToken": []}]


async def raw_post(api: Api, path: str, head: bytes, body: bytes) -> tuple[int, Any]:
    """POST `head` headers and `body` over a bare socket, and read one answer (without
    waiting for the server to close: after an early answer aiohttp drains for a while)."""
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_A}\r\n".encode())
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        answer = await reader.readexactly(int(headers["content-length"]))
        return int(status_line.split()[1]), msgspec.json.decode(answer)
    finally:
        writer.close()


async def test_body_and_draining_refusals_are_documented(start_server: StartServer) -> None:
    api = await start_server(server={"read_timeout_s": 0.3})
    doc = await document(api)
    with_body = [
        (method, path)
        for path, operations in doc["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    ]
    assert ("post", "/v1/jobs") in with_body and ("post", "/test/sleep") in with_body
    for method, path in with_body:
        responses = doc["paths"][path][method]["responses"]
        assert {"400", "408", "413", "422"} <= set(responses), (method, path)
    # A body that never arrives in full: the middleware's 408, as documented.
    for path in ("/v1/jobs", "/test/sleep"):
        status, body = await raw_post(api, path, b"Content-Length: 100\r\n", b"{")
        assert status == 408 and body["error"]["code"] == "request_timeout", body
        check_response(doc, "POST", path, status, body)

    job = await api.submit("sleep", {"seconds": 0})
    # Shutdown begun (the app's on_shutdown hooks, which the runner calls first): both event
    # streams refuse with 503 `draining` and Retry-After, as documented.
    await api.server.app.shutdown()
    for path, template in (
        ("/v1/events", "/v1/events"),
        (f"/v1/jobs/{job['job_id']}/events", "/v1/jobs/{job_id}/events"),
    ):
        status, body, response = await api.call("GET", path)
        assert status == 503 and body["error"]["code"] == "draining", (path, body)
        assert int(response.headers["Retry-After"]) >= 1
        check_response(doc, "GET", template, status, body)
        assert "Retry-After" in doc["paths"][template]["get"]["responses"]["503"]["headers"]
