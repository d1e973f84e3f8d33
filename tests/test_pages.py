"""The docs page, the dashboard page and their static files, over real HTTP: served without
a key, generated from the task registry, the API base filled in and escaped, no secrets."""

from __future__ import annotations

import asyncio
import fnmatch
import html
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect

from ahv.http.direct import face_task_for
from ahv.http.docs_render import direct_path
from ahv.http.docs_text import TASK_DOCS
from ahv.http.openapi_routes import ERROR_CODES, ROUTES
from ahv.http.pages import STATIC_FILES
from ahv.jobs import REJECTION_CODES
from ahv.tasks import builtin_tasks
from tests.conftest import (
    KEY_A,
    KEY_ADMIN,
    KEY_B,
    SECRET_A,
    SECRET_ADMIN,
    SECRET_B,
    Api,
    StartServer,
)

SECRETS = (KEY_A, KEY_B, KEY_ADMIN, SECRET_A, SECRET_B, SECRET_ADMIN)
CURL_BODY = re.compile(r"curl -X POST &quot;([^&]+)&quot;.*?-d &#x27;(.*?)&#x27;", re.S)


async def get_page(api: Api, path: str, **headers: str) -> tuple[int, str, Any]:
    async with api.session.get(api.url + path, headers=headers) as response:
        return response.status, await response.text(), response


async def test_docs_page_is_public_and_covers_every_task(api: Api) -> None:
    status, page, response = await get_page(api, "/")
    assert status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "{{" not in page  # {{API_BASE}} and every other marker filled in
    registry = api.orchestrator.registry
    assert "sleep" in registry  # the plugin task: tasks come from the registry, not a list
    for name, spec in registry.items():
        assert f'id="task-{name.replace("_", "-")}"' in page, name
        assert f"&quot;task&quot;: &quot;{name}&quot;" in page, name  # its curl example
        assert f'<table class="params" data-task="{name}">' in page, name
        path = direct_path(spec, registry)
        if path is not None:
            assert f"<code>POST {path}</code>" in page, (name, path)
    # Every payload field of a task has its row in the task's table.
    section = page[page.index('id="task-upscale"') :]
    section = section[: section.index("</section>")]
    for field in ("image_url", "scale", "max_side", "sharpen", "face_restore", "fidelity"):
        assert f"<td><code>{field}</code></td>" in section, field
    assert f"curl -X POST &quot;{api.url}/v1/jobs&quot;" in page
    assert f"curl -X POST &quot;{api.url}/upscale&quot;" in page
    assert 'href="/dashboard"' in page and 'href="/openapi.json"' in page
    # The sheet's wording is kept next to the English.
    assert 'lang="vi">Khi hoàn thành, Server gọi POST webhook_url trả kết quả.' in page
    assert "Content-Security-Policy" in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_docs_examples_are_valid_payloads_of_their_tasks(api: Api) -> None:
    _, page, _ = await get_page(api, "/")
    registry = api.orchestrator.registry
    by_path = {direct_path(s, registry): s for s in registry.values()}
    found = 0
    for url, body in CURL_BODY.findall(page):
        data = msgspec.json.decode(html.unescape(body).replace("'\\''", "'"))
        path = url.removeprefix(api.url)
        if path == "/v1/jobs":
            spec = registry[data["task"]]
            payload = data["payload"]
        else:
            spec = by_path[path]
            if path == "/faceswap":  # one endpoint, two tasks
                spec = registry[face_task_for(msgspec.json.encode(data))]
            payload = data
        # Raises if the docs show a field, a value or a combination the task refuses.
        decoded = msgspec.convert(payload, spec.payload_type)
        if spec.validate is not None:
            spec.validate(decoded, api.orchestrator.config)
        found += 1
    with_direct = [s for s in registry.values() if direct_path(s, registry) is not None]
    assert found >= len(registry) + len(with_direct)  # async and blocking, for every task


async def test_docs_base_is_public_url_when_configured(start_server: StartServer) -> None:
    api = await start_server(server={"public_url": "https://ahv.example.com/"})
    _, page, _ = await get_page(api, "/")
    assert "curl -X POST &quot;https://ahv.example.com/v1/jobs&quot;" in page
    assert '<code id="api-base">https://ahv.example.com</code>' in page
    assert api.url not in page


async def test_docs_base_from_host_header_is_escaped(api: Api) -> None:
    status, page, _ = await get_page(api, "/", Host='x"><script>alert(1)</script>')
    assert status == 200
    assert "<script>alert(1)" not in page
    assert "http://x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;/v1/jobs" in page


async def raw_get(api: Api, path: str) -> bytes:
    """GET over a bare socket, HTTP/1.0 without a Host header (as old clients send it)."""
    reader, writer = await asyncio.open_connection(api.server.host, api.server.port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_docs_base_without_a_host_header_is_the_address_and_port(api: Api) -> None:
    # request.host would give the machine's name without the port: curl examples on port 80.
    answer = await raw_get(api, "/")
    assert answer.startswith(b"HTTP/1.0 200"), answer[:200]
    page = answer.decode()
    base = f"http://{api.server.host}:{api.server.port}"
    assert f'<code id="api-base">{base}</code>' in page
    assert f"curl -X POST &quot;{base}/v1/jobs&quot;" in page
    # /openapi.json says the same.
    answer = await raw_get(api, "/openapi.json")
    document = msgspec.json.decode(answer.split(b"\r\n\r\n", 1)[1])
    assert document["servers"] == [{"url": base}]


async def test_dashboard_and_static_files(api: Api) -> None:
    status, page, response = await get_page(api, "/dashboard")
    assert status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<script src="/static/dashboard.js" defer></script>' in page
    assert 'id="conn-mode"' in page and 'id="key-form"' in page
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "<script>" not in page  # no inline script: the CSP forbids it
    for name, content_type in STATIC_FILES.items():
        async with api.session.get(f"{api.url}/static/{name}") as response:
            assert response.status == 200, name
            assert response.headers["Content-Type"] == content_type
            etag = response.headers["ETag"]
            assert len(await response.read()) > 100
        async with api.session.get(
            f"{api.url}/static/{name}", headers={"If-None-Match": etag}
        ) as response:
            assert response.status == 304
    for missing in ("/static/nope.js", "/static/..%2Fpages.py", "/static/"):
        status, body, _ = await api.call("GET", missing, key=None)
        assert status == 404, missing
        assert body["ok"] is False and body["error"]["code"] in ("not_found",), body


async def test_pages_leak_no_key(api: Api) -> None:
    bodies = []
    for path in ["/", "/dashboard", *(f"/static/{n}" for n in STATIC_FILES)]:
        _, text, response = await get_page(api, path)
        assert "Set-Cookie" not in response.headers
        bodies.append(text)
    for secret in SECRETS:
        assert all(secret not in body for body in bodies), secret
    # Other paths still need a key: only the pages were made public.
    status, body, _ = await api.call("GET", "/stats", key=None)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _, _ = await api.call("GET", "/dashboard/../stats", key=None)
    assert status == 401


async def test_job_detail_includes_its_payload(api: Api) -> None:
    job = await api.submit("sleep", {"seconds": 0.01, "steps": 2})
    doc = await api.job(job["job_id"])
    assert doc["payload"]["seconds"] == 0.01 and doc["payload"]["steps"] == 2
    status, listing, _ = await api.call("GET", "/v1/jobs")
    assert status == 200 and "payload" not in listing["jobs"][0]
    status, _, _ = await api.call("GET", f"/v1/jobs/{job['job_id']}", key=KEY_B)
    assert status == 404  # another key's job (and its inputs) stay hidden


def test_page_files_ship_in_the_package() -> None:
    # pip install and the zipapp carry only what package-data names, in the packages that
    # setuptools finds; every static file is also served (STATIC_FILES), else it would ship
    # for nothing.
    from setuptools import find_namespace_packages

    root = Path(__file__).resolve().parent.parent
    setuptools_config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_namespace_packages(str(root), **setuptools_config["packages"]["find"]))
    globs = setuptools_config["package-data"]["*"]
    package = root / "ahv" / "http"
    files = [p for d in ("static", "templates") for p in (package / d).iterdir()]
    assert {"docs.html", "dashboard.html", *STATIC_FILES} == {p.name for p in files}
    for path in files:
        assert f"ahv.http.{path.parent.name}" in found, path
        assert any(fnmatch.fnmatch(path.name, g) for g in globs), path


def section_of(page: str, marker: str) -> str:
    start = page.index(marker)
    return page[start : page.index("</table>", start)]


def test_written_examples_keep_every_field_they_show() -> None:
    # The page drops fields a task's payload does not have (so that an example never lies);
    # a written example that loses one is a wrong example: `image_url` on a task that takes
    # `image_urls` turned "Edit an image" into a plain generation.
    registry = {spec.name: spec for spec in builtin_tasks()}
    for task, doc in TASK_DOCS.items():
        spec = registry[task]
        known = {f.encode_name for f in msgspec.inspect.type_info(spec.payload_type).fields}
        for label, payload in doc.examples:
            assert set(payload) <= known, (task, label, set(payload) - known)
            msgspec.convert(payload, spec.payload_type)  # raises if the task refuses it


async def test_cloud_tasks_have_their_real_payloads(api: Api) -> None:
    _, page, _ = await get_page(api, "/")
    bodies = {}
    for url, body in CURL_BODY.findall(page):
        data = msgspec.json.decode(html.unescape(body).replace("'\\''", "'"))
        if url == f"{api.url}/v1/jobs":
            bodies.setdefault(data["task"], []).append(data["payload"])
    # Image-to-image and edits take `image_urls`; several images are shown too.
    assert any(p.get("image_urls") for p in bodies["ahv_image"]), bodies["ahv_image"]
    assert any(p.get("image_urls") and p.get("mask_url") for p in bodies["cx_image"])
    assert any(p.get("n", 1) > 1 for p in bodies["cx_image"])
    assert any(p.get("number_of_images", 1) > 1 for p in bodies["gg_image"])
    assert any(p.get("image_url") for p in bodies["ahv_video"])
    # Every field of a built-in task has words: the docs' own, else the Struct's description.
    for spec in builtin_tasks():
        table = section_of(page, f'<table class="params" data-task="{spec.name}">')
        assert "No description." not in table, spec.name
    gg = section_of(page, '<table class="params" data-task="gg_image">')
    assert "<td><code>number_of_images</code></td><td>int, 1–4</td>" in gg
    assert "Images to generate, 1-4." in gg
    video = section_of(page, '<table class="params" data-task="ahv_video">')
    assert "&quot;720p&quot; / &quot;1080p&quot; / &quot;4k&quot;" in video  # declared order
    for task in ("gg_image", "cx_image"):
        start = page.index(f'id="task-{task.replace("_", "-")}"')
        assert "result.files" in page[start : page.index("</section>", start)], task


async def test_endpoint_reference_lists_every_route_and_error_code(api: Api) -> None:
    _, page, _ = await get_page(api, "/")
    reference = section_of(page, 'id="endpoint-table"')
    # Every route but the dashboard's own files, as `METHOD /path`; the old name of the
    # delivery log is named next to it.
    for route in ROUTES:
        shown = route.path.replace("{job_id}", "{id}")
        if route.path == "/static/{name}":
            continue
        if route.path == "/v1/jobs/{job_id}/webhooks":
            assert "(also <code>/webhooks</code>)" in reference
            continue
        assert f"<code>{route.method} {shown}" in reference, (route.method, route.path)
    errors = section_of(page, 'id="http-errors"')
    for status, codes in ERROR_CODES.items():
        row = errors[errors.index(f"<tr><td>{status}</td>") :]
        row = row[: row.index("</tr>")]
        # "code, code: what; code (note)": each code leads a part of the text.
        found = re.findall(r"(?:^|[,;])\s*([a-z_]+)(?=$|:|,|\s\()", codes)
        assert found, codes
        for code in found:
            assert f"<code>{code}</code>" in row, (status, code)


async def test_sample_bodies_show_when_files_expire(start_server: StartServer) -> None:
    # As a real final job's document does: finished_at + retention.files_s.
    api = await start_server(retention={"files_s": 3600})
    _, page, _ = await get_page(api, "/")
    sample = page[page.index('data-kind="webhook"') :]
    sample = html.unescape(sample[sample.index("<code>") + 6 : sample.index("</code>")])
    body = msgspec.json.decode(sample)
    assert body["status"] == "succeeded"
    assert body["expires_at_ms"] - body["finished_at_ms"] == 3600 * 1000
    assert body["expires_at"] == "2026-02-04T19:04:19.462901+00:00"


async def test_job_error_table_has_the_rejection_codes(api: Api) -> None:
    _, page, _ = await get_page(api, "/")
    table = section_of(page, 'id="job-errors"')
    for code in sorted(REJECTION_CODES):
        row = table[table.index(f"<tr><td><code>{code}</code>") :]
        assert "<code>rejected</code>" in row[: row.index("</tr>")], code


def test_readme_payload_lists_name_every_field() -> None:
    # README's "`task` — payload `{...}`" summaries list exactly the fields the task takes,
    # and every field of a task has its words on the docs page.
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    registry = {spec.name: spec for spec in builtin_tasks()}
    found = re.findall(r"`(\w+)`[^`\n]*(?:`[^`\n]*`[^`\n]*)?— payload `\{([^}]*)\}`", readme)
    assert {"upscale", "remove_background"} <= {task for task, _ in found}
    for task, listed in found:
        bare = re.sub(r"\([^)]*\)", "", listed)  # "(0–1, default 0.7)" and such
        names = {part.strip().rstrip("?") for part in bare.split(",")}
        info = msgspec.inspect.type_info(registry[task].payload_type)
        fields = {f.encode_name for f in info.fields}
        assert names == fields, (task, names ^ fields)
        assert fields <= set(TASK_DOCS[task].fields), (task, fields - set(TASK_DOCS[task].fields))
