"""The docs page (`GET /`), the dashboard (`GET /dashboard`) and their static files.

All of them ship inside the package (read with importlib.resources, so an installed wheel and
a zipapp carry them), are loaded once at start-up off the event loop, and are served without
a key: the docs hold no secrets, and the dashboard asks for a key in the browser and then
uses only the public API.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import web

import ahv
from ahv.config import Config
from ahv.errors import AhvError
from ahv.http.docs_render import fill_base, render_docs
from ahv.http.keys import base_url
from ahv.tasks import TaskSpec

STATIC_FILES = {
    "ahv.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

# Pages hold no inline script or style; result previews may come from `server.public_url`,
# which need not be this origin. No framing: the dashboard has cancel and delete buttons.
_CSP = (
    "default-src 'self'; img-src 'self' http: https: data:; media-src 'self' http: https:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> Asset:
        return cls(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


@dataclass
class Pages:
    """What the page handlers serve, filled in at start-up (see `setup`)."""

    docs: str = ""
    dashboard: Asset | None = None
    static: dict[str, Asset] = field(default_factory=dict)

    def load(self, registry: Mapping[str, TaskSpec], config: Config) -> None:
        package = resources.files("ahv.http")
        template = (package / "templates" / "docs.html").read_text(encoding="utf-8")
        self.docs = render_docs(template, registry, ahv.__version__, config)
        dashboard = (package / "templates" / "dashboard.html").read_bytes()
        self.dashboard = Asset.of(dashboard, "text/html; charset=utf-8")
        self.static = {
            name: Asset.of((package / "static" / name).read_bytes(), content_type)
            for name, content_type in STATIC_FILES.items()
        }


PAGES = web.AppKey("pages", Pages)


def setup(app: web.Application, registry: Mapping[str, TaskSpec], config: Config) -> None:
    pages = Pages()
    app[PAGES] = pages

    async def load(app: web.Application) -> None:
        await asyncio.to_thread(pages.load, registry, config)

    app.on_startup.append(load)
    app.router.add_get("/", docs_page)
    app.router.add_get("/dashboard", dashboard_page)
    app.router.add_get("/static/{name}", static_file)


async def docs_page(request: web.Request) -> web.Response:
    page = fill_base(request.app[PAGES].docs, base_url(request))
    return web.Response(
        body=page.encode(),
        content_type="text/html",
        charset="utf-8",
        headers=_PAGE_HEADERS,
    )


async def dashboard_page(request: web.Request) -> web.Response:
    asset = request.app[PAGES].dashboard
    assert asset is not None, "pages are loaded at start-up"
    return _asset_response(request, asset)


async def static_file(request: web.Request) -> web.Response:
    asset = request.app[PAGES].static.get(request.match_info["name"])
    if asset is None:
        raise AhvError("not_found", f"no static file {request.match_info['name']!r}", status=404)
    return _asset_response(request, asset)


def _asset_response(request: web.Request, asset: Asset) -> web.Response:
    headers = {**_PAGE_HEADERS, "ETag": asset.etag}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    response = web.Response(body=asset.body, headers=headers)
    response.headers["Content-Type"] = asset.content_type
    return response
