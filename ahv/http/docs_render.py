"""Render the docs page from its template and the task registry.

Everything inserted is HTML-escaped here. The result still holds `{{API_BASE}}`, which
`fill_base` replaces per request (the base depends on the request when ahv.toml gives no
`server.public_url`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import msgspec.inspect as mi

from ahv.config import Config
from ahv.errors import AhvError
from ahv.http.docs_text import TASK_DOCS, Text, field_text
from ahv.jobs import JobRow, job_document
from ahv.tasks import TaskSpec

API_BASE = "{{API_BASE}}"
KEY_VAR = "$AHV_API_KEY"
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
_SLUG = re.compile(r"[^a-z0-9]+")

# The product sheet's order; tasks it does not know (plugins) come after, by name.
SHEET_ORDER = (
    "faceswap",
    "faceswap_multi",
    "faceswap_video",
    "ahv_image",
    "ahv_video",
    "gg_image",
    "cx_image",
    "upscale",
    "remove_object",
    "scan_objects",
    "remove_background",
)


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def ordered_tasks(registry: Mapping[str, TaskSpec]) -> list[TaskSpec]:
    rank = {name: i for i, name in enumerate(SHEET_ORDER)}
    return sorted(registry.values(), key=lambda s: (rank.get(s.name, len(rank)), s.name))


def direct_path(spec: TaskSpec, registry: Mapping[str, TaskSpec]) -> str | None:
    """The blocking endpoint of a task. Both face modes share `POST /faceswap` (app.py adds
    it when `faceswap` is registered; a body with `source_urls` runs `faceswap_multi`)."""
    if spec.direct_path is not None:
        return spec.direct_path
    if spec.name in ("faceswap", "faceswap_multi") and "faceswap" in registry:
        return "/faceswap"
    return None


# -- payload tables --------------------------------------------------------------------------


def type_text(t: mi.Type) -> str:
    """A payload field's type as the sheet writes it (`string`, `int`, `0/1`, `array`...),
    with the bounds the Struct enforces."""
    if isinstance(t, mi.UnionType):
        parts = [type_text(m) for m in t.types if not isinstance(m, mi.NoneType)]
        return " or ".join(parts) or "null"
    if isinstance(t, mi.Metadata):
        return type_text(t.type)
    if isinstance(t, mi.LiteralType):
        return "/".join(msgspec.json.encode(v).decode() for v in t.values)
    if isinstance(t, mi.IntType | mi.FloatType):
        return ("int" if isinstance(t, mi.IntType) else "float") + _bounds(t)
    if isinstance(t, mi.StrType):
        return "string"
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return f"array of {type_text(t.item_type)}"
    if isinstance(t, mi.TupleType):
        return "array"
    if isinstance(t, mi.DictType | mi.StructType | mi.TypedDictType | mi.DataclassType):
        return "object"
    if isinstance(t, mi.AnyType):
        return "any"
    return type(t).__name__.removesuffix("Type").lower()


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    low = t.ge if t.ge is not None else t.gt
    high = t.le if t.le is not None else t.lt
    if low is not None and high is not None:
        return f", {low}–{high}"
    if low is not None:
        return f", {'≥' if t.ge is not None else '>'} {low}"
    if high is not None:
        return f", {'≤' if t.le is not None else '<'} {high}"
    return ""


def default_text(f: mi.Field) -> str:
    if f.required:
        return "required"
    value = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
    if value is None:
        return "optional"
    return f"default {msgspec.json.encode(value).decode()}"


def _text_html(text: Text | None) -> str:
    if text is None:
        return '<span class="muted">No description.</span>'
    out = esc(text.en)
    if text.vi:
        out += f' <span class="vi" lang="vi">{esc(text.vi)}</span>'
    return out


def payload_table(spec: TaskSpec) -> str:
    fields = _fields(spec)
    if not fields:
        return '<p class="muted">This task takes no payload fields.</p>'
    rows = "".join(
        f"<tr><td><code>{esc(f.encode_name)}</code></td><td>{esc(type_text(f.type))}</td>"
        f"<td>{esc(default_text(f))}</td><td>{_text_html(field_text(spec.name, f.name))}</td></tr>"
        for f in fields
    )
    return (
        f'<table class="params" data-task="{esc(spec.name)}"><thead><tr><th>Param</th>'
        "<th>Type</th><th>Required / default</th><th>Desc</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _fields(spec: TaskSpec) -> tuple[mi.Field, ...]:
    info = mi.type_info(spec.payload_type)
    return info.fields if isinstance(info, mi.StructType) else ()


# -- examples --------------------------------------------------------------------------------

_SAMPLE_VALUES: dict[str, Any] = {
    "prompt": "a lighthouse on a cliff at sunset",
    "image_url": "https://example.com/photo.jpg",
    "target_url": "https://example.com/target.jpg",
    "source_url": "https://example.com/face.jpg",
}


def _sample(name: str, t: mi.Type) -> Any:
    if name in _SAMPLE_VALUES:
        return _SAMPLE_VALUES[name]
    if isinstance(t, mi.UnionType):
        t = next(m for m in t.types if not isinstance(m, mi.NoneType))
    if isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    if isinstance(t, mi.StrType):
        return f"https://example.com/{name.removesuffix('_url')}.jpg" if "url" in name else name
    if isinstance(t, mi.IntType | mi.FloatType):
        low = t.ge if t.ge is not None else t.gt
        return low if low is not None else 1
    if isinstance(t, mi.BoolType):
        return True
    if isinstance(t, mi.ListType):
        return [_sample(name.removesuffix("s"), t.item_type)]
    return {}


def example_payloads(
    spec: TaskSpec, config: Config | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The task's written examples, kept to the fields its payload has and checked as a
    submit would check them (payload type, the task's own checks); a generated one (required
    fields) when none is left."""
    fields = _fields(spec)
    known = {f.encode_name for f in fields}
    doc = TASK_DOCS.get(spec.name)
    examples: list[tuple[str, dict[str, Any]]] = []
    for label, written in doc.examples if doc is not None else ():
        payload = {k: v for k, v in written.items() if k in known}
        for f in fields:
            if f.required and f.encode_name not in payload:
                payload[f.encode_name] = _sample(f.encode_name, f.type)
        if _valid(spec, payload, config) and payload not in [p for _, p in examples]:
            examples.append((label, payload))
    if not examples:
        # Every task gets an example: at worst its required fields, of the right types.
        payload = {f.encode_name: _sample(f.encode_name, f.type) for f in fields if f.required}
        if _valid(spec, payload, None):
            examples.append(("Example", payload))
    return examples


def _valid(spec: TaskSpec, payload: dict[str, Any], config: Config | None) -> bool:
    try:
        decoded = msgspec.convert(payload, spec.payload_type)
        if spec.validate is not None and config is not None:
            spec.validate(decoded, config)
    except (msgspec.ValidationError, AhvError):
        return False
    return True


def curl(path: str, body: Any) -> str:
    """A copyable curl command (plain text; the caller escapes it for HTML)."""
    data = msgspec.json.format(msgspec.json.encode(body), indent=2).decode()
    data = data.replace("'", "'\\''")  # inside single quotes for the shell
    data = data.replace("\n", "\n  ")
    return (
        f'curl -X POST "{API_BASE}{path}" \\\n'
        f'  -H "X-API-Key: {KEY_VAR}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{data}'"
    )


def code_block(text: str, kind: str = "") -> str:
    attr = f' data-kind="{esc(kind)}"' if kind else ""
    return f'<pre class="code"{attr}><code>{esc(text)}</code></pre>'


# -- task sections ---------------------------------------------------------------------------


def slug(name: str) -> str:
    return "task-" + _SLUG.sub("-", name.lower()).strip("-")


def task_section(
    spec: TaskSpec, registry: Mapping[str, TaskSpec], config: Config | None = None
) -> str:
    doc = TASK_DOCS.get(spec.name)
    title = doc.title if doc is not None else spec.name
    direct = direct_path(spec, registry)
    parts = [
        f'<section class="task" id="{slug(spec.name)}" data-task="{esc(spec.name)}">',
        f"<h3>{esc(title)} <code class='task-name'>{esc(spec.name)}</code></h3>",
    ]
    if doc is not None:
        parts.append(f"<p>{_text_html(doc.summary)}</p>")
        parts.extend(f"<p>{esc(p)}</p>" for p in doc.details)
    else:
        summary = (spec.payload_type.__doc__ or "").strip()
        parts.append(f"<p>{esc(summary) if summary else 'A task added by a plugin.'}</p>")
    endpoints = f'<code>POST /v1/jobs</code> with <code>"task": "{esc(spec.name)}"</code>'
    if direct is not None:
        endpoints += f" · blocking: <code>POST {esc(direct)}</code>"
    parts.append(f'<p class="endpoints">{endpoints}</p>')
    for label, payload in example_payloads(spec, config):
        job = {
            "task": spec.name,
            "webhook_url": "https://your-site.com/webhook",
            "payload": payload,
        }
        parts.append(f"<h4>{esc(label)}</h4>")
        parts.append(code_block(curl("/v1/jobs", job), "async"))
        if direct is not None:
            parts.append(f'<p class="muted">Blocking form ({esc(_BLOCKING_SHORT)}):</p>')
            parts.append(code_block(curl(direct, payload), "direct"))
    parts.append(payload_table(spec))
    if doc is not None and doc.result:
        parts.append(f'<p class="result"><b>Result:</b> {esc(doc.result)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


_BLOCKING_SHORT = "same payload, the connection is held until the job ends"


def task_badges(registry: Mapping[str, TaskSpec]) -> str:
    return " ".join(
        f'<a class="badge" href="#{slug(s.name)}">{esc(s.name)}</a>'
        for s in ordered_tasks(registry)
    )


def direct_rows(registry: Mapping[str, TaskSpec]) -> str:
    rows: dict[str, list[str]] = {}
    for spec in ordered_tasks(registry):
        path = direct_path(spec, registry)
        if path is not None:
            rows.setdefault(path, []).append(spec.name)
    out = []
    for path, names in rows.items():
        doc = TASK_DOCS.get(names[0])
        what = "A plugin task." if doc is None else _text_html(doc.endpoint or doc.summary)
        tasks = ", ".join(f"<code>{esc(n)}</code>" for n in names)
        out.append(
            f"<tr><td><code>POST {esc(path)}</code></td><td>{tasks}</td><td>{what}</td></tr>"
        )
    return "".join(out)


# -- job document samples (built by the real job_document, so they cannot drift) -------------

_SHEET_FILE = "3c3da5ddac6a4c5081d46d829d168cb3.jpg"


def _sample_row(status: str) -> JobRow:
    created = 1770228253773524
    row = JobRow(
        id="d1142818265748d9914053dafc20dd98",
        owner="demo",
        task="upscale",
        status=status,
        priority=5,
        rank_ms=0,
        payload=b"{}",
        attempts=1,
        max_attempts=3,
        created_us=created,
        queued_us=created,
        predict_time=3.0,
        eta_us=1770228256773638,
    )
    if status == "queued":
        return msgspec.structs.replace(row, attempts=0)
    row = msgspec.structs.replace(row, started_us=1770228254264808, progress=40)
    if status == "running":
        return row
    row = msgspec.structs.replace(row, finished_us=1770228259462901, progress=100)
    if status == "succeeded":
        meta = {"width": 507, "height": 678, "backend": "UPVN1-1"}
        result = {
            "ok": True,
            "status": "succeeded",
            "url": f"{API_BASE}/files/{_SHEET_FILE}",
            "filename": _SHEET_FILE,
            "meta": meta,
        }
        return msgspec.structs.replace(row, result=result)
    if status == "canceled":  # a canceled job has no error: the client asked for it
        return msgspec.structs.replace(row, progress=40)
    errors = {
        "failed": ("timeout", "the job ran past its 600 s limit"),
        "rejected": ("nsfw_blocked", "target_url: refused by the content filter"),
    }
    code, message = errors[status]
    return msgspec.structs.replace(row, progress=0, error={"code": code, "message": message})


def sample_document(status: str) -> dict[str, Any]:
    row = _sample_row(status)
    doc: dict[str, Any] = msgspec.to_builtins(
        job_document(row, queue_position=0 if status == "queued" else None)
    )
    if status in ("queued", "running"):
        return doc
    envelope = {
        "event": "job.finished",
        "event_id": "f03675fc03334822be22b98ee9215c1d",
        "ts": "2026-02-04T18:04:19.463754+00:00",
    }
    return {**envelope, **doc}


def json_text(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


# -- the page --------------------------------------------------------------------------------


def render_docs(
    template: str, registry: Mapping[str, TaskSpec], version: str, config: Config | None = None
) -> str:
    tasks = ordered_tasks(registry)
    values = {
        "VERSION": esc(version),
        "TASK_BADGES": task_badges(registry),
        "TASK_TOC": "".join(f'<li><a href="#{slug(s.name)}">{esc(s.name)}</a></li>' for s in tasks),
        "TASK_SECTIONS": "\n".join(task_section(s, registry, config) for s in tasks),
        "DIRECT_ROWS": direct_rows(registry),
        "SUBMIT_RESPONSE": esc(json_text(sample_document("queued"))),
        "WEBHOOK_SUCCEEDED": esc(json_text(sample_document("succeeded"))),
        "FIRST_TASK": esc(tasks[0].name if tasks else "upscale"),
    }
    for status in ("queued", "running", "succeeded", "failed", "rejected", "canceled"):
        values[f"SAMPLE_{status.upper()}"] = esc(json_text(sample_document(status)))
    return fill(template, values, keep=("API_BASE",))


def fill(template: str, values: Mapping[str, str], keep: Iterable[str] = ()) -> str:
    """Replace `{{NAME}}` markers; a marker with no value (and not kept) is a bug in the
    template, caught at start-up rather than shown to a reader."""
    kept = set(keep)

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in kept:
            return match.group(0)
        if name not in values:
            raise KeyError(f"docs template: no value for {{{{{name}}}}}")
        return values[name]

    return _PLACEHOLDER.sub(one, template)


def fill_base(page: str, base: str) -> str:
    return page.replace(API_BASE, esc(base.rstrip("/")))
