"""Security refusals through the real server: the URL guard (every spelling of a non-public
address, redirects to them, names resolving to them) for input URLs and webhook URLs, keys
on every route, path traversal on /files/, oversize bodies, and slow clients.

Names resolving to private, link-local, metadata and IPv4-mapped addresses need a hosts file
of their own: those cases run in user, mount and network namespaces (tests/dns_namespace.py,
tests/dns_namespace_cases.py), started by `test_names_resolving_to_refused_addresses`.

Unit tests of the guard itself are in tests/test_fetch.py; these check what a client sees."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from ahv.http.middleware import PUBLIC_PATHS, PUBLIC_PREFIXES
from tests import dns_namespace, namespaces
from tests import media as fixtures
from tests.conftest import KEY_A, KEY_ADMIN, KEY_B, Api, base_config, merge
from tests.process import AhvProcess
from tests.test_errors import check_shape

ALL_TASKS = [
    "upscale",
    "faceswap",
    "faceswap_multi",
    "faceswap_video",
    "remove_background",
    "scan_objects",
    "remove_object",
    "sleep",
]
STRICT = {"fetch": {"allowed_networks": []}}
# Cloud providers set up, with a base_url where nothing listens (no job here reaches them),
# so that their tasks are available and their URL fields are checked too.
PROVIDERS = {
    "providers": {
        name: {"api_key": "test-key-0123456789", "base_url": "http://127.0.0.1:9"}
        for name in ("google", "openai")
    }
}


def hostname_on_loopback() -> list[str]:
    """This machine's own name, when it resolves to a loopback or private address (as in
    most containers): a name resolving to a refused address, without touching /etc/hosts."""
    name = socket.gethostname()
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, 80)}
    except OSError:
        return []
    import ipaddress

    ok = addresses and all(
        ipaddress.ip_address(a.split("%")[0]).is_private
        or ipaddress.ip_address(a.split("%")[0]).is_loopback
        for a in addresses
    )
    return [f"http://{name}/"] if ok else []


# Every spelling of a non-public address, and schemes that are not http(s).
BLOCKED = [
    "http://127.0.0.1/",
    "http://127.0.0.1:2022/v1/jobs",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://2130706433/",
    "http://017700000001/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://0x7f.1/",
    "http://127.1/",
    "http://0/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",
    "http://[fc00::1]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://user:pass@127.0.0.1/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "https://127.0.0.1/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/_x",
    "ftp://127.0.0.1/",
    "dict://127.0.0.1:11211/",
    "//127.0.0.1/",
    "127.0.0.1",
    *hostname_on_loopback(),
]

# Per task: a payload that passes every other check, with BLOCKED in the field named.
PUBLIC = "http://8.8.8.8/x.png"
URL_FIELDS: list[tuple[str, str, dict[str, Any]]] = [
    ("upscale", "image_url", {"image_url": "BLOCKED"}),
    ("remove_background", "image_url", {"image_url": "BLOCKED"}),
    ("scan_objects", "image_url", {"image_url": "BLOCKED"}),
    ("remove_object", "image_url", {"image_url": "BLOCKED", "prompt": "cat"}),
    ("remove_object", "mask_url", {"image_url": PUBLIC, "mask_url": "BLOCKED"}),
    ("faceswap", "target_url", {"target_url": "BLOCKED", "source_url": PUBLIC}),
    ("faceswap", "source_url", {"target_url": PUBLIC, "source_url": "BLOCKED"}),
    ("faceswap", "source_urls[1]", {"target_url": PUBLIC, "source_urls": [PUBLIC, "BLOCKED"]}),
    ("faceswap_multi", "target_url", {"target_url": "BLOCKED", "source_urls": [PUBLIC]}),
    ("faceswap_multi", "source_urls[0]", {"target_url": PUBLIC, "source_urls": ["BLOCKED"]}),
    ("faceswap_video", "target_url", {"target_url": "BLOCKED", "source_url": PUBLIC}),
    ("faceswap_video", "source_url", {"target_url": PUBLIC, "source_url": "BLOCKED"}),
    ("faceswap_video", "source_urls[0]", {"target_url": PUBLIC, "source_urls": ["BLOCKED"]}),
    ("ahv_image", "image_urls[0]", {"prompt": "a cat", "image_urls": ["BLOCKED"]}),
    ("cx_image", "image_urls[1]", {"prompt": "a cat", "image_urls": [PUBLIC, "BLOCKED"]}),
    ("cx_image", "mask_url", {"prompt": "a cat", "image_urls": [PUBLIC], "mask_url": "BLOCKED"}),
    ("ahv_video", "image_url", {"prompt": "a cat", "image_url": "BLOCKED"}),
]

# Fields a task's submit-time validation refuses whatever their value (faceswap_multi takes
# only source_urls), so no URL in them is ever fetched.
UNUSABLE = {("faceswap_multi", "source_url")}


def with_url(value: Any, url: str) -> Any:
    if value == "BLOCKED":
        return url
    if isinstance(value, list):
        return [with_url(v, url) for v in value]
    if isinstance(value, dict):
        return {k: with_url(v, url) for k, v in value.items()}
    return value


@pytest.fixture
async def strict_api(start_server: Any) -> Api:
    """A server with no exception to the address guard, serving every task."""
    # A matting model and a detector named (their files need not exist: no job here runs) so
    # that remove_background and scan_objects are available, remove_object takes a prompt, and
    # their URL fields are checked too.
    return await start_server(
        **STRICT,
        **PROVIDERS,
        images={"matting": "matting"},
        objects={"detector": "detector"},
        backends=[{"name": "cpu", "slots": 1, "tasks": ALL_TASKS}],
    )


def test_every_url_field_of_every_task_is_guarded_and_listed_here() -> None:
    """A task that adds a URL field must declare it for the submit-time check, and this
    file must test it."""
    from ahv.config import Config
    from ahv.tasks import load_registry

    registry = load_registry(Config())
    tested = {(task, field.split("[")[0]) for task, field, _ in URL_FIELDS}
    for name, spec in registry.items():
        declared = set(spec.url_fields) | set(spec.list_url_fields)
        fields = {f for f in spec.payload_type.__struct_fields__ if re.search(r"_urls?$", f)}
        assert fields == declared, (name, fields, declared)
        assert {(name, f) for f in declared} - UNUSABLE <= tested, name


async def test_blocked_input_urls_are_refused_at_submit(strict_api: Api) -> None:
    for task, field, payload in URL_FIELDS:
        for url in BLOCKED:
            status, body, response = await strict_api.call(
                "POST", "/v1/jobs", json={"task": task, "payload": with_url(payload, url)}
            )
            where = (task, field, url)
            assert status == 422, (where, body)
            check_shape(status, body, response)
            assert body["error"]["code"] == "url_not_allowed", (where, body)
            assert body["error"]["message"].startswith(f"payload.{field}: "), (where, body)
    status, _, _ = await strict_api.call("GET", "/v1/jobs", key=KEY_A)
    assert status == 200
    _, listing, _ = await strict_api.call("GET", "/v1/jobs")
    assert listing["jobs"] == []  # nothing was queued


async def test_blocked_urls_on_blocking_endpoints(strict_api: Api) -> None:
    for path, payload in (
        ("/upscale", {"image_url": "BLOCKED"}),
        ("/faceswap", {"target_url": PUBLIC, "source_urls": ["BLOCKED"]}),
        ("/remove-object", {"image_url": PUBLIC, "mask_url": "BLOCKED"}),
    ):
        for url in ("http://169.254.169.254/", "http://[::ffff:127.0.0.1]/", "http://0x7f.1/"):
            status, body, response = await strict_api.call(
                "POST", path, json=with_url(payload, url)
            )
            assert status == 422 and body["error"]["code"] == "url_not_allowed", (path, url)
            check_shape(status, body, response)


async def test_blocked_webhook_urls_are_refused_at_submit(strict_api: Api) -> None:
    for url in BLOCKED:
        status, body, response = await strict_api.call(
            "POST", "/v1/jobs", json={"task": "sleep", "payload": {}, "webhook_url": url}
        )
        assert status == 422, (url, body)
        check_shape(status, body, response)
        assert body["error"]["code"] == "url_not_allowed", (url, body)
        assert body["error"]["message"].startswith("webhook_url: "), (url, body)


# Redirect targets: everything refused even where the redirecting server (127.0.0.1) is
# allowed. 127.0.0.2 is a live server that must never be reached.
REDIRECT_TARGETS = [
    "http://127.0.0.2:{port}/secret",
    "http://2130706434:{port}/secret",
    "http://0x7f.2:{port}/secret",
    "http://127.2:{port}/secret",
    "http://[::ffff:127.0.0.2]:{port}/secret",
    "http://[::1]:{port}/secret",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://172.16.0.1/",
    "http://0.0.0.0:{port}/secret",
    "http://[fe80::1]/",
    "http://metadata.google.internal/",
    "file:///etc/passwd",
]


@pytest.fixture
async def secret_server(aiohttp_server: Any) -> Iterator[Any]:
    """A live server on 127.0.0.2 standing for an internal service; counts its hits."""
    hits: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=fixtures.astronaut_png(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", secret)
    server = await aiohttp_server(app, host="127.0.0.2")
    server.hits = hits
    return server  # type: ignore[no-any-return]


@pytest.fixture
async def redirector(aiohttp_server: Any) -> Any:
    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_get("/go", bounce)
    return await aiohttp_server(app)


async def test_redirects_to_refused_addresses_fail_the_job(
    start_server: Any, secret_server: Any, redirector: Any
) -> None:
    # Only the redirecting server's own address is allowed.
    api: Api = await start_server(queue={"max_attempts": 3})
    port = secret_server.port
    jobs = {}
    for target in REDIRECT_TARGETS:
        location = target.format(port=port)
        image_url = str(redirector.make_url("/go").with_query(to=location))
        jobs[location] = await api.submit("upscale", {"image_url": image_url})
    for location, job in jobs.items():
        doc = await api.wait(job["job_id"])
        assert doc["status"] == "failed", (location, doc)
        assert doc["error"]["code"] == "url_not_allowed", (location, doc["error"])
        assert doc["error"]["message"].startswith("image_url (redirect): ")
        assert doc["attempts"] == 1  # a refusal is not retried
    assert secret_server.hits == []


async def test_redirect_chain_is_checked_on_every_hop(
    start_server: Any, secret_server: Any, redirector: Any
) -> None:
    api: Api = await start_server()
    last = f"http://127.0.0.2:{secret_server.port}/secret"
    hop2 = str(redirector.make_url("/go").with_query(to=last))
    hop1 = str(redirector.make_url("/go").with_query(to=hop2))
    doc = await api.wait((await api.submit("upscale", {"image_url": hop1}))["job_id"])
    assert doc["error"]["code"] == "url_not_allowed" and "127.0.0.2" in doc["error"]["message"]
    assert secret_server.hits == []


async def test_webhook_redirect_to_internal_address_is_not_followed(
    start_server: Any, aiohttp_server: Any, secret_server: Any
) -> None:
    api: Api = await start_server(webhooks={"max_attempts": 2, "retry_base_s": 0.05})
    bounce = f"http://127.0.0.2:{secret_server.port}/hook"

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(bounce)

    app = web.Application()
    app.router.add_post("/bounce", redirect)
    receiver = await aiohttp_server(app)
    job = await api.submit("sleep", {"seconds": 0}, webhook_url=str(receiver.make_url("/bounce")))
    await api.wait(job["job_id"])
    deadline = time.monotonic() + 10
    while True:
        _, body, _ = await api.call("GET", f"/v1/jobs/{job['job_id']}/webhooks")
        (delivery,) = body["deliveries"]
        if delivery["state"] == "failed":
            break
        assert time.monotonic() < deadline, delivery
        await asyncio.sleep(0.05)
    assert delivery["last_status"] == 307 and "not followed" in delivery["last_error"]
    assert delivery["attempts"] == 2
    assert secret_server.hits == []


# -- names resolving to refused addresses (in namespaces of their own) ---------------------------


@pytest.mark.timeout(180)
def test_names_resolving_to_refused_addresses(tmp_path: Path) -> None:
    """Names that resolve to 10/8, 172.16/12, 192.168/16, link-local, metadata (IPv4, IPv6,
    IPv4-mapped) and loopback addresses: refused in input URLs and webhook URLs at submit,
    as a redirect target at fetch, and when re-pointed after submit, at fetch and at webhook
    delivery (recorded in the delivery log). The cases (tests/dns_namespace_cases.py) run
    in namespaces where /etc/hosts is a file of the test's own and the refused addresses are
    live, so a request let through would be seen arriving."""
    if not namespaces.available("-rmn"):
        pytest.skip(
            "needs `unshare -rmn` (user, mount and network namespaces) to map test names to "
            "private addresses in a hosts file of its own"
        )
    returncode, report = namespaces.run_module(
        "-rmn", "tests.dns_namespace", [str(tmp_path)], timeout_s=160
    )
    if returncode == dns_namespace.SETUP_FAILED:
        pytest.skip(report.strip().splitlines()[-1])
    assert returncode == 0, report
    from tests import dns_namespace_cases

    cases = sum(name.startswith("test_") for name in vars(dns_namespace_cases))
    summary = report.strip().splitlines()[-1]
    assert summary.startswith(f"{cases} passed in "), report


# -- keys on every route -------------------------------------------------------------------------


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def concrete(path: str, job_id: str, file_name: str) -> str:
    """A route's path with its variables filled in: A's job, A's result file, else 'x'."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        return {"job_id": job_id, "name": file_name}.get(name, "x")

    return re.sub(r"\{([A-Za-z_]+)(?::[^}]*)?\}", fill, path)


def all_routes(api: Api) -> list[tuple[str, str]]:
    found = []
    for route in api.server.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        assert path, route
        found.append(("GET" if route.method == "*" else route.method, str(path)))
    return sorted(set(found))


async def probe(
    api: Api, method: str, path: str, key: str | None, data: bytes | None
) -> tuple[int, Any, Any]:
    """One request; the body read for at most a second (event streams never end), parsed
    when it is JSON."""
    headers = {} if key is None else {"X-API-Key": key}
    async with api.session.request(method, api.url + path, data=data, headers=headers) as response:
        raw = b""
        try:
            async with asyncio.timeout(1.0):
                while chunk := await response.content.read(65536):
                    raw += chunk
        except TimeoutError:
            pass  # a stream: what it sent in a second is what is checked
        body: Any = raw
        if response.headers.get("Content-Type", "").startswith("application/json") and raw:
            with contextlib.suppress(msgspec.DecodeError):  # a result file named .json
                body = msgspec.json.decode(raw)
        return response.status, body, response


async def test_every_route_needs_a_key_and_hides_other_clients_jobs(api: Api) -> None:
    running = await api.submit("sleep", {"seconds": 20, "steps": 400}, key=KEY_A)
    with_file = await api.submit("sleep", {"seconds": 0, "write_file": True}, key=KEY_A)
    done = await api.wait(with_file["job_id"])
    file_name = done["result"]["filename"]
    await api.wait(running["job_id"], frozenset({"running"}))
    routes = all_routes(api)
    assert ("POST", "/v1/jobs") in routes and ("GET", "/files/{name}") in routes
    public = [(m, p) for m, p in routes if is_public(p)]
    assert ("GET", "/healthz") in public and ("GET", "/files/{name}") in public
    assert not any(p.startswith(("/v1/", "/stats", "/diag", "/tasks")) for _, p in public)
    checked = 0
    for method, template in routes:
        path = concrete(template, running["job_id"], file_name)
        data = b"{}" if method in ("POST", "PUT", "PATCH") else None
        if is_public(template):
            status, _, _ = await probe(api, method, path, None, data)
            assert status != 401, (method, path)
            continue
        for key in (None, "wrong-key", KEY_A.upper()):
            status, body, response = await probe(api, method, path, key, data)
            assert status == 401, (method, path, key, status)
            if method != "HEAD":
                check_shape(status, body, response)
                assert body["error"]["code"] == "unauthorized"
            checked += 1
        # Another client's key: A's job does not exist for B, nor does it show anywhere.
        status, body, response = await probe(api, method, path, KEY_B, data)
        if "{job_id}" in template:
            assert status == 404, (method, path, status)
            if method != "HEAD":
                assert body["error"]["code"] == "job_not_found"
        elif method != "HEAD":
            assert status < 500, (method, path, status)
            text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
            assert running["job_id"] not in text, (method, path)
            assert with_file["job_id"] not in text, (method, path)
    assert checked >= 3 * 12
    # Its owner (and the admin) do see it in /diag/backends.
    for key in (KEY_A, KEY_ADMIN):
        _, diag, _ = await api.call("GET", "/diag/backends", key=key)
        assert [running["job_id"]] in [b["running_jobs"] for b in diag["backends"]], key
    # The running job was untouched by all of that.
    assert (await api.job(running["job_id"]))["status"] == "running"


async def test_head_on_event_streams_sends_headers_only(api: Api) -> None:
    """A HEAD answered with a body (a stream's first event) would be read by the client as
    the start of its next response on the same connection."""
    job = await api.submit("sleep", {"seconds": 0})
    port = api.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for path in ("/v1/events", f"/v1/jobs/{job['job_id']}/events"):
            writer.write(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_A}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head, head
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head  # not a stray "event: hello"
    finally:
        writer.close()


# -- /files/ traversal ---------------------------------------------------------------------------


async def raw_request(port: int, target: str, *, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send a request line exactly as given (no client-side normalisation)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# Raw request targets and the exact answer each gets: a name that is one path segment (the
# slashes percent-encoded) reaches the /files/ handler, which finds no such result file (404
# file_not_found); a target with a real `/` after /files/ matches no route (404 not_found); a
# request line over 8,190 bytes is refused by aiohttp's parser (plain-text 400, no code).
ONE_SEGMENT = (404, "file_not_found")
NO_ROUTE = (404, "not_found")
TOO_LONG = (400, None)
TRAVERSALS: list[tuple[str, tuple[int, str | None]]] = [
    ("/files/..%2fahv.sqlite3", ONE_SEGMENT),
    ("/files/..%2Fahv.sqlite3", ONE_SEGMENT),
    ("/files/%2e%2e/ahv.sqlite3", NO_ROUTE),
    ("/files/%2e%2e%2fahv.sqlite3", ONE_SEGMENT),
    ("/files/%252e%252e%252fahv.sqlite3", ONE_SEGMENT),
    ("/files/../ahv.sqlite3", NO_ROUTE),
    ("/files/..%5cahv.sqlite3", ONE_SEGMENT),
    ("/files/..\\ahv.sqlite3", ONE_SEGMENT),
    ("/files/....//ahv.sqlite3", NO_ROUTE),
    ("/files/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", ONE_SEGMENT),
    ("/files/../../../../etc/passwd", NO_ROUTE),
    ("/files//etc/passwd", NO_ROUTE),
    ("/files/%2fetc%2fpasswd", ONE_SEGMENT),
    ("/files/C:%5cWindows%5cwin.ini", ONE_SEGMENT),
    ("/files/" + "0" * 32 + ".jpg%00.png", ONE_SEGMENT),
    ("/files/" + "0" * 32 + ".jpg/..%2f..%2fahv.sqlite3", NO_ROUTE),
    ("/files/.", ONE_SEGMENT),
    ("/files/..", ONE_SEGMENT),
    ("/files/%2e", ONE_SEGMENT),
    ("/files/" + "a" * 4000 + ".jpg", ONE_SEGMENT),
    ("/files/" + "a" * 9000 + ".jpg", TOO_LONG),
]


async def test_files_cannot_escape_the_results_dir(api: Api) -> None:
    done = await api.wait((await api.submit("sleep", {"seconds": 0, "write_file": True}))["job_id"])
    name = done["result"]["filename"]
    port = api.server.port
    assert port is not None
    status, body = await raw_request(port, f"/files/{name}")  # the control: a real file
    assert status == 200 and body == b"ahv test output\n"
    cases = [*TRAVERSALS, (f"/files/..%2ffiles%2f{name}", ONE_SEGMENT)]
    cases.append((f"/files/%2e/{name}", NO_ROUTE))
    for target, (expected_status, expected_code) in cases:
        status, body = await raw_request(port, target)
        assert b"SQLite format 3" not in body and b"root:" not in body, target[:80]
        assert b"ahv test output" not in body, target[:80]
        assert status == expected_status, (target[:80], status, body[:200])
        if expected_code is None:
            assert body.startswith(b"Got more than 8190 bytes"), (target[:80], body[:200])
        else:
            error = msgspec.json.decode(body)["error"]
            assert error["code"] == expected_code, (target[:80], error)


# -- oversize bodies ----------------------------------------------------------------------------


async def test_oversize_bodies_are_413_in_the_error_shape(api: Api) -> None:
    big = b'{"task": "sleep", "payload": {"x": "' + b"x" * 1_100_000 + b'"}}'

    async def chunks() -> Any:
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    for path, data in (
        ("/v1/jobs", big),
        ("/upscale", big),
        ("/test/sleep", big),
        ("/faceswap", big),
        ("/v1/jobs", chunks()),  # chunked: no Content-Length to refuse up front
    ):
        async with api.session.post(
            api.url + path, data=data, headers={"X-API-Key": KEY_A}
        ) as response:
            body = await response.json()
            assert response.status == 413, (path, body)
            check_shape(413, body, response)
            assert body["error"]["code"] == "body_too_large"
    # Unauthenticated: refused before the body is read.
    status, body, _ = await api.call("POST", "/v1/jobs", key=None, data=big)
    assert status == 401 and body["error"]["code"] == "unauthorized"


# -- slow clients (the real `ahv serve`, as deployed) --------------------------------------------


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[AhvProcess]:
    config = merge(base_config(tmp_path / "data"), {"server": {"read_timeout_s": 1.0}})
    process = AhvProcess(config, tmp_path)
    process.start()
    yield process
    process.stop()


async def watch(
    port: int, first: bytes, then: bytes = b"", every_s: float = 0.1
) -> tuple[float, bytes, float]:
    """Connect, send `first`, then trickle `then` byte by byte; return (seconds to the first
    answer byte or to the close, what came back, seconds until the server closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer_at = None
    received = b""

    async def trickle() -> None:
        writer.write(first)
        for byte in then:
            await asyncio.sleep(every_s)
            writer.write(bytes([byte]))
        await asyncio.sleep(60)

    sender = asyncio.create_task(trickle())
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(4096), 20)
            if answer_at is None:
                answer_at = time.monotonic() - started
            if not chunk:
                break
            received += chunk
    except (ConnectionError, TimeoutError):
        pass
    finally:
        sender.cancel()
        writer.close()
    closed_after = time.monotonic() - started
    return answer_at if answer_at is not None else closed_after, received, closed_after


async def test_slow_clients_are_cut_off(slow_server: AhvProcess) -> None:
    port = int(slow_server.url.rsplit(":", 1)[1])
    auth = f"X-API-Key: {KEY_A}\r\n".encode()
    body = b'{"task": "sleep", "payload": {"seconds": 0}}'
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + auth
    cases = {
        "idle after connect": watch(port, b""),
        "headers never end": watch(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
        "headers trickled": watch(port, b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n" * 20),
        "body never ends": watch(port, head + b"Content-Length: 100\r\n\r\n{"),
        "body trickled": watch(port, head + b"Content-Length: 44\r\n\r\n", body),
        "chunked body trickled": watch(
            port, head + b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\n{\r\n" * 60
        ),
    }

    async def blocking_job() -> tuple[int, dict[str, Any]]:
        # A blocking endpoint holds its connection past read_timeout_s while its job runs.
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{slow_server.url}/test/sleep",
                json={"seconds": 2.5, "steps": 5},
                headers={"X-API-Key": KEY_A},
            ) as response:
                return response.status, await response.json()

    blocking = asyncio.create_task(blocking_job())
    results = dict(zip(cases, await asyncio.gather(*cases.values()), strict=True))
    for name, (answer_s, received, closed_s) in results.items():
        # Headers: closed within read_timeout_s (1 s) with no answer.
        # Bodies: 408 after read_timeout_s; aiohttp then drains for at most 10 s and closes.
        assert answer_s < 3.5, (name, answer_s)
        if name.startswith(("idle", "headers")):
            assert received == b"", (name, received[:80])
            assert closed_s < 3.5, (name, closed_s)
        else:
            assert received.startswith(b"HTTP/1.1 408 "), (name, received[:80])
            payload = msgspec.json.decode(received.partition(b"\r\n\r\n")[2])
            assert payload["error"]["code"] == "request_timeout", name
            assert "server.read_timeout_s" in payload["error"]["message"]
            assert closed_s < 14, (name, closed_s)
    status, doc = await blocking
    assert status == 200 and doc["status"] == "succeeded"
    # And a normal request still works on the same server.
    status, _ = await raw_request(port, "/healthz")
    assert status == 200


async def send_and_leave(port: int, head: bytes, body: bytes, *, half_close: bool) -> None:
    """Send a request whose body is cut short, then go away (close, or half-close first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + body)
    await writer.drain()
    await asyncio.sleep(0.2)  # the server is reading the body now
    if half_close:
        writer.write_eof()
        await asyncio.wait_for(reader.read(), 10)
    writer.close()


async def test_clients_gone_mid_body_and_oversize_bodies(tmp_path: Path) -> None:
    # The real `ahv serve` (a test server cancels the handler on disconnect, hiding this),
    # with the default read_timeout_s of 30 s.
    process = AhvProcess(base_config(tmp_path / "data"), tmp_path)
    url = await asyncio.to_thread(process.start)
    port = int(url.rsplit(":", 1)[1])
    try:
        # Content-Length over server.max_body_bytes: 413 at once, not after read_timeout_s.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        began = time.monotonic()
        writer.write(
            f"POST /v1/jobs/x/redeliver HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_A}\r\n"
            "Content-Length: 100000000\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = re.search(rb"Content-Length: (\d+)", head)
        assert length is not None, head
        payload = msgspec.json.decode(await reader.readexactly(int(length[1])))
        writer.close()
        assert time.monotonic() - began < 2
        assert head.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in head, head
        assert payload["error"]["code"] == "body_too_large"
        assert "1048576" in payload["error"]["message"]
        # Clients that go away before their body is in: nothing for the server's log to
        # call an error.
        for path in ("/v1/jobs/x/redeliver", "/v1/jobs"):
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY_A}\r\n"
                "Content-Length: 1000\r\n\r\n"
            ).encode()
            await send_and_leave(port, head, b'{"task": ', half_close=False)
            await send_and_leave(port, head, b'{"task": ', half_close=True)
        status, _ = await raw_request(port, "/healthz")
        assert status == 200
        await asyncio.sleep(0.3)  # the log lines are written by a thread
    finally:
        process.stop()
    log = process.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert log.count("client closed the connection during POST") == 4, log[-3000:]
