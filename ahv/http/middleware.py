"""Every error leaves as `{"ok": false, "error": {"code", "message"}}`; every request but the
public ones carries a valid X-API-Key."""

from __future__ import annotations

import asyncio
import logging
import math

from aiohttp import web
from aiohttp.typedefs import Handler

from ahv.errors import AhvError, error_body
from ahv.http.keys import CALLER, orchestrator, socket_url

log = logging.getLogger(__name__)

PUBLIC_PREFIXES = ("/healthz", "/files/", "/static/")
# The docs and the dashboard page hold no secrets; the dashboard asks for a key itself.
PUBLIC_PATHS = frozenset({"/", "/docs", "/dashboard", "/openapi.json"})
# Paths that check credentials themselves (/metrics also takes a bearer token).
SELF_AUTHENTICATED = frozenset({"/metrics"})

# What reading a request's body can answer, besides the route's own 400/422: 408
# `request_timeout` (not all of it within server.read_timeout_s) and 413 `body_too_large`.
# /openapi.json documents them on every route that takes a body.
BODY_TIMEOUT_STATUS = 408
BODY_TOO_LARGE_STATUS = 413
BODY_STATUSES = (BODY_TIMEOUT_STATUS, BODY_TOO_LARGE_STATUS)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def error_response(exc: AhvError) -> web.Response:
    response = web.json_response(error_body(exc.code, exc.message), status=exc.status)
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
    return response


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One middleware (each layer costs on every request): authenticate, then turn every
    error into the one error shape."""
    try:
        return await _authenticated(request, handler)
    except AhvError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        message = exc.reason
        if exc.status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        elif exc.status == 413:
            message = _too_large_message(request)
        response = error_response(AhvError(code, message, status=exc.status))
        if "Allow" in exc.headers:  # a 405 must say what is allowed (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:
        if isinstance(exc, ConnectionResetError) and _client_gone(request):
            # The client went away (mid-body, or before its answer): not a server error.
            # What is answered here is never read; aiohttp drops it quietly.
            log.info(
                "client closed the connection during %s %s",
                request.method,
                request.path,
                extra={"event": "client_gone"},
            )
            return error_response(AhvError("bad_request", "the connection closed early"))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            AhvError("internal_error", "internal error; see the server log", status=500)
        )


def _client_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


_MAX_BODY = web.AppKey("max_body_bytes", int)


def is_public(path: str) -> bool:
    """Served without an X-API-Key (/openapi.json documents routes by this too)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


async def _authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = orchestrator(request)
    if not app.seen_base_url:
        # Result URLs need this server's address when ahv.toml gives no public_url.
        app.seen_base_url = socket_url(request) or ""
    if is_public(request.path):
        return await handler(request)
    if request.path in SELF_AUTHENTICATED:
        return await handler(request)
    request[CALLER] = app.keys.authenticate(request.headers.get("X-API-Key"))
    if (request.content_length or 0) > request.app[_MAX_BODY]:
        # Refused at once: waiting for a body that will be refused only holds the connection.
        response = error_response(
            AhvError("body_too_large", _too_large_message(request), status=BODY_TOO_LARGE_STATUS)
        )
        response.force_close()  # the rest of the body is not read
        return response
    if request.body_exists and not request.content.is_eof():
        # Not all of the body is here yet (a small one usually comes with the headers).
        await _read_body(request)
    return await handler(request)


def _too_large_message(request: web.Request) -> str:
    return f"request body is larger than the limit of {request.app[_MAX_BODY]} bytes"


async def _read_body(request: web.Request) -> None:
    """Read the whole body now, within server.read_timeout_s, so that a client that sends it
    slowly (or never finishes it) cannot hold a connection and a handler for ever; handlers'
    own `request.read()` then returns the cached bytes."""
    timeout_s = request.app[_READ_TIMEOUT]
    try:
        async with asyncio.timeout(timeout_s):
            await request.read()
    except TimeoutError:
        raise AhvError(
            "request_timeout",
            f"the request body did not arrive within {timeout_s:g} s (server.read_timeout_s)",
            status=BODY_TIMEOUT_STATUS,
        ) from None


_READ_TIMEOUT = web.AppKey("read_timeout_s", float)
MAX_BODY_KEY = _MAX_BODY
READ_TIMEOUT_KEY = _READ_TIMEOUT
