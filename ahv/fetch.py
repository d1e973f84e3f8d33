"""Input downloads: bounded in size and time, SSRF-checked on every hop (research C26, C27).

The media type comes from magic bytes only; the URL's extension and the server's
Content-Type are routinely wrong (a PNG named `.jpg`, served as `text/plain`).
"""

from __future__ import annotations

import asyncio
from typing import BinaryIO

import aiohttp
import msgspec
import yarl

from ahv.config import FetchConfig
from ahv.errors import AhvError
from ahv.netguard import AddressPolicy, BlockedAddressError, check_url

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 64 * 1024

_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_MP4_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"dash"}
    | {b"M4V ", b"M4VH", b"M4VP", b"f4v ", b"mmp4", b"MSNV", b"3gp4", b"3gp5", b"3gp6", b"3g2a"}
)
# Sizes of the known BMP info headers; "BM" alone is too weak a signature.
_BMP_DIB_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def sniff_media_type(data: bytes) -> str | None:
    """The media type that `data` starts like, or None when it matches nothing known."""
    head = bytes(data[:64])
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF":
        return {b"WEBP": "image/webp", b"AVI ": "video/x-msvideo"}.get(head[8:12])
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        # The EBML DocType sits in the first few dozen bytes of the header.
        return "video/webm" if b"webm" in head else "video/x-matroska"
    if head[4:8] == b"ftyp":
        return _sniff_ftyp(bytes(data[:256]))
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "image/bmp"
    return None


def _sniff_ftyp(head: bytes) -> str | None:
    major = head[8:12]
    box_end = min(max(int.from_bytes(head[:4], "big"), 16), len(head))
    compatible = {head[i : i + 4] for i in range(16, box_end - 3, 4)}
    if major == b"qt  ":
        return "video/quicktime"
    if major in _AVIF_BRANDS:
        return "image/avif"
    if major in _HEIC_BRANDS:
        return "image/heic"
    if major in (b"mif1", b"msf1"):
        # The generic HEIF brands; the compatible list says which codec is inside.
        return "image/avif" if compatible & _AVIF_BRANDS else "image/heic"
    if major in _MP4_BRANDS:
        return "video/mp4"
    for brands, media_type in (
        (_AVIF_BRANDS, "image/avif"),
        (_HEIC_BRANDS, "image/heic"),
        (_MP4_BRANDS, "video/mp4"),
        (frozenset({b"qt  "}), "video/quicktime"),
    ):
        if compatible & brands:
            return media_type
    return None


_SNIFF_BYTES = 4096  # magic numbers and container headers all sit well inside this


class Fetched(msgspec.Struct, frozen=True):
    data: bytes
    media_type: str | None
    final_url: str


async def fetch_url(
    session: aiohttp.ClientSession,
    url: str,
    *,
    policy: AddressPolicy,
    config: FetchConfig,
    field: str,
    max_bytes: int | None = None,
    sink: BinaryIO | None = None,
) -> Fetched:
    """Download `url` into memory (or, given `sink`, into that file: `data` is then empty),
    or raise an AhvError whose message names `field`.

    `session` should come from `netguard.make_client_session` so connections are pinned to
    addresses the policy allows.
    """
    limit = config.max_bytes if max_bytes is None else max_bytes
    try:
        # aiohttp's `total` applies per request; this one bounds all hops and DNS checks.
        async with asyncio.timeout(config.total_timeout_s):
            return await _follow(session, url, policy, config, field, limit, sink)
    except TimeoutError:
        raise _timeout(field, "download took longer than", "total_timeout_s", config) from None


async def _follow(
    session: aiohttp.ClientSession,
    url: str,
    policy: AddressPolicy,
    config: FetchConfig,
    field: str,
    limit: int,
    sink: BinaryIO | None,
) -> Fetched:
    target = await check_url(url, policy, field=field)
    for _ in range(config.max_redirects + 1):
        outcome = await _get_once(session, target, config, field, limit, sink)
        if isinstance(outcome, Fetched):
            return outcome
        # A hop is a new URL from the remote side: the first check says nothing about it.
        target = await check_url(str(outcome), policy, field=f"{field} (redirect)")
    raise AhvError(
        "download_failed", f"{field}: too many redirects (more than {config.max_redirects})"
    )


async def _get_once(
    session: aiohttp.ClientSession,
    target: yarl.URL,
    config: FetchConfig,
    field: str,
    limit: int,
    sink: BinaryIO | None,
) -> Fetched | yarl.URL:
    """One request: the Fetched body, or the URL a redirect points at."""
    host = target.host or "?"
    timeout = aiohttp.ClientTimeout(
        total=config.total_timeout_s,
        sock_connect=config.connect_timeout_s,
        sock_read=config.read_timeout_s,
    )
    try:
        async with session.get(target, allow_redirects=False, timeout=timeout) as resp:
            location = resp.headers.get("Location")
            if resp.status in _REDIRECT_STATUSES and location:
                try:
                    return target.join(yarl.URL(location))
                except ValueError:
                    msg = f"{field}: redirect from {host} to an invalid URL {location!r}"
                    raise AhvError("url_not_allowed", msg, status=422) from None
            if not 200 <= resp.status < 300:
                transient = resp.status >= 500 or resp.status == 429
                msg = f"{field}: HTTP {resp.status} from {host}"
                raise AhvError("download_failed", msg, transient=transient)
            data, head = await _read_body(resp, field, limit, sink)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _client_error(exc, field, host, config) from None
    return Fetched(data=data, media_type=sniff_media_type(head), final_url=str(target))


async def _read_body(
    resp: aiohttp.ClientResponse, field: str, limit: int, sink: BinaryIO | None
) -> tuple[bytes, bytes]:
    """(the body, or b"" when it went to `sink`; its first bytes, for sniffing)."""
    expected = resp.content_length
    if expected is not None and expected > limit:
        raise _too_large(field, f"body is {expected} bytes", limit)
    body = bytearray()
    head = b""
    size = 0
    loop = asyncio.get_running_loop()
    try:
        # Counted after decompression, so a small gzip body that inflates past the limit
        # is stopped within one chunk.
        async for chunk in resp.content.iter_chunked(_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise _too_large(field, f"body is at least {size} bytes", limit)
            if len(head) < _SNIFF_BYTES:
                head += chunk[: _SNIFF_BYTES - len(head)]
            if sink is None:
                body += chunk
            else:  # a large input (video) goes to disk as it arrives, off the event loop
                await loop.run_in_executor(None, sink.write, chunk)
    except TimeoutError:
        raise
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
        raise _incomplete(field, size, expected) from None
    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    # With a Content-Encoding the header counts wire bytes, not the decoded ones counted here.
    if expected is not None and not encoded and size < expected:
        raise _incomplete(field, size, expected)
    return bytes(body), head


def _client_error(
    exc: TimeoutError | aiohttp.ClientError, field: str, host: str, config: FetchConfig
) -> AhvError:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return _timeout(field, f"could not connect to {host} within", "connect_timeout_s", config)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return _timeout(field, f"no data from {host} for", "read_timeout_s", config)
    if isinstance(exc, TimeoutError):
        return _timeout(field, "download took longer than", "total_timeout_s", config)
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, BlockedAddressError
    ):
        return AhvError("url_not_allowed", f"{field}: {exc.os_error}", status=422)
    if isinstance(exc, aiohttp.InvalidURL):
        return AhvError("url_not_allowed", f"{field}: invalid URL for host {host}", status=422)
    if isinstance(exc, aiohttp.ClientSSLError):
        return AhvError("download_failed", f"{field}: TLS error with {host}: {exc}")
    if isinstance(exc, aiohttp.ClientConnectionError):
        msg = f"{field}: connection to {host} failed: {exc}"
        return AhvError("download_failed", msg, transient=True)
    return AhvError("download_failed", f"{field}: bad response from {host}: {exc}")


def _timeout(field: str, what: str, setting: str, config: FetchConfig) -> AhvError:
    seconds: float = getattr(config, setting)
    msg = f"{field}: {what} {seconds:g} s ({setting})"
    return AhvError("download_timeout", msg, transient=True)


def _too_large(field: str, what: str, limit: int) -> AhvError:
    return AhvError("input_too_large", f"{field}: {what}, limit {limit} bytes", status=413)


def _incomplete(field: str, got: int, expected: int | None) -> AhvError:
    of = f" of {expected}" if expected is not None else ""
    msg = f"{field}: incomplete body: got {got}{of} bytes before the connection ended"
    return AhvError("download_failed", msg, transient=True)
