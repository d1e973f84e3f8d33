"""Local stand-ins for the cloud APIs generation jobs are forwarded to: aiohttp servers on
127.0.0.1 speaking the documented wire formats (paths, auth header, JSON shapes, operation
polling, base64 results, error bodies, safety blocks), with scriptable behaviour per test.

- FakeGoogle: the Gemini API. `POST /v1beta/models/{model}:predict` (Imagen),
  `:generateContent` (image output), `:predictLongRunning` (Veo), `GET /v1beta/{operation}`
  and `GET /v1beta/files/{id}:download` (the video), all behind `x-goog-api-key`; errors as
  `{"error": {"code", "message", "status"}}`.
- FakeOpenAI: `POST /v1/images/generations` (JSON) and `/v1/images/edits` (multipart, `image[]`
  files and `mask`) behind `Authorization: Bearer`; errors as
  `{"error": {"message", "type", "param", "code"}}`.

A malformed request gets the provider's own 400 body, so a request shape ahv gets wrong fails
the test instead of passing silently. `script(kind, Reply...)` queues answers that are given
before the default behaviour; `always[kind]` answers every call (500 for ever). `delay_s` makes
model calls slow; a client that hangs up meanwhile is recorded in `hangups`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import cv2
import msgspec
import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer

# The Imagen parameters of the Gemini API (https://ai.google.dev/gemini-api/docs/imagen, plus
# includeRaiReason, which Google's SDK sends there too), by their JSON names (the guide's
# imageSize is the SDK's option; on the wire it is sampleImageSize, as Google's SDK sends it):
# no negativePrompt since imagen-3.0-generate-002, so one is refused like any unknown
# parameter, as is the SDK-only name imageSize.
IMAGEN_PARAMETERS = {
    "sampleCount", "aspectRatio", "sampleImageSize", "personGeneration", "includeRaiReason",
}  # fmt: skip
VEO_PARAMETERS = {
    "aspectRatio", "durationSeconds", "resolution", "negativePrompt", "personGeneration",
}  # fmt: skip
ASPECTS = {"1:1": (64, 64), "3:4": (48, 64), "4:3": (64, 48), "9:16": (36, 64), "16:9": (64, 36)}


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    kind: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float


def png(width: int, height: int, index: int = 0, alpha: bool = False) -> bytes:
    image = np.zeros((height, width, 4 if alpha else 3), np.uint8)
    image[..., 0] = 40 * index % 256
    image[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[..., 2] = 200
    if alpha:
        image[..., 3] = 128
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return bytes(buffer.tobytes())


def decode_image(data: bytes) -> np.ndarray | None:
    found = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return None if found is None else np.asarray(found)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@functools.cache
def mp4_clip(width: int = 64, height: int = 48, frames: int = 12) -> bytes:
    """A real H.264 MP4 (what Veo returns), made with PyAV."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            image = np.full((height, width, 3), (20 * i) % 256, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode())
    return buffer.getvalue()


class _Fake:
    kinds: tuple[str, ...] = ()

    def __init__(self, key: str) -> None:
        self.key = key
        self.calls: list[Call] = []
        self.scripted: dict[str, list[Reply]] = {}
        self.always: dict[str, Reply] = {}
        self.server: TestServer | None = None
        self.changed = asyncio.Event()
        self.delay_s = 0.0  # how long model calls take to answer
        self.hangups: list[str] = []  # kinds of the calls whose client left before the answer

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def script(self, kind: str, *replies: Reply) -> None:
        self.scripted.setdefault(kind, []).extend(replies)

    def of(self, kind: str) -> list[Call]:
        return [c for c in self.calls if c.kind == kind]

    async def wait_calls(self, kind: str, count: int, timeout_s: float = 10) -> list[Call]:
        await self._until(lambda: len(self.of(kind)) >= count, timeout_s, f"{count} {kind} calls")
        return self.of(kind)

    async def wait_hangup(self, kind: str, timeout_s: float = 5) -> None:
        await self._until(lambda: kind in self.hangups, timeout_s, f"the client of a {kind} call")

    async def _until(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"still waiting for {what} after {timeout_s} s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 0.1)
            except TimeoutError:
                pass

    async def _stall(self, kind: str, request: web.Request) -> bool:
        """Take `delay_s` to answer, as a slow model does; False when the client hung up
        meanwhile (its connection closed: the request was abandoned, not waited out). aiohttp
        may instead cancel the handler when the connection is lost: recorded all the same."""
        deadline = time.monotonic() + self.delay_s
        try:
            while time.monotonic() < deadline:
                if _gone(request):
                    self._hung_up(kind)
                    return False
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if _gone(request):
                self._hung_up(kind)
            raise
        return True

    def _hung_up(self, kind: str) -> None:
        self.hangups.append(kind)
        self.changed.set()

    def _record(self, kind: str, request: web.Request, body: Any) -> Reply | None:
        self.calls.append(
            Call(kind, request.path_qs, dict(request.headers), body, time.monotonic())
        )
        self.changed.set()
        queued = self.scripted.get(kind)
        if queued:
            return queued.pop(0)
        return self.always.get(kind)


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _json(reply: Reply) -> web.Response:
    body = b"" if reply.body is None else msgspec.json.encode(reply.body)
    return web.Response(
        status=reply.status, body=body, headers=reply.headers, content_type="application/json"
    )


def google_error(status: int, message: str, code_name: str) -> Reply:
    return Reply(status, {"error": {"code": status, "message": message, "status": code_name}})


class FakeGoogle(_Fake):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.imagen_filtered = 0  # of the images asked for, how many come back filtered
        self.generate_images = 1  # generateContent: image parts in the answer
        self.thought_images = 0  # generateContent: interim images marked thought: true first
        self.block_reason: str | None = None  # generateContent: promptFeedback.blockReason
        self.finish_reason: str | None = None  # generateContent: a candidate without image
        self.polls_until_done = 2
        self.video_filtered = False
        self.video_bytes = mp4_clip()
        # Where finished operations point for the video: this server (None), or another
        # origin, e.g. the real API's, as a proxy that passes answers through would give.
        self.video_origin: str | None = None
        self._operation_ids = itertools.count(1)
        self.operations: dict[str, int] = {}  # operation id -> polls seen

    @classmethod
    async def start(cls, aiohttp_server: Any, key: str) -> FakeGoogle:
        fake = cls(key)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1beta/models/{call}", fake.model_call)
        app.router.add_get("/v1beta/models/{model}/operations/{op}", fake.operation)
        app.router.add_get("/v1beta/files/{name}", fake.download)
        fake.server = await aiohttp_server(app)
        return fake

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-goog-api-key") != self.key:
            return _json(
                google_error(
                    400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT"
                )
            )
        return None

    async def model_call(self, request: web.Request) -> web.Response:
        model, _, method = request.match_info["call"].partition(":")
        kinds = {"predict": "predict", "generateContent": "generate", "predictLongRunning": "veo"}
        kind = kinds.get(method)
        if kind is None:
            return _json(google_error(404, f"Method {method} not found", "NOT_FOUND"))
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return _json(google_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT"))
        scripted = self._record(kind, request, body)
        denied = self._denied(request)
        if denied is not None:
            return denied
        if not await self._stall(kind, request):
            return _json(Reply(499))  # nobody is left to read it
        if scripted is not None:
            return _json(scripted)
        handler = {"predict": self._imagen, "generate": self._generate, "veo": self._veo}[kind]
        problem, reply = handler(model, body)
        if problem is not None:
            return _json(
                google_error(400, f"Invalid JSON payload received. {problem}", "INVALID_ARGUMENT")
            )
        return _json(reply)

    def _imagen(self, model: str, body: Any) -> tuple[str | None, Reply]:
        instances, parameters = body.get("instances"), body.get("parameters", {})
        if not (isinstance(instances, list) and len(instances) == 1):
            return "instances: one instance expected", Reply(400)
        if not isinstance(instances[0].get("prompt"), str) or set(instances[0]) != {"prompt"}:
            return "instances[0]: a prompt and nothing else", Reply(400)
        unknown = set(parameters) - IMAGEN_PARAMETERS
        if unknown:
            return f'Unknown name "{sorted(unknown)[0]}" at parameters', Reply(400)
        count = parameters.get("sampleCount", 4)
        if not isinstance(count, int) or not 1 <= count <= 4:
            return "parameters.sampleCount: 1 to 4", Reply(400)
        aspect = parameters.get("aspectRatio", "1:1")
        if aspect not in ASPECTS or parameters.get("sampleImageSize", "1K") not in ("1K", "2K"):
            return "parameters: bad aspectRatio or sampleImageSize", Reply(400)
        width, height = ASPECTS[aspect]
        predictions: list[dict[str, Any]] = []
        for i in range(count):
            if i >= count - self.imagen_filtered:
                if parameters.get("includeRaiReason"):
                    predictions.append(
                        {"raiFilteredReason": "Filtered for sexual content (58061214)."}
                    )
                continue
            predictions.append(
                {"bytesBase64Encoded": b64(png(width, height, i)), "mimeType": "image/png"}
            )
        return None, Reply(200, {"predictions": predictions} if predictions else {})

    def _generate(self, model: str, body: Any) -> tuple[str | None, Reply]:
        contents = body.get("contents")
        if not (
            isinstance(contents, list) and contents and isinstance(contents[0].get("parts"), list)
        ):
            return "contents[0].parts is required", Reply(400)
        parts = contents[0]["parts"]
        if not isinstance(parts[0].get("text"), str):
            return "contents[0].parts[0]: the prompt text", Reply(400)
        for part in parts[1:]:
            blob = part.get("inline_data") or part.get("inlineData") or {}
            mime = blob.get("mime_type") or blob.get("mimeType")
            if (
                mime not in ("image/png", "image/jpeg")
                or decode_image(base64.b64decode(blob.get("data", ""))) is None
            ):
                return "inline_data: an image/png or image/jpeg image", Reply(400)
        modalities = body.get("generationConfig", {}).get("responseModalities", [])
        if "IMAGE" not in modalities:
            return "generationConfig.responseModalities must include IMAGE", Reply(400)
        if self.block_reason:
            return None, Reply(200, {"promptFeedback": {"blockReason": self.block_reason}})
        if self.finish_reason:
            candidate = {
                "content": {"parts": [], "role": "model"},
                "finishReason": self.finish_reason,
            }
            return None, Reply(200, {"candidates": [candidate]})
        aspect = body["generationConfig"].get("imageConfig", {}).get("aspectRatio", "1:1")
        width, height = ASPECTS.get(aspect, (64, 64))
        # Text and images interleaved in one candidate, as the image-generation guide shows.
        answer: list[dict[str, Any]] = []
        for i in range(self.thought_images):
            # A thinking image model's drafts come first, marked as thought
            # (https://ai.google.dev/api/caching#Part: "thought").
            answer.append({"text": f"Draft {i + 1}: trying a layout.", "thought": True})
            draft = png(width, height, 100 + i)
            answer.append(
                {"inlineData": {"mimeType": "image/png", "data": b64(draft)}, "thought": True}
            )
        answer.append({"text": "Here it is."})
        for i in range(self.generate_images):
            if i:
                answer.append({"text": f"And number {i + 1}."})
            answer.append(
                {"inlineData": {"mimeType": "image/png", "data": b64(png(width, height, i))}}
            )
        candidate = {"content": {"parts": answer, "role": "model"}, "finishReason": "STOP"}
        return None, Reply(200, {"candidates": [candidate], "modelVersion": model})

    def _veo(self, model: str, body: Any) -> tuple[str | None, Reply]:
        instances, parameters = body.get("instances"), body.get("parameters", {})
        if not (isinstance(instances, list) and len(instances) == 1):
            return "instances: one instance expected", Reply(400)
        instance = instances[0]
        if not isinstance(instance.get("prompt"), str) or set(instance) - {"prompt", "image"}:
            return "instances[0]: prompt and image only", Reply(400)
        image = instance.get("image")
        if image is not None:
            data = base64.b64decode(image.get("bytesBase64Encoded", ""))
            if (
                image.get("mimeType") not in ("image/png", "image/jpeg")
                or decode_image(data) is None
            ):
                return "instances[0].image: bytesBase64Encoded and mimeType", Reply(400)
        if set(parameters) - VEO_PARAMETERS:
            return "parameters: unknown field", Reply(400)
        if parameters.get("durationSeconds", 8) not in (4, 6, 8):
            return "parameters.durationSeconds: 4, 6 or 8", Reply(400)
        op = f"op{next(self._operation_ids)}"
        self.operations[op] = 0
        return None, Reply(200, {"name": f"models/{model}/operations/{op}"})

    async def operation(self, request: web.Request) -> web.Response:
        scripted = self._record("poll", request, None)
        denied = self._denied(request)
        if denied is not None:
            return denied
        if scripted is not None:
            return _json(scripted)
        model, op = request.match_info["model"], request.match_info["op"]
        if op not in self.operations:
            return _json(google_error(404, "Operation not found", "NOT_FOUND"))
        self.operations[op] += 1
        name = f"models/{model}/operations/{op}"
        if self.operations[op] < self.polls_until_done:
            return _json(Reply(200, {"name": name}))  # `done` is left out while false
        if self.video_filtered:
            response = {
                "raiMediaFilteredCount": 1,
                "raiMediaFilteredReasons": ["The video was filtered by our safety system."],
            }
        else:
            uri = f"{self.video_origin or self.url}/v1beta/files/{op}:download?alt=media"
            response = {"generatedSamples": [{"video": {"uri": uri}}]}
        answer_type = "type.googleapis.com/google.ai.generativelanguage.v1beta."
        body = {
            "name": name,
            "done": True,
            "response": {
                "@type": answer_type + "PredictLongRunningResponse",
                "generateVideoResponse": response,
            },
        }
        return _json(Reply(200, body))

    async def download(self, request: web.Request) -> web.StreamResponse:
        scripted = self._record("download", request, None)
        denied = self._denied(request)
        if denied is not None:
            return denied
        if scripted is not None:
            return _json(scripted)
        return web.Response(body=self.video_bytes, content_type="video/mp4")


def openai_error(status: int, message: str, code: str | None, kind: str) -> Reply:
    return Reply(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})


GENERATION_FIELDS = {"model", "prompt", "n", "size", "quality", "background"}
SIZES = {"auto": (64, 64), "1024x1024": (64, 64), "1536x1024": (96, 64), "1024x1536": (64, 96)}


class FakeOpenAI(_Fake):
    @classmethod
    async def start(cls, aiohttp_server: Any, key: str) -> FakeOpenAI:
        fake = cls(key)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/images/generations", fake.generations)
        app.router.add_post("/v1/images/edits", fake.edits)
        fake.server = await aiohttp_server(app)
        return fake

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            message = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
            return _json(openai_error(401, message, "invalid_api_key", "invalid_request_error"))
        return None

    def _check(self, fields: dict[str, Any]) -> Reply | None:
        unknown = set(fields) - GENERATION_FIELDS
        if unknown:
            name = sorted(unknown)[0]
            return openai_error(
                400, f"Unknown parameter: '{name}'.", "unknown_parameter", "invalid_request_error"
            )
        if not isinstance(fields.get("prompt"), str) or not isinstance(fields.get("model"), str):
            return openai_error(
                400,
                "Missing required parameter: 'prompt'.",
                "missing_required_parameter",
                "invalid_request_error",
            )
        if not 1 <= int(fields.get("n", 1)) <= 10:
            return openai_error(
                400,
                "Invalid 'n': integer above maximum value.",
                "integer_above_max_value",
                "invalid_request_error",
            )
        checks = {"size": set(SIZES), "quality": {"auto", "low", "medium", "high"},
                  "background": {"auto", "transparent", "opaque"}}  # fmt: skip
        for name, allowed in checks.items():
            if name in fields and fields[name] not in allowed:
                return openai_error(
                    400,
                    f"Invalid value: '{fields[name]}'.",
                    "invalid_value",
                    "invalid_request_error",
                )
        if "forbidden" in fields["prompt"]:
            message = "Your request was rejected by the safety system. safety_violations=[sexual]."
            return openai_error(400, message, "moderation_blocked", "image_generation_user_error")
        return None

    def _images(self, fields: dict[str, Any]) -> Reply:
        width, height = SIZES[fields.get("size", "auto")]
        alpha = fields.get("background") == "transparent"
        data = [
            {"b64_json": b64(png(width, height, i, alpha))} for i in range(int(fields.get("n", 1)))
        ]
        return Reply(
            200, {"created": int(time.time()), "data": data, "usage": {"total_tokens": 100}}
        )

    async def generations(self, request: web.Request) -> web.Response:
        try:
            fields = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return _json(
                openai_error(
                    400,
                    "We could not parse the JSON body of your request.",
                    None,
                    "invalid_request_error",
                )
            )
        scripted = self._record("generations", request, fields)
        denied = self._denied(request)
        if denied is not None:
            return denied
        if not await self._stall("generations", request):
            return _json(Reply(499))
        if scripted is not None:
            return _json(scripted)
        if not isinstance(fields.get("n", 1), int):
            return _json(
                openai_error(400, "Invalid type for 'n'.", "invalid_type", "invalid_request_error")
            )
        return _json(self._check(fields) or self._images(fields))

    async def edits(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/form-data"):
            return _json(
                openai_error(400, "Expected multipart/form-data.", None, "invalid_request_error")
            )
        form = await request.post()
        fields: dict[str, Any] = {}
        images: list[dict[str, Any]] = []
        mask: dict[str, Any] | None = None
        for name, value in form.items():
            if isinstance(value, web.FileField):
                pixels = decode_image(value.file.read())
                entry = {
                    "filename": value.filename,
                    "content_type": value.content_type,
                    "pixels": pixels,
                }
                if name in ("image[]", "image"):
                    images.append(entry)
                elif name == "mask":
                    mask = entry
                else:
                    fields[name] = entry
            else:
                fields[name] = str(value)
        body = {"fields": fields, "images": images, "mask": mask}
        scripted = self._record("edits", request, body)
        denied = self._denied(request)
        if denied is not None:
            return denied
        if not await self._stall("edits", request):
            return _json(Reply(499))
        if scripted is not None:
            return _json(scripted)
        if not images or any(i["pixels"] is None for i in images):
            return _json(
                openai_error(
                    400,
                    "Invalid image file or mode for image 1.",
                    "invalid_image_file",
                    "invalid_request_error",
                )
            )
        if mask is not None:
            first, pixels = images[0]["pixels"], mask["pixels"]
            if (
                pixels is None
                or pixels.ndim != 3
                or pixels.shape[2] != 4
                or pixels.shape[:2] != first.shape[:2]
            ):
                return _json(
                    openai_error(
                        400,
                        "Invalid mask image: it must be a PNG with alpha, the size of the image.",
                        "invalid_image_file",
                        "invalid_request_error",
                    )
                )
        return _json(self._check(fields) or self._images(fields))
