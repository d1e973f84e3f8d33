"""HTTP to one cloud provider: its base URL, its auth header, its time limit, and the honest
mapping of what goes wrong to ahv's error codes.

- 429, 408 and 5xx, timeouts and connection errors: a transient `provider_error` (the
  scheduler retries the job within its attempts, after the provider's `Retry-After`), but
  for OpenAI's 429 `insufficient_quota`, which no wait cures;
- a refusal by the provider's safety system: `content_blocked` (the job ends `rejected`);
- any other 4xx: `provider_error` quoting the provider's message.

The API key is only ever sent to the provider's own origin, and it is scrubbed from every
message built from a provider's answer (some echo the key back in 401 messages).

Provider requests go to the configured base URL directly, not through the SSRF guard of job
inputs: the admin chose that URL (a proxy on a private network is a legitimate choice).
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import aiohttp
import msgspec
import yarl

from ahv.errors import AhvError

# Provider answers hold base64 images: tens of MB at most. Anything larger is refused.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
_CHUNK_BYTES = 256 * 1024
_MAX_REDIRECTS = 5


class ErrorDetail(msgspec.Struct, kw_only=True):
    """`error` of both providers' error bodies: Google `{code:int, message, status, details}`
    (https://ai.google.dev/gemini-api/docs/troubleshooting), OpenAI `{message, type, param,
    code:str}` (https://platform.openai.com/docs/guides/error-codes)."""

    message: str = ""
    code: int | str | None = None
    status: str | None = None
    type: str | None = None
    details: list[dict[str, Any]] = []


class ErrorBody(msgspec.Struct, kw_only=True):
    error: ErrorDetail | None = None


# Given the HTTP status and the decoded error, the provider's safety-refusal reason, or None.
SafetyRule = Callable[[int, ErrorDetail], str | None]


class Transport:
    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        key: str,
        auth_headers: dict[str, str],
        session: aiohttp.ClientSession,
        timeout_s: float,
        safety: SafetyRule,
        key_origins: tuple[str, ...] = (),
    ) -> None:
        self.provider = provider
        self.base = yarl.URL(base_url.rstrip("/"))
        self._key = key
        self._auth = auth_headers
        self._session = session
        self._timeout_s = timeout_s
        self._safety = safety
        # Origins the key may be sent to for downloads: the base URL's, plus the provider's
        # official API origin (result URIs point there even when requests go via a proxy).
        self._key_origins = {str(self.base.origin()), *key_origins}

    def scrub(self, text: str) -> str:
        return scrub_key(text, self._key)

    async def send(
        self, method: str, path: str, *, body: bytes | aiohttp.FormData | None = None
    ) -> bytes:
        """The body of a 2xx answer to `method base_url+path`; an AhvError otherwise."""
        headers = dict(self._auth)
        if isinstance(body, bytes):
            headers["Content-Type"] = "application/json"
        url = yarl.URL(str(self.base) + path, encoded=True)
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._session.request(
                    method, url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    data = await _read_bounded(response, None)
                    if 200 <= response.status < 300:
                        return data
                    raise self.http_error(response.status, response.headers, data)
        except TimeoutError:
            raise self._unreachable(f"no answer within {self._timeout_s:g} s (timeout_s)") from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(f"connection failed ({type(exc).__name__})") from None

    async def download(self, url: str, sink: BinaryIO, *, max_bytes: int) -> str | None:
        """Stream a result file the provider points at (a Veo video) into `sink`, with the key.
        Only the provider's own origins get the key: a redirect elsewhere is returned, for the
        caller to fetch through the guarded input fetcher, without the key."""
        target = yarl.URL(url)
        if str(target.origin()) not in self._key_origins:
            raise AhvError(
                "provider_error",
                f"{self.provider}: the result is on a host that is not the provider's "
                f"({target.host}); not downloaded",
            )
        loop = asyncio.get_running_loop()
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                async with asyncio.timeout(self._timeout_s):
                    async with self._session.get(
                        target, headers=self._auth, allow_redirects=False
                    ) as response:
                        location = response.headers.get("Location")
                        if response.status in (301, 302, 303, 307, 308) and location:
                            target = target.join(yarl.URL(location))
                            if str(target.origin()) not in self._key_origins:
                                return str(target)
                            continue
                        if not 200 <= response.status < 300:
                            data = await _read_bounded(response, None)
                            raise self.http_error(response.status, response.headers, data)
                        await _read_bounded(response, max_bytes, sink=sink, loop=loop)
                        return None
            except TimeoutError:
                raise self._unreachable(
                    f"download took longer than {self._timeout_s:g} s (timeout_s)"
                ) from None
            except aiohttp.ClientError as exc:
                raise self._unreachable(f"download failed ({type(exc).__name__})") from None
        raise AhvError("provider_error", f"{self.provider}: too many redirects on a download")

    def http_error(self, status: int, headers: Any, data: bytes) -> AhvError:
        detail = _decode_error(data)
        message = self.scrub(detail.message or _text(data))
        reason = self._safety(status, detail)
        if reason is not None:
            return blocked(self.provider, self.scrub(reason))
        said = f"{self.provider} answered HTTP {status}" + (f": {message}" if message else "")
        if status == 429 and detail.code == "insufficient_quota":
            # OpenAI's "You exceeded your current quota, please check your plan and billing
            # details": a 429 that no wait cures (https://platform.openai.com/docs/guides/
            # error-codes), so the job's other attempts are not spent on it.
            return AhvError("provider_error", said)
        if status == 429 or status == 408 or status >= 500:
            retry_after = _retry_after_s(headers.get("Retry-After"), detail)
            return AhvError("provider_error", said, transient=True, retry_after_s=retry_after)
        return AhvError("provider_error", said)

    def _unreachable(self, what: str) -> AhvError:
        return AhvError("provider_error", f"{self.provider}: {what}", transient=True)


def blocked(provider: str, reason: str) -> AhvError:
    """The provider's safety system refused the prompt, an input image or the result."""
    return AhvError("content_blocked", f"{provider} refused by its safety filter: {reason}")


def scrub_key(text: str, key: str) -> str:
    """`text` without the key, nor the masked forms some providers echo (`sk-ab***wxyz`)."""
    if not key:
        return text
    text = text.replace(key, "[api key]")
    if len(key) >= 12:
        head, tail = re.escape(key[:6]), re.escape(key[-4:])
        text = re.sub(rf"{head}[^\s\"',]*|[^\s\"',]*\*+[^\s\"',]*{tail}", "[api key]", text)
    return text


async def _read_bounded(
    response: aiohttp.ClientResponse,
    max_bytes: int | None,
    *,
    sink: BinaryIO | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> bytes:
    limit = MAX_RESPONSE_BYTES if max_bytes is None else max_bytes
    body = bytearray()
    size = 0
    async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise AhvError(
                "provider_error", f"the provider's answer is over {limit} bytes; not accepted"
            )
        if sink is not None and loop is not None:
            await loop.run_in_executor(None, sink.write, chunk)  # off the event loop
        else:
            body += chunk
    return bytes(body)


def _decode_error(data: bytes) -> ErrorDetail:
    try:
        return msgspec.json.decode(data, type=ErrorBody).error or ErrorDetail()
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ErrorDetail()


def _text(data: bytes) -> str:
    return " ".join(data[:300].decode("utf-8", "replace").split())


def _retry_after_s(header: str | None, detail: ErrorDetail) -> float | None:
    """Seconds from `Retry-After` (seconds or an HTTP date), else from Google's RetryInfo
    (`details[].retryDelay: "30s"`, https://cloud.google.com/apis/design/errors)."""
    if header:
        value = header.strip()
        if re.fullmatch(r"\d+(\.\d+)?", value):
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - time.time())
    for item in detail.details:
        delay = item.get("retryDelay")
        if str(item.get("@type", "")).endswith("google.rpc.RetryInfo") and isinstance(delay, str):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)s", delay.strip())
            if match:
                return float(match.group(1))
    return None
