"""`GET /openapi.json`: the OpenAPI 3.1 document of this server.

Schemas come from the types the server itself decodes and sends: `SubmitRequest` and each
task's payload Struct (from the live task registry, plugins included) for requests, the
Structs of ahv/api_types.py for responses, through `msgspec.json.schema_components`. What
each route takes and answers is the table in ahv/http/openapi_routes.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec
from aiohttp import web

import ahv
from ahv.api_types import ErrorBody, JobDocument, WebhookEnvelope
from ahv.config import Config
from ahv.http.keys import base_url
from ahv.http.middleware import BODY_STATUSES, SELF_AUTHENTICATED, is_public
from ahv.http.openapi_routes import ERROR_CODES, ROUTES, Media, Route
from ahv.http.openapi_tasks import task_routes
from ahv.tasks import TaskSpec
from ahv.webhooks import EVENTS

_REF = "#/components/schemas/{name}"
Link = tuple[str, str]
_SECURITY = "apiKey"
_METRICS_TOKEN = "metricsToken"
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}

routes = web.RouteTableDef()


class OpenApi:
    """The document of one app, built on first use (the registry is fixed by then)."""

    def __init__(self, registry: Mapping[str, TaskSpec], config: Config) -> None:
        self._registry = registry
        self._config = config
        self._document: dict[str, Any] | None = None

    @property
    def document(self) -> dict[str, Any]:
        if self._document is None:
            self._document = build_document(self._registry, self._config)
        return self._document


DOCUMENT = web.AppKey("openapi", OpenApi)


@routes.get("/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    server = base_url(request)
    document = request.app[DOCUMENT].document
    body = {"openapi": document["openapi"], "info": document["info"], "servers": [{"url": server}]}
    return web.Response(
        body=msgspec.json.encode({**body, **document}), content_type="application/json"
    )


def all_routes(registry: Mapping[str, TaskSpec], config: Config) -> list[Route]:
    return [*ROUTES, *task_routes(registry, config)]


# -- the document ----------------------------------------------------------------------------


def build_document(registry: Mapping[str, TaskSpec], config: Config) -> dict[str, Any]:
    table = all_routes(registry, config)
    types: list[Any] = [ErrorBody, WebhookEnvelope, JobDocument]
    for route in table:
        types.extend(t for t in route.responses.values() if not isinstance(t, Media))
        if route.body is not None:
            types.append(route.body)
    types = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(types, schemas, strict=True))
    job_links: dict[str, Link] = {}
    for route in table:
        link = _job_link(route)
        if link is not None:
            job_links[_operation_id(route)] = link
    paths: dict[str, dict[str, Any]] = {}
    for route in table:
        operation = _operation(route, schema_of, job_links)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ahv",
            "version": ahv.__version__,
            "description": "A self-hosted AI orchestrator: durable job queue, GPU scheduler "
            "and signed webhooks. Every error is `{ok: false, error: {code, message}}`.",
        },
        "security": [{_SECURITY: []}],
        "paths": paths,
        "webhooks": _webhooks(schema_of),
        "components": {
            "schemas": components,
            "securitySchemes": {
                _SECURITY: {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                _METRICS_TOKEN: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`server.metrics_token`, for a scraper that holds no key",
                },
            },
        },
    }


def _operation(
    route: Route, schema_of: Mapping[Any, dict[str, Any]], job_links: Mapping[str, Link]
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        operation["description"] = route.description
    if is_public(route.path):
        operation["security"] = []
    elif route.path in SELF_AUTHENTICATED:  # /metrics: an admin key, or the metrics token
        operation["security"] = [{_SECURITY: []}, {_METRICS_TOKEN: []}]
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        schema = dict(schema_of[route.body])
        if "discriminator" in schema:  # tagged by `task`: exactly one variant matches
            schema["oneOf"] = schema.pop("anyOf")
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {"application/json": {"schema": schema}},
        }
    responses: dict[str, Any] = {}
    for status, body in sorted(route.responses.items()):
        response = _response(status, body, schema_of)
        if body is JobDocument:
            response["links"] = {
                op_id: {"operationId": op_id, "parameters": {name: f"$response.body#{pointer}"}}
                for op_id, (name, pointer) in job_links.items()
            }
        responses[str(status)] = response
    for status in sorted(_error_statuses(route) - set(route.responses)):
        response = _response(status, ErrorBody, schema_of)
        response["description"] = ERROR_CODES[status]
        if status in (429, 503):
            response["headers"] = _RETRY_AFTER
        responses[str(status)] = response
    operation["responses"] = responses
    return operation


def _job_link(route: Route) -> Link | None:
    """(path parameter, pointer into a job document) that links a job to this route."""
    names = re.findall(r"{([^}]+)}", route.path)
    if route.job_link is not None and len(names) == 1:
        return names[0], route.job_link
    return ("job_id", "/job_id") if names == ["job_id"] else None


def _response(status: int, body: Any, schema_of: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
    if isinstance(body, Media):
        media = {} if body.schema is None else {"schema": body.schema}
        content = {content_type: media for content_type in body.content_types}
    else:
        content = {"application/json": {"schema": schema_of[body]}}
    return {"description": HTTPStatus(status).phrase, "content": content}


def _error_statuses(route: Route) -> set[int]:
    statuses = set(route.errors)
    if not is_public(route.path):
        statuses.add(401)
    if route.body is not None:
        statuses |= {400, 422, *BODY_STATUSES}
    if "{" in route.path:
        statuses.add(404)
    if any(param.where == "query" for param in route.params):
        statuses.add(422)
    return statuses


def _parameters(route: Route) -> list[dict[str, Any]]:
    given = {(p.where, p.name): p for p in route.params}
    out = []
    for name in re.findall(r"{([^}]+)}", route.path):
        override = given.pop(("path", name), None)
        schema = override.schema if override else {"type": "string"}
        out.append({"name": name, "in": "path", "required": True, "schema": dict(schema)})
    for param in given.values():
        entry: dict[str, Any] = {
            "name": param.name,
            "in": param.where,
            "schema": dict(param.schema),
        }
        if param.description:
            entry["description"] = param.description
        out.append(entry)
    return out


def _operation_id(route: Route) -> str:
    slug = re.sub(r"[^0-9A-Za-z]+", "_", route.path).strip("_")
    return f"{route.method.lower()}_{slug}"


def _webhooks(schema_of: Mapping[Any, dict[str, Any]]) -> dict[str, Any]:
    """What ahv POSTs to a job's `webhook_url` (Standard Webhooks headers)."""
    headers = [
        ("webhook-id", "the event_id, the same on every retry"),
        ("webhook-timestamp", "seconds since the epoch"),
        ("webhook-signature", "v1,<base64 HMAC-SHA256 of 'id.timestamp.body'>"),
    ]
    body = {"allOf": [schema_of[WebhookEnvelope], schema_of[JobDocument]]}
    return {
        event: {
            "post": {
                "summary": f"`{event}`"
                + (" (sent for every final status)" if event == "job.finished" else ""),
                "parameters": [
                    {"name": n, "in": "header", "required": True, "description": d}
                    | {"schema": {"type": "string"}}
                    for n, d in headers
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                },
                "responses": {
                    "2XX": {"description": "received; 3xx, 408, 425, 429, 5xx are retried"}
                },
            }
        }
        for event in sorted(EVENTS)
    }
