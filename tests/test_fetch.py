"""Input downloads and the SSRF guard against real local servers (research C26, C27)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from ahv.config import FetchConfig
from ahv.errors import AhvError
from ahv.fetch import Fetched, fetch_url, sniff_media_type
from ahv.netguard import (
    AddressPolicy,
    BlockedAddressError,
    GuardedResolver,
    check_url,
    make_client_session,
)

LOCAL = AddressPolicy(["127.0.0.1/32"])
STRICT = AddressPolicy([])
LIMIT = 100_000
CONFIG = FetchConfig(
    connect_timeout_s=1.0,
    read_timeout_s=0.3,
    total_timeout_s=5.0,
    max_bytes=LIMIT,
    max_redirects=3,
)
FIELD = "image_url"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 200

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    client = make_client_session(LOCAL)
    yield client
    await client.close()


@pytest.fixture
async def release() -> AsyncIterator[asyncio.Event]:
    """Set at teardown so handlers that stall on it end and the server closes quickly."""
    event = asyncio.Event()
    yield event
    event.set()


async def serve(factory: ServerFactory, routes: dict[str, Handler], **kwargs: Any) -> TestServer:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    return await factory(app, **kwargs)


async def fetch(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> Fetched:
    return await fetch_url(session, url, policy=LOCAL, config=CONFIG, field=FIELD, **kwargs)


async def fail(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> AhvError:
    with pytest.raises(AhvError) as info:
        await fetch(session, url, **kwargs)
    assert info.value.message.startswith(f"{FIELD}"), info.value.message
    assert "Traceback" not in info.value.message
    return info.value


async def test_png_named_jpg_served_as_text_is_sniffed(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async def photo(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="text/plain")

    server = await serve(aiohttp_server, {"/photo.jpg": photo})
    got = await fetch(session, str(server.make_url("/photo.jpg")))
    assert got.data == PNG
    assert got.media_type == "image/png"
    assert got.final_url == str(server.make_url("/photo.jpg"))


async def test_empty_body_is_returned(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async def empty(request: web.Request) -> web.Response:
        return web.Response(body=b"")

    server = await serve(aiohttp_server, {"/": empty})
    got = await fetch(session, str(server.make_url("/")))
    assert (got.data, got.media_type) == (b"", None)


@pytest.mark.parametrize(("status", "transient"), [(404, False), (503, True), (429, True)])
async def test_http_error_status(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, status: int, transient: bool
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, body=PNG)

    server = await serve(aiohttp_server, {"/": handler})
    err = await fail(session, str(server.make_url("/")))
    assert err.code == "download_failed"
    assert err.transient is transient
    assert f"HTTP {status} from 127.0.0.1" in err.message


async def test_announced_length_over_limit_is_refused_unread(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, release: asyncio.Event
) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "5000000000"})
        await resp.prepare(request)
        # No body follows: a client that tried to read it would hit read_timeout_s instead.
        await asyncio.wait_for(release.wait(), 5)
        return resp

    server = await serve(aiohttp_server, {"/": huge})
    started = time.monotonic()
    err = await fail(session, str(server.make_url("/")))
    assert time.monotonic() - started < CONFIG.read_timeout_s
    assert (err.code, err.status) == ("input_too_large", 413)
    assert "5000000000 bytes" in err.message and f"limit {LIMIT} bytes" in err.message


async def test_chunked_stream_over_limit(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(500):
                await resp.write(b"\x00" * 16_384)
                sent += 16_384
        except ConnectionError:
            pass
        return resp

    server = await serve(aiohttp_server, {"/": endless})
    err = await fail(session, str(server.make_url("/")))
    assert err.code == "input_too_large"
    assert f"limit {LIMIT} bytes" in err.message
    assert sent < 500 * 16_384  # the client hung up instead of draining 8 MB


async def test_gzip_bomb_is_capped_on_decoded_bytes(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    bomb = gzip.compress(b"\x00" * 20_000_000)
    assert len(bomb) < LIMIT

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    server = await serve(aiohttp_server, {"/": handler})
    err = await fail(session, str(server.make_url("/")))
    assert err.code == "input_too_large"


async def test_small_gzip_body_is_decoded(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(PNG), headers={"Content-Encoding": "gzip"})

    server = await serve(aiohttp_server, {"/": handler})
    got = await fetch(session, str(server.make_url("/")))
    assert (got.data, got.media_type) == (PNG, "image/png")


async def test_truncated_body_is_incomplete(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async def truncated(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100000"})
        await resp.prepare(request)
        await resp.write(PNG[:8] + b"\x00" * 992)
        assert request.transport is not None
        request.transport.close()
        return resp

    server = await serve(aiohttp_server, {"/": truncated})
    err = await fail(session, str(server.make_url("/")))
    assert err.code == "download_failed"
    assert err.transient is True
    assert "incomplete body" in err.message and "of 100000 bytes" in err.message


async def test_slow_server_times_out(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, release: asyncio.Event
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"\x00" * 10)
        await asyncio.wait_for(release.wait(), 5)
        return resp

    server = await serve(aiohttp_server, {"/": slow})
    started = time.monotonic()
    err = await fail(session, str(server.make_url("/")))
    assert time.monotonic() - started < 2
    assert err.code == "download_timeout"
    assert err.transient is True
    assert "read_timeout_s" in err.message


async def test_slow_headers_time_out(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession, release: asyncio.Event
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 5)
        return web.Response(body=PNG)

    server = await serve(aiohttp_server, {"/": slow})
    err = await fail(session, str(server.make_url("/")))
    assert err.code == "download_timeout"
    assert "read_timeout_s" in err.message


async def test_trickling_server_hits_total_timeout(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        for _ in range(100):
            await resp.write(b"\x00")
            await asyncio.sleep(0.1)
        return resp

    server = await serve(aiohttp_server, {"/": trickle})
    config = FetchConfig(read_timeout_s=0.3, total_timeout_s=0.5, max_bytes=LIMIT)
    with pytest.raises(AhvError) as info:
        await fetch_url(
            session, str(server.make_url("/")), policy=LOCAL, config=config, field=FIELD
        )
    assert info.value.code == "download_timeout"
    assert info.value.message.startswith(FIELD) and "total_timeout_s" in info.value.message


async def test_redirect_chain_within_limit(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async def hop(request: web.Request) -> web.Response:
        left = int(request.match_info["n"])
        if left == 0:
            return web.Response(body=PNG)
        # Alternate relative and absolute Location headers.
        location = f"{left - 1}" if left % 2 else str(request.url.with_path(f"/r/{left - 1}"))
        raise web.HTTPFound(location)

    app = web.Application()
    app.router.add_get("/r/{n}", hop)
    server = await aiohttp_server(app)
    got = await fetch(session, str(server.make_url("/r/3")))
    assert got.final_url == str(server.make_url("/r/0"))
    assert got.media_type == "image/png"


async def test_redirect_loop(aiohttp_server: ServerFactory, session: aiohttp.ClientSession) -> None:
    hits = 0

    async def loop(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        raise web.HTTPFound("/loop")

    server = await serve(aiohttp_server, {"/loop": loop})
    err = await fail(session, str(server.make_url("/loop")))
    assert err.code == "download_failed"
    assert "too many redirects" in err.message
    assert hits == CONFIG.max_redirects + 1


async def test_redirect_to_disallowed_loopback_is_blocked(
    aiohttp_server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    inner_hits = 0

    async def secret(request: web.Request) -> web.Response:
        nonlocal inner_hits
        inner_hits += 1
        return web.Response(body=b"metadata")

    inner = await serve(aiohttp_server, {"/secret": secret}, host="127.0.0.2")

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(inner.make_url("/secret")))

    outer = await serve(aiohttp_server, {"/": bounce})
    err = await fail(session, str(outer.make_url("/")))
    assert (err.code, err.status, err.transient) == ("url_not_allowed", 422, False)
    assert err.message.startswith(f"{FIELD} (redirect): ")
    assert "127.0.0.2" in err.message
    assert inner_hits == 0


async def test_connection_refused_is_transient(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    err = await fail(session, f"http://127.0.0.1:{port}/")
    assert (err.code, err.transient) == ("download_failed", True)


async def test_resolver_blocks_when_check_was_fooled(aiohttp_server: ServerFactory) -> None:
    """DNS rebinding: the name passed the pre-check, the connect-time resolver still refuses."""
    hits = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(body=PNG)

    server = await serve(aiohttp_server, {"/": handler})
    lenient = AddressPolicy(["127.0.0.0/8", "::1/128"])
    async with make_client_session(STRICT) as strict_session:
        with pytest.raises(AhvError) as info:
            await fetch_url(
                strict_session,
                f"http://localhost:{server.port}/",
                policy=lenient,
                config=CONFIG,
                field=FIELD,
            )
    assert (info.value.code, info.value.transient) == ("url_not_allowed", False)
    assert info.value.message.startswith(FIELD) and "'localhost'" in info.value.message
    assert hits == 0


BLOCKED_URLS = [
    ("file:///etc/passwd", "scheme"),
    ("gopher://x/", "scheme"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://10.0.0.1/", "private"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://localhost/", "loopback"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://[2002:a00:1::]/", "private"),
    ("http:///nohost", "no host"),
    ("http://[::1", "not a valid URL"),
]


@pytest.mark.parametrize(("url", "reason"), BLOCKED_URLS)
async def test_check_url_rejects(url: str, reason: str) -> None:
    with pytest.raises(AhvError) as info:
        await check_url(url, STRICT, field="video_url")
    assert (info.value.code, info.value.status) == ("url_not_allowed", 422)
    assert info.value.message.startswith("video_url: ")
    assert reason in info.value.message


@pytest.mark.parametrize("url", ["http://169.254.169.254/", "http://[::1]/", "gopher://x/"])
async def test_check_url_allow_list_is_narrow(url: str) -> None:
    with pytest.raises(AhvError):
        await check_url(url, LOCAL, field="video_url")


async def test_check_url_unresolvable_host() -> None:
    with pytest.raises(AhvError) as info:
        await check_url("http://no-such-host.invalid/", LOCAL, field="mask_url")
    assert info.value.code == "url_not_allowed"
    assert info.value.message == "mask_url: host 'no-such-host.invalid' does not resolve"


async def test_check_url_accepts_allowed() -> None:
    url = await check_url("http://127.0.0.1:1/x?y=1", LOCAL, field="video_url")
    assert (url.host, url.port, url.path) == ("127.0.0.1", 1, "/x")


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("0.0.0.0", False),
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),
        ("::127.0.0.1", False),
        ("64:ff9b::a00:1", False),
        ("2002:c0a8:101::1", False),
        ("not-an-ip", False),
    ],
)
def test_address_policy(ip: str, allowed: bool) -> None:
    assert STRICT.is_allowed(ip) is allowed


def test_address_policy_exceptions() -> None:
    assert LOCAL.is_allowed("127.0.0.1")
    assert LOCAL.is_allowed("::ffff:127.0.0.1")
    assert not LOCAL.is_allowed("127.0.0.2")
    assert not LOCAL.is_allowed("::1")
    assert STRICT.blocked_reason("127.0.0.1") == "loopback"


class FixedResolver(AbstractResolver):
    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.addresses
        ]

    async def close(self) -> None:
        self.closed = True


async def test_guarded_resolver_drops_blocked_addresses() -> None:
    inner = FixedResolver(["10.0.0.1", "8.8.8.8", "169.254.169.254", "2001:4860:4860::8888"])
    resolver = GuardedResolver(STRICT, inner)
    got = await resolver.resolve("example.test", 80)
    assert [r["host"] for r in got] == ["8.8.8.8", "2001:4860:4860::8888"]
    await resolver.close()
    assert inner.closed


async def test_guarded_resolver_raises_when_nothing_left() -> None:
    resolver = GuardedResolver(STRICT, FixedResolver(["127.0.0.1", "::1"]))
    with pytest.raises(BlockedAddressError) as info:
        await resolver.resolve("rebind.test", 443)
    assert isinstance(info.value, OSError)
    assert info.value.host == "rebind.test"
    assert "rebind.test" in str(info.value) and "127.0.0.1" in str(info.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (PNG, "image/png"),
        (b"GIF89a\x01\x00\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x24\x00\x00\x00AVI LIST", "video/x-msvideo"),
        (b"BM" + b"\x00" * 12 + b"\x28\x00\x00\x00", "image/bmp"),
        (b"BMbogus", None),
        (b"II*\x00\x08\x00\x00\x00", "image/tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "image/tiff"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "image/heic"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "image/avif"),
        (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf", "image/avif"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "image/heic"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41", "video/mp4"),
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ", "video/quicktime"),
        (b"\x00\x00\x00\x14ftypXXXX\x00\x00\x02\x00mp42", "video/mp4"),
        (b"\x00\x00\x00\x14ftypM4A \x00\x00\x02\x00M4A ", None),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "video/webm"),
        (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", "video/x-matroska"),
        (b"<html>", None),
        (b"", None),
    ],
)
def test_sniff_media_type(data: bytes, expected: str | None) -> None:
    assert sniff_media_type(data) == expected
