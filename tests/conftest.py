"""Shared fixtures: the real server on a random port, a real webhook receiver, and a real
media server for job inputs. Nothing of ahv's own is mocked."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ahv.config import Config
from ahv.http.app import create_app
from ahv.http.keys import ORCHESTRATOR
from ahv.orchestrator import Orchestrator

KEY_A = "key-client-a"
KEY_B = "key-client-b"
KEY_ADMIN = "key-admin"
SECRET_A = "whsec_" + base64.b64encode(b"secret-of-client-a-0123456789").decode()
SECRET_B = "plain-secret-of-client-b"
SECRET_ADMIN = "whsec_" + base64.b64encode(b"secret-of-admin-0123456789abc").decode()
FINAL = frozenset({"succeeded", "failed", "rejected", "canceled"})


def base_config(data_dir: Path) -> dict[str, Any]:
    return {
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "data_dir": str(data_dir),
            "plugins": ["tests.plugin_tasks"],
            "shutdown_grace_s": 2,
        },
        "keys": [
            {"name": "client-a", "key": KEY_A, "webhook_secret": SECRET_A},
            {
                "name": "client-b",
                "key_sha256": hashlib.sha256(KEY_B.encode()).hexdigest(),
                "webhook_secret": SECRET_B,
            },
            {"name": "admin", "key": KEY_ADMIN, "role": "admin", "webhook_secret": SECRET_ADMIN},
        ],
        "queue": {"poll_interval_s": 0.05, "retry_base_s": 0.05, "retry_max_s": 0.2},
        "webhooks": {
            "timeout_s": 1.0,
            "retry_base_s": 0.1,
            "retry_max_s": 0.4,
            "max_attempts": 4,
            "progress_interval_s": 0.01,
            "flush_on_shutdown_s": 1,
        },
        "fetch": {"allowed_networks": ["127.0.0.1/32"], "read_timeout_s": 2, "total_timeout_s": 5},
        "backends": [{"name": "cpu", "device": "cpu", "slots": 2, "tasks": ["upscale", "sleep"]}],
    }


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Api:
    """A client of one running ahv server."""

    server: TestServer
    session: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def orchestrator(self) -> Orchestrator:
        return self.server.app[ORCHESTRATOR]

    async def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = KEY_A,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["X-API-Key"] = key
        body = msgspec.json.encode(json) if json is not None else data
        async with self.session.request(
            method, self.url + path, data=body, headers=all_headers
        ) as response:
            raw = await response.read()
            try:
                parsed = msgspec.json.decode(raw) if raw else None
            except msgspec.DecodeError:
                parsed = raw
            return response.status, parsed, response

    async def submit(self, task: str, payload: dict[str, Any], **fields: Any) -> dict[str, Any]:
        key = fields.pop("key", KEY_A)
        status, body, _ = await self.call(
            "POST", "/v1/jobs", key=key, json={"task": task, "payload": payload, **fields}
        )
        assert status == 202, body
        return dict(body)

    async def refused_on_both(
        self, task: str, direct_path: str, payload: dict[str, Any], code: str
    ) -> list[str]:
        """Submit `payload` as a job and to the task's blocking endpoint: both must be a 422
        with `code`. The two error messages, for the caller to check what they name."""
        messages = []
        for path, sent in (
            ("/v1/jobs", {"task": task, "payload": payload}),
            (direct_path, payload),
        ):
            status, refused, _ = await self.call("POST", path, json=sent)
            assert status == 422 and refused["error"]["code"] == code, (path, refused)
            messages.append(refused["error"]["message"])
        return messages

    async def job(self, job_id: str, key: str = KEY_A) -> dict[str, Any]:
        status, body, _ = await self.call("GET", f"/v1/jobs/{job_id}", key=key)
        assert status == 200, body
        return dict(body)

    async def wait(
        self, job_id: str, statuses: frozenset[str] = FINAL, timeout_s: float = 15, key: str = KEY_A
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            doc = await self.job(job_id, key=key)
            if doc["status"] in statuses:
                return doc
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {doc['status']} after {timeout_s} s")
            await asyncio.sleep(0.02)


StartServer = Callable[..., Awaitable[Api]]


@pytest.fixture
async def start_server(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[StartServer]:
    sessions: list[aiohttp.ClientSession] = []

    async def start(**overrides: Any) -> Api:
        config = msgspec.convert(merge(base_config(tmp_path / "data"), overrides), Config)
        server = await aiohttp_server(create_app(config))
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Api(server, session)

    yield start
    for session in sessions:
        await session.close()


@pytest.fixture
async def api(start_server: StartServer) -> Api:
    return await start_server()


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return dict(msgspec.json.decode(self.body))


def verify_signature(delivery: Delivery, secret: str) -> bool:
    key = (
        base64.b64decode(secret.removeprefix("whsec_"))
        if secret.startswith("whsec_")
        else secret.encode()
    )
    signed = (
        f"{delivery.headers['webhook-id']}.{delivery.headers['webhook-timestamp']}.".encode()
        + delivery.body
    )
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    signatures = delivery.headers["webhook-signature"].split()
    return any(s.startswith("v1,") and hmac.compare_digest(s[3:], expected) for s in signatures)


@dataclass
class Receiver:
    """A real webhook receiver. Paths choose its behaviour:
    /ok  200 · /fail503x2/<id>  503 twice then 200 · /slow  sleeps past the sender's timeout
    · /redirect  302 to /redirect-target · /gone 410 · /limited 429 with Retry-After: 1."""

    server: TestServer | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def at(self, path: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == path]

    async def wait_for(
        self, path: str, count: int = 1, timeout_s: float = 10, event: str | None = None
    ) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [d for d in self.at(path) if event is None or d.json.get("event") == event]
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(found)} of {count} webhooks at {path}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        delivery = Delivery(path, dict(request.headers), await request.read(), time.monotonic())
        self.deliveries.append(delivery)
        self.changed.set()
        if path.startswith("/fail503x2") and self.hits[path] <= 2:
            return web.Response(status=503)
        if path == "/slow":
            await asyncio.sleep(3)
        if path == "/redirect":
            raise web.HTTPFound("/redirect-target")
        if path == "/gone":
            return web.Response(status=410)
        if path == "/limited":
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(text="ok")


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    found = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    found.server = await aiohttp_server(app)
    return found


@dataclass
class MediaServer:
    """Serves job inputs: bytes registered under a name, with a chosen Content-Type."""

    server: TestServer | None = None
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def add(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.files[name] = (data, content_type)
        assert self.server is not None
        return str(self.server.make_url(f"/{name}"))

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.files:
            return web.Response(status=404)
        data, content_type = self.files[name]
        return web.Response(body=data, content_type=content_type)


@pytest.fixture
async def media(aiohttp_server: Any) -> MediaServer:
    found = MediaServer()
    app = web.Application()
    app.router.add_get("/{name}", found.handle)
    found.server = await aiohttp_server(app)
    return found
