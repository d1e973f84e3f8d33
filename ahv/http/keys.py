"""Typed app state (aiohttp AppKeys), request state, and this server's address as a
request sees it."""

from __future__ import annotations

from aiohttp import web

from ahv.auth import Caller
from ahv.orchestrator import Orchestrator

ORCHESTRATOR = web.AppKey("orchestrator", Orchestrator)
CALLER = web.RequestKey("caller", Caller)


def orchestrator(request: web.Request) -> Orchestrator:
    return request.app[ORCHESTRATOR]


def caller(request: web.Request) -> Caller:
    return request[CALLER]


def socket_url(request: web.Request) -> str | None:
    """`http://ADDRESS:PORT` of the socket this request came in on (None once it is gone)."""
    if request.transport is None:
        return None
    host, port = request.transport.get_extra_info("sockname")[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def base_url(request: web.Request) -> str:
    """What a client of this request reaches the API at: `server.public_url`; else the scheme
    and Host header it came with (as aiohttp sees them: behind a proxy, set public_url);
    else (no Host: an HTTP/1.0 client) the address and port it came in on. Not
    `request.host`, which without a Host header is the machine's name without the port."""
    app = orchestrator(request)
    configured = app.config.server.public_url.rstrip("/")
    if configured:
        return configured
    host = request.headers.get("Host")
    if host:
        return f"{request.scheme}://{host}"
    return socket_url(request) or app.public_url
