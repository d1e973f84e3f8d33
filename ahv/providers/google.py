"""Google's Gemini API: Imagen (`:predict`), Gemini image output (`:generateContent`) and Veo
(`:predictLongRunning` + operation polling). The JSON shapes, with their sources, are in
ahv/providers/google_wire.py. Auth: the `x-goog-api-key` header
(https://ai.google.dev/api#authentication).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from typing import BinaryIO, TypeVar

import aiohttp
import msgspec
import yarl

from ahv.errors import AhvError
from ahv.providers import google_wire as wire
from ahv.providers.config import GoogleProviderConfig
from ahv.providers.transport import ErrorDetail, Transport, blocked
from ahv.providers.types import GeneratedImage, ImageBatch, InputImage

API_ORIGIN = "https://generativelanguage.googleapis.com"
PROVIDER = "google"

# finishReason values that mean the answer was withheld (candidate FinishReason enum,
# https://ai.google.dev/api/generate-content#FinishReason).
_BLOCKING_FINISH = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)
# An operation name goes back into a request path: `models/{model}/operations/{id}`.
_OPERATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$")

T = TypeVar("T")


def safety_reason(message: str) -> str | None:
    """`message` when it is a refusal by the safety filter. Imagen and Veo refuse some
    prompts (and input images) outright with an error (HTTP 400, or a finished operation's
    `error`); filtered *results* come back in the answer instead (raiFilteredReason,
    raiMediaFilteredReasons, finishReason). The refusals seen from the API read, e.g.:
    "The prompt could not be submitted. This prompt contains sensitive words that violate
    Google's Responsible AI practices. ... Support codes: 58061214" (Veo), "Image generation
    failed with the following error: The response is blocked, as it may violate our policies.
    ... Error Code: 58061214" (Imagen), or name the safety filter or settings."""
    text = message.lower()
    refusal = ("block", "filter", "prohibit", "violat", "sensitive")
    if "safety" in text and any(word in text for word in refusal):
        return message
    if "responsible ai" in text or "sensitive words" in text or "support codes" in text:
        return message
    if "violate" in text and ("polic" in text or "guideline" in text):
        return message
    return None


def imagen_prompt(prompt: str, negative_prompt: str | None) -> str:
    """The prompt Imagen is sent. Imagen 4 on the Gemini API takes no negative prompt: the
    Imagen guide lists no `negativePrompt` parameter, and Google's SDKs refuse one for the
    Gemini API ("no longer supported ... in versions greater than imagen-3.0-generate-002"),
    so what the images should not show is said in the prompt itself."""
    if not negative_prompt or not negative_prompt.strip():
        return prompt
    return f"{prompt}\n\nAvoid: {negative_prompt.strip()}"


def _safety(status: int, detail: ErrorDetail) -> str | None:
    return safety_reason(detail.message) if status == 400 else None


class GeminiClient:
    def __init__(self, transport: Transport, settings: GoogleProviderConfig) -> None:
        self._http = transport
        self.settings = settings

    @staticmethod
    def transport(
        settings: GoogleProviderConfig, key: str, session: aiohttp.ClientSession
    ) -> Transport:
        return Transport(
            provider=PROVIDER,
            base_url=settings.base_url,
            key=key,
            auth_headers={"x-goog-api-key": key},
            session=session,
            timeout_s=settings.timeout_s,
            safety=_safety,
            key_origins=(API_ORIGIN,),
        )

    async def imagen(
        self,
        model: str,
        *,
        prompt: str,
        count: int,
        aspect_ratio: str | None,
        image_size: str | None,
        negative_prompt: str | None,
        person_generation: str | None,
    ) -> ImageBatch:
        request = wire.ImagenRequest(
            instances=[wire.ImagenInstance(prompt=imagen_prompt(prompt, negative_prompt))],
            parameters=wire.ImagenParameters(
                sample_count=count,
                aspect_ratio=aspect_ratio,
                sample_image_size=image_size,
                person_generation=person_generation,
                include_rai_reason=True,
            ),
        )
        raw = await self._http.send(
            "POST", f"/v1beta/models/{model}:predict", body=msgspec.json.encode(request)
        )
        answer = await _decode(raw, wire.ImagenResponse)
        images: list[GeneratedImage] = []
        filtered: list[str] = []
        for prediction in answer.predictions:
            if prediction.bytes_base64_encoded:
                data = await asyncio.to_thread(_b64, prediction.bytes_base64_encoded)
                images.append(GeneratedImage(data, prediction.mime_type))
            else:
                filtered.append(prediction.rai_filtered_reason or "no reason given")
        missing = count - len(images) - len(filtered)
        # Without a reason a filtered image is simply absent from `predictions`.
        filtered += ["withheld by the provider without a reason"] * max(0, missing)
        if not images:
            raise blocked(PROVIDER, "; ".join(dict.fromkeys(filtered)))
        return ImageBatch(images, tuple(filtered))

    async def generate_images(
        self, model: str, *, prompt: str, images: list[InputImage], aspect_ratio: str | None
    ) -> ImageBatch:
        parts = [wire.RequestPart(text=prompt)]
        for image in images:
            encoded = base64.b64encode(image.data).decode()
            parts.append(
                wire.RequestPart(inline_data=wire.InlineData(mime_type=image.mime, data=encoded))
            )
        request = wire.GenerateContentRequest(
            contents=[wire.Content(parts=parts)],
            generation_config=wire.GenerationConfig(
                response_modalities=["TEXT", "IMAGE"],
                image_config=wire.ImageConfig(aspect_ratio=aspect_ratio) if aspect_ratio else None,
            ),
        )
        body = await asyncio.to_thread(msgspec.json.encode, request)
        raw = await self._http.send("POST", f"/v1beta/models/{model}:generateContent", body=body)
        answer = await _decode(raw, wire.GenerateContentResponse)
        feedback = answer.prompt_feedback
        if feedback is not None and feedback.block_reason:
            detail = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
            raise blocked(PROVIDER, f"prompt blocked ({feedback.block_reason}){detail}")
        found: list[GeneratedImage] = []
        texts: list[str] = []
        reasons: list[str] = []
        for candidate in answer.candidates:
            for part in candidate.content.parts if candidate.content else []:
                if part.thought:
                    continue
                if part.inline_data is not None and part.inline_data.data:
                    data = await asyncio.to_thread(_b64, part.inline_data.data)
                    found.append(GeneratedImage(data, part.inline_data.mime_type or None))
                elif part.text:
                    texts.append(part.text)
            if candidate.finish_reason in _BLOCKING_FINISH:
                message = f": {candidate.finish_message}" if candidate.finish_message else ""
                reasons.append(f"finishReason {candidate.finish_reason}{message}")
        text = " ".join(texts).strip()
        if not found and reasons:
            raise blocked(PROVIDER, "; ".join(reasons))
        if not found:
            said = f" (it answered: {text[:300]})" if text else ""
            raise AhvError("provider_error", f"{PROVIDER}: {model} returned no image{said}")
        return ImageBatch(found, tuple(reasons), text)

    async def start_video(
        self,
        model: str,
        *,
        prompt: str,
        first_frame: InputImage | None,
        duration_s: int | None,
        aspect_ratio: str | None,
        resolution: str | None,
        negative_prompt: str | None,
    ) -> str:
        """Start a Veo generation; the name of its long-running operation."""
        image = None
        if first_frame is not None:
            encoded = base64.b64encode(first_frame.data).decode()
            image = wire.VeoImage(bytes_base64_encoded=encoded, mime_type=first_frame.mime)
        request = wire.VeoRequest(
            instances=[wire.VeoInstance(prompt=prompt, image=image)],
            parameters=wire.VeoParameters(
                aspect_ratio=aspect_ratio,
                duration_seconds=duration_s,
                resolution=resolution,
                negative_prompt=negative_prompt,
            ),
        )
        body = await asyncio.to_thread(msgspec.json.encode, request)
        raw = await self._http.send("POST", f"/v1beta/models/{model}:predictLongRunning", body=body)
        operation = await _decode(raw, wire.Operation)
        if not _OPERATION_NAME.match(operation.name) or ".." in operation.name:
            raise AhvError("provider_error", f"{PROVIDER}: the answer names no valid operation")
        return operation.name

    async def operation(self, name: str) -> wire.Operation:
        """The operation's state (`GET /v1beta/{name}`). The Gemini API documents `get` (and
        `list`) for these operations but no `cancel`, so a canceled job only stops polling."""
        return await _decode(await self._http.send("GET", f"/v1beta/{name}"), wire.Operation)

    async def download(self, uri: str, sink: BinaryIO, *, max_bytes: int) -> str | None:
        """The video file behind a sample's `video.uri` (fetched with the key, as the Veo
        guide's `curl -H "x-goog-api-key: ..." "$video_uri"`), into `sink`."""
        return await self._http.download(self._via_base_url(uri), sink, max_bytes=max_bytes)

    def _via_base_url(self, uri: str) -> str:
        """A URI on the API's own host, rewritten onto `base_url` when that is another host:
        the download goes through the proxy (or the local stand-in) that every other request
        goes through, not around it."""
        target, base = yarl.URL(uri), self._http.base
        if str(target.origin()) != API_ORIGIN or str(base.origin()) == API_ORIGIN:
            return uri
        return str(yarl.URL(str(base) + target.raw_path_qs, encoded=True))

    def scrub(self, text: str) -> str:
        return self._http.scrub(text)


async def _decode(raw: bytes, kind: type[T]) -> T:
    def decode() -> T:
        try:
            return msgspec.json.decode(raw, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise AhvError(
                "provider_error", f"{PROVIDER}: an answer ahv cannot read ({exc})"
            ) from None

    # Answers carry base64 images or videos' metadata: decoded off the event loop.
    return await asyncio.to_thread(decode)


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AhvError("provider_error", f"{PROVIDER}: an image that is not valid base64") from None
