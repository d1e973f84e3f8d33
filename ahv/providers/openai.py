"""OpenAI's Images API with a GPT image model: generations and edits.

- `POST /v1/images/generations`, JSON `{model, prompt, n, size, quality, background}`
  (https://platform.openai.com/docs/api-reference/images/create);
- `POST /v1/images/edits`, multipart/form-data with the input images as repeated `image[]`
  files and an optional `mask` file (PNG; its fully transparent pixels mark where to edit)
  (https://platform.openai.com/docs/api-reference/images/createEdit);
- both answer `{"created", "data": [{"b64_json"}]}` (GPT image models always return base64;
  a `url` item, as older models gave, is fetched like an input);
- errors `{"error": {"message", "type", "param", "code"}}`; a refusal by the safety system
  is a 400 with code `moderation_blocked` (or `content_policy_violation`)
  (https://platform.openai.com/docs/guides/error-codes). Auth: `Authorization: Bearer`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import aiohttp
import msgspec

from ahv.errors import AhvError
from ahv.providers.config import OpenAIProviderConfig
from ahv.providers.transport import ErrorDetail, Transport
from ahv.providers.types import GeneratedImage, ImageBatch, InputImage

PROVIDER = "openai"
_SAFETY_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class GenerationRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    prompt: str
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    background: str | None = None


class ImageItem(msgspec.Struct, kw_only=True):
    b64_json: str | None = None
    url: str | None = None


class ImagesResponse(msgspec.Struct, kw_only=True):
    data: list[ImageItem] = []


def _safety(status: int, detail: ErrorDetail) -> str | None:
    if status == 400 and detail.code in _SAFETY_CODES:
        return detail.message or str(detail.code)
    return None


class OpenAIClient:
    def __init__(self, transport: Transport, settings: OpenAIProviderConfig) -> None:
        self._http = transport
        self.settings = settings

    @staticmethod
    def transport(
        settings: OpenAIProviderConfig, key: str, session: aiohttp.ClientSession
    ) -> Transport:
        return Transport(
            provider=PROVIDER,
            base_url=settings.base_url,
            key=key,
            auth_headers={"Authorization": f"Bearer {key}"},
            session=session,
            timeout_s=settings.timeout_s,
            safety=_safety,
        )

    async def generate(
        self,
        model: str,
        *,
        prompt: str,
        n: int,
        size: str | None,
        quality: str | None,
        background: str | None,
    ) -> ImageBatch:
        request = GenerationRequest(
            model=model, prompt=prompt, n=n, size=size, quality=quality, background=background
        )
        raw = await self._http.send(
            "POST", "/v1/images/generations", body=msgspec.json.encode(request)
        )
        return await _images(raw)

    async def edit(
        self,
        model: str,
        *,
        prompt: str,
        images: list[InputImage],
        mask: InputImage | None,
        n: int,
        size: str | None,
        quality: str | None,
        background: str | None,
    ) -> ImageBatch:
        form = aiohttp.FormData()
        fields: dict[str, str | None] = {"model": model, "prompt": prompt, "n": str(n)}
        fields |= {"size": size, "quality": quality, "background": background}
        for name, value in fields.items():
            if value is not None:
                form.add_field(name, value)
        for i, image in enumerate(images):
            extension = _EXTENSIONS.get(image.mime, "png")
            form.add_field(
                "image[]", image.data, filename=f"image_{i}.{extension}", content_type=image.mime
            )
        if mask is not None:
            form.add_field("mask", mask.data, filename="mask.png", content_type="image/png")
        raw = await self._http.send("POST", "/v1/images/edits", body=form)
        return await _images(raw)

    def scrub(self, text: str) -> str:
        return self._http.scrub(text)


async def _images(raw: bytes) -> ImageBatch:
    def decode() -> ImageBatch:
        try:
            answer = msgspec.json.decode(raw, type=ImagesResponse)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise AhvError(
                "provider_error", f"{PROVIDER}: an answer ahv cannot read ({exc})"
            ) from None
        images = []
        for item in answer.data:
            if item.b64_json:
                images.append(GeneratedImage(_b64(item.b64_json)))
            elif item.url:
                images.append(GeneratedImage(None, url=item.url))
        return ImageBatch(images)

    batch = await asyncio.to_thread(decode)  # base64 images: decoded off the event loop
    if not batch.images:
        raise AhvError("provider_error", f"{PROVIDER}: the answer holds no image")
    return batch


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AhvError("provider_error", f"{PROVIDER}: an image that is not valid base64") from None
