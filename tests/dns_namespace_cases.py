"""The URL guard against names that resolve to refused addresses (10/8, 172.16/12, 192.168/16,
link-local, the metadata address in IPv4, IPv6 and IPv4-mapped forms, a loopback address
outside the allowed one, a name with one allowed and one refused address), through the real
server: input URLs and webhook URLs at submit, a redirect at fetch time, and a name re-pointed
between submit and fetch or delivery.

Runs only inside tests/dns_namespace.py's namespaces (tests/test_security.py starts it), where
/etc/hosts maps these names and every refused address is live on `lo` with a server listening
on it: a request the guard let through would reach it and be counted.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests import media as fixtures
from tests.conftest import Api
from tests.dns_namespace import (
    ALLOWED_NAME,
    HOSTS_ENV,
    REFUSED,
    REPOINT_TO,
    hosts_text,
    repoint_names,
)
from tests.test_errors import check_shape
from tests.test_security import ALL_TASKS, PROVIDERS, URL_FIELDS, with_url

pytestmark = pytest.mark.skipif(
    HOSTS_ENV not in os.environ,
    reason="runs only inside the namespaces tests/dns_namespace.py sets up "
    "(tests/test_security.py::test_names_resolving_to_refused_addresses)",
)


@dataclass
class Listener:
    """A server on every address of the namespace (IPv6 and IPv4), recording each request
    as (the local address it came in on, its path)."""

    port: int = 0
    hits: list[tuple[str, str]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [path for _, path in self.hits]


async def listen_everywhere(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> tuple[web.AppRunner, Listener]:
    listener = Listener()

    async def record(request: web.Request) -> web.StreamResponse:
        local = request.transport.get_extra_info("sockname")[0] if request.transport else "?"
        listener.hits.append((str(local).removeprefix("::ffff:"), request.path))
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
    sock.bind(("::", 0))
    listener.port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    return runner, listener


@pytest.fixture
async def internal() -> AsyncIterator[Listener]:
    """Stands for an internal service on every refused address: it must never be reached
    through ahv (it would answer a valid image)."""

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=fixtures.astronaut_png(), content_type="image/png")

    runner, listener = await listen_everywhere(image)
    yield listener
    await runner.cleanup()


@pytest.fixture
async def hooks() -> AsyncIterator[Listener]:
    """A webhook receiver on every address: 200 to anything."""

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    runner, listener = await listen_everywhere(ok)
    yield listener
    await runner.cleanup()


@pytest.fixture
def repoint() -> Iterator[Callable[[dict[str, str]], None]]:
    """Rewrites the bind-mounted /etc/hosts in place (the mount follows the inode), so the
    next lookup of a re-pointed name gets its new address; restored afterwards."""
    path = Path(os.environ[HOSTS_ENV])

    def write(repointed: dict[str, str]) -> None:
        path.write_text(hosts_text(repointed))

    yield write
    write({})


@pytest.fixture
async def full_api(start_server: Any) -> Api:
    """Every task served (the cloud ones too, so their URL fields are checked); 127.0.0.1 is
    the one allowed address (the test config's), so local fixtures can be fetched. A matting
    model and a detector are named (their files need not exist) so that remove_background and
    scan_objects are available and remove_object takes a prompt."""
    return await start_server(
        **PROVIDERS,
        images={"matting": "matting"},
        objects={"detector": "detector"},
        backends=[{"name": "cpu", "slots": 1, "tasks": ALL_TASKS}],
    )


def refused_message(name: str, address: str, reason: str) -> str:
    return f"host '{name}' ({address}) is not a public address ({reason})"


async def test_the_names_resolve_to_live_refused_addresses(internal: Listener) -> None:
    """The control: without ahv's guard, each name reaches the internal service, on the
    refused address."""
    async with aiohttp.ClientSession() as session:
        for name, (address, _) in REFUSED.items():
            found = {i[4][0] for i in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
            assert address in found, (name, found)
            async with session.get(f"http://{name}:{internal.port}/probe") as response:
                assert response.status == 200, name
            if name != "mixed.test":  # its first address is 127.0.0.1
                assert internal.hits[-1] == (address.removeprefix("::ffff:"), "/probe"), name


async def test_input_urls_naming_them_are_refused_at_submit(
    full_api: Api, internal: Listener
) -> None:
    for name, (address, reason) in REFUSED.items():
        url = f"http://{name}:{internal.port}/image.png"
        for task, field_name, payload in URL_FIELDS:
            status, body, response = await full_api.call(
                "POST", "/v1/jobs", json={"task": task, "payload": with_url(payload, url)}
            )
            where = (name, task, field_name)
            assert status == 422, (where, body)
            check_shape(status, body, response)
            assert body["error"]["code"] == "url_not_allowed", (where, body)
            expected = f"payload.{field_name}: {refused_message(name, address, reason)}"
            assert body["error"]["message"] == expected, (where, body)
        status, body, _ = await full_api.call("POST", "/upscale", json={"image_url": url})
        assert status == 422 and body["error"]["code"] == "url_not_allowed", (name, body)
    _, listing, _ = await full_api.call("GET", "/v1/jobs")
    assert listing["jobs"] == []  # nothing was queued
    assert internal.hits == []


async def test_webhook_urls_naming_them_are_refused_at_submit(
    full_api: Api, hooks: Listener
) -> None:
    for name, (address, reason) in REFUSED.items():
        status, body, response = await full_api.call(
            "POST",
            "/v1/jobs",
            json={
                "task": "sleep",
                "payload": {},
                "webhook_url": f"http://{name}:{hooks.port}/hook",
            },
        )
        assert status == 422, (name, body)
        check_shape(status, body, response)
        assert body["error"]["code"] == "url_not_allowed", (name, body)
        expected = f"webhook_url: {refused_message(name, address, reason)}"
        assert body["error"]["message"] == expected, (name, body)
    _, listing, _ = await full_api.call("GET", "/v1/jobs")
    assert listing["jobs"] == []
    assert hooks.hits == []


@pytest.fixture
async def redirector(aiohttp_server: Any) -> Any:
    """On 127.0.0.1, the allowed address: answers 302 to `?to=`, or serves an image."""

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=fixtures.astronaut_png(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/go", bounce)
    app.router.add_get("/image.png", image)
    return await aiohttp_server(app)


async def test_redirects_to_them_are_refused_at_fetch(
    start_server: Any, redirector: Any, internal: Listener
) -> None:
    api: Api = await start_server(queue={"max_attempts": 3})
    jobs = {}
    for name in REFUSED:
        to = f"http://{name}:{internal.port}/secret.png"
        image_url = str(redirector.make_url("/go").with_query(to=to))
        jobs[name] = await api.submit("upscale", {"image_url": image_url})
    # The control: a redirect to a name resolving to the allowed address is followed.
    to = f"http://{ALLOWED_NAME}:{redirector.port}/image.png"
    control = await api.submit(
        "upscale", {"image_url": str(redirector.make_url("/go").with_query(to=to))}
    )
    for name, job in jobs.items():
        address, reason = REFUSED[name]
        doc = await api.wait(job["job_id"])
        assert doc["status"] == "failed", (name, doc)
        assert doc["error"]["code"] == "url_not_allowed", (name, doc["error"])
        expected = f"image_url (redirect): {refused_message(name, address, reason)}"
        assert doc["error"]["message"] == expected, (name, doc["error"])
        assert doc["attempts"] == 1  # a refusal is not retried
    assert (await api.wait(control["job_id"]))["status"] == "succeeded"
    assert internal.hits == []


async def test_input_name_repointed_after_submit_is_refused_at_fetch(
    start_server: Any, internal: Listener, repoint: Callable[[dict[str, str]], None]
) -> None:
    """Each name resolves to the allowed 127.0.0.1 when the job is submitted, and to a
    refused address when it runs: the fetch checks again."""
    api: Api = await start_server(
        backends=[{"name": "cpu", "slots": 1, "tasks": ["upscale", "sleep"]}]
    )
    # The one slot is busy while the jobs are submitted and their names re-pointed.
    blocker = await api.submit("sleep", {"seconds": 1.0})
    await api.wait(blocker["job_id"], frozenset({"running"}))
    names = repoint_names("input")
    jobs = [
        await api.submit("upscale", {"image_url": f"http://{name}:{internal.port}/image.png"})
        for name in names
    ]
    repoint(dict(zip(names, REPOINT_TO, strict=True)))
    assert (await api.job(blocker["job_id"]))["status"] == "running"  # nothing fetched yet
    for name, address, job in zip(names, REPOINT_TO, jobs, strict=True):
        doc = await api.wait(job["job_id"])
        assert doc["status"] == "failed", (name, doc)
        assert doc["error"]["code"] == "url_not_allowed", (name, doc["error"])
        assert doc["error"]["message"].startswith(f"image_url: host '{name}' ({address}) ")
        assert doc["error"]["message"].count("is not a public address") == 1
        assert doc["attempts"] == 1
    assert internal.hits == []


async def wait_delivery(api: Api, job_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        _, body, _ = await api.call("GET", f"/v1/jobs/{job_id}/webhooks")
        (delivery,) = body["deliveries"]
        if delivery["state"] == state:
            return dict(delivery)
        assert delivery["state"] == "pending" and time.monotonic() < deadline, delivery
        await asyncio.sleep(0.05)


async def test_webhook_name_repointed_after_submit_is_refused_at_delivery(
    start_server: Any, hooks: Listener, repoint: Callable[[dict[str, str]], None]
) -> None:
    """Each webhook name resolves to the allowed 127.0.0.1 at submit, and to a refused
    address (where the receiver also listens) when its job.finished event is sent."""
    api: Api = await start_server()
    names = repoint_names("hook")
    jobs = [
        await api.submit(
            "sleep", {"seconds": 1.0}, webhook_url=f"http://{name}:{hooks.port}/hook/{name}"
        )
        for name in names
    ]
    control = await api.submit(
        "sleep", {"seconds": 1.0}, webhook_url=f"http://{ALLOWED_NAME}:{hooks.port}/control"
    )
    repoint(dict(zip(names, REPOINT_TO, strict=True)))  # well before the 1 s jobs end
    for name, job in zip(names, jobs, strict=True):
        assert (await api.wait(job["job_id"]))["status"] == "succeeded"
        delivery = await wait_delivery(api, job["job_id"], "failed")
        # Recorded in the delivery log: refused, not sent, not retried.
        assert delivery["last_error"] == "url_not_allowed", (name, delivery)
        assert delivery["last_status"] is None and delivery["attempts"] == 1, (name, delivery)
    await wait_delivery(api, control["job_id"], "delivered")
    assert hooks.paths() == ["/control"]
    # Pointed back at the allowed address, the same event is delivered when asked again.
    repoint({})
    status, body, _ = await api.call("POST", f"/v1/jobs/{jobs[0]['job_id']}/redeliver")
    assert status == 202, body
    await wait_delivery(api, jobs[0]["job_id"], "delivered")
    assert hooks.hits[-1] == ("127.0.0.1", f"/hook/{names[0]}")
