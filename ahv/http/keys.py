"""Typed app state (aiohttp AppKeys) and request state."""

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
