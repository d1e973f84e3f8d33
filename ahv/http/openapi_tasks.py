"""The routes `/openapi.json` describes from the task registry: `POST /v1/jobs`, whose body
has one schema per task (`SubmitRequest`'s fields with `payload` typed by the task and `task`
as the discriminator), and each task's blocking endpoint. Plugins' tasks appear by
themselves."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, Union

import msgspec

from ahv.api_types import JobDocument
from ahv.config import Config
from ahv.http.openapi_routes import Param, Route
from ahv.orchestrator import SubmitRequest
from ahv.tasks import TaskSpec
from ahv.webhooks import EVENTS


def task_routes(registry: Mapping[str, TaskSpec], config: Config) -> list[Route]:
    """`POST /v1/jobs` (one body schema per task) and the blocking endpoints of the tasks."""
    served = {task for backend in config.backends for task in backend.tasks}
    submit = Route(
        "POST",
        "/v1/jobs",
        "Queue a job",
        {202: JobDocument, 200: JobDocument},
        body=_submit_union(registry, served),
        errors=(409, 429, 503),
        params=(
            Param(
                "Idempotency-Key",
                "header",
                {"type": "string", "minLength": 1, "maxLength": 255},
                "the same key and body returns the same job (200, Idempotent-Replayed: true); "
                "a different body is a 409",
            ),
        ),
        description="`task` chooses the payload's schema. Answers 202 with the queued job.",
    )
    direct = [(spec.direct_path, [spec]) for spec in registry.values() if spec.direct_path]
    if "faceswap" in registry:  # POST /faceswap serves both modes (see ahv/http/direct.py)
        faces = [registry[name] for name in ("faceswap", "faceswap_multi") if name in registry]
        direct.append(("/faceswap", faces))
    return [submit, *(_direct_route(path, specs) for path, specs in direct)]


def _direct_route(path: str, specs: list[TaskSpec]) -> Route:
    payloads = list(dict.fromkeys(spec.payload_type for spec in specs))
    names = " or ".join(f"`{spec.name}`" for spec in specs)
    return Route(
        "POST",
        path,
        f"Run {names} and wait for the job to end",
        {200: JobDocument},
        body=Union[tuple(payloads)],  # noqa: UP007 (a runtime union of a list of types)
        body_required=not all(_accepts_empty(p) for p in payloads),
        errors=(429, 503),
        tag="tasks",
        description=f"The body is the {names} job's payload. The job goes through the queue at "
        "`queue.direct_priority`; the connection is held until it ends, whatever its final "
        "status (a failed job is a 200 with its `error`); hanging up cancels it.",
    )


def _submit_union(registry: Mapping[str, TaskSpec], served: set[str]) -> Any:
    """SubmitRequest with `payload` typed per task and `task` as the tag, one per task."""
    variants = []
    taken: set[str] = set()
    for spec in registry.values():
        fields: list[Any] = []
        for info in msgspec.structs.fields(SubmitRequest):
            if info.name == "payload":
                optional = _accepts_empty(spec.payload_type)
                default = msgspec.field(default_factory=spec.payload_type)
                fields.append(("payload", spec.payload_type, *([default] if optional else [])))
            elif info.name == "webhook_events":  # a list[str] checked against EVENTS
                events = Literal.__getitem__(tuple(sorted(EVENTS)))
                fields.append((info.name, list[events], _default(info)))  # type: ignore[valid-type]
            elif info.name != "task":
                fields.append((info.name, info.type, _default(info)))
        name = _unique(f"Submit_{re.sub(r'[^0-9A-Za-z_]', '_', spec.name)}", taken)
        variant = msgspec.defstruct(
            name,
            fields,
            kw_only=True,
            forbid_unknown_fields=SubmitRequest.__struct_config__.forbid_unknown_fields,
            tag_field="task",
            tag=spec.name,
            module=__name__,
        )
        note = "" if spec.name in served else " No backend in ahv.toml serves it (422)."
        variant.__doc__ = f"Task `{spec.name}`.{note}"
        variants.append(variant)
    return Union[tuple(variants)]  # noqa: UP007


def _default(info: msgspec.structs.FieldInfo) -> Any:
    if info.default_factory is not msgspec.NODEFAULT:
        return msgspec.field(default_factory=info.default_factory)
    return info.default


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate


def _accepts_empty(payload_type: type[msgspec.Struct]) -> bool:
    """An omitted payload (or empty direct body) is decoded as `{}`: is that valid?"""
    try:
        msgspec.json.decode(b"{}", type=payload_type)
    except msgspec.ValidationError:
        return False
    return True
