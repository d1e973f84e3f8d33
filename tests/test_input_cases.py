"""Real-world inputs that break tools like ours (../shared/research/input-cases.md), through
the real server: every case ends with its documented error code or a correct output, never
a 500, a hang or a crash, and leaves no file behind.

Covered here: fetch-level cases (C11 zero bytes, C26/C27 downloads: truncated, slow, huge,
bombs, redirects, wrong Content-Type) on both download paths (into memory for images, to
disk for videos); face cases (C13, C15: no face, more indexes than faces); videos through
the server where tests/test_video.py and tests/test_faceswap_video.py do not already go
(rotation with odd dimensions, a zero-byte file); webhook receivers that misbehave (C29).
The image-decoding matrix (alpha, gray, 16-bit, palette, CMYK, EXIF, huge, truncated,
non-image) is in tests/test_image_input_cases.py."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ahv.models.face.mtcnn import build_mtcnn_models
from scripts.make_test_models import make_test_models
from tests import media as fixtures
from tests.conftest import FINAL, Api, MediaServer
from tests.test_faceswap import t1_path

PNG = fixtures.astronaut_png()


# -- a misbehaving input server ---------------------------------------------------------------


class Inputs:
    """Routes that fail the way real servers do (research C27)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.server: TestServer | None = None

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    async def empty(self, request: web.Request) -> web.Response:
        return web.Response(body=b"")

    async def truncated(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(PNG[:1000])
        assert request.transport is not None
        request.transport.close()
        return response

    async def stall_body(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "50000"})
        await response.prepare(request)
        await response.write(PNG[:100])
        await self.stalled()
        return response

    async def stall_headers(self, request: web.Request) -> web.Response:
        await self.stalled()
        return web.Response(body=PNG)

    async def stalled(self) -> None:
        # Until the test ends: longer than any fetch timeout of the server under test.
        try:
            await asyncio.wait_for(self.release.wait(), 30)
        except TimeoutError:
            pass

    async def huge_length(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "5000000000"})
        await response.prepare(request)
        await self.stalled()
        return response

    async def endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(2000):
                await response.write(b"\x00" * 65536)
        except ConnectionError:
            pass
        return response

    async def gzip_bomb(self, request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"\x00" * 30_000_000), headers={"Content-Encoding": "gzip"}
        )

    async def html_typed_png(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="text/html")

    async def hop(self, request: web.Request) -> web.Response:
        left = int(request.match_info["n"])
        if left == 0:
            return web.Response(body=PNG, content_type="image/png")
        raise web.HTTPFound(f"/hop/{left - 1}")

    async def loop(self, request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/loop")

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), body=PNG)


@pytest.fixture
async def inputs(aiohttp_server: Any) -> AsyncIterator[Inputs]:
    found = Inputs()
    app = web.Application()
    for path, handler in (
        ("/empty", found.empty),
        ("/truncated", found.truncated),
        ("/stall-body", found.stall_body),
        ("/stall-headers", found.stall_headers),
        ("/huge-length", found.huge_length),
        ("/endless", found.endless),
        ("/gzip-bomb", found.gzip_bomb),
        ("/photo.jpg", found.html_typed_png),
        ("/hop/{n}", found.hop),
        ("/loop", found.loop),
        ("/status/{code}", found.status),
    ):
        app.router.add_get(path, handler)
    found.server = await aiohttp_server(app)
    yield found
    found.release.set()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# (path, code, words in the message, attempts: "1" or "max" (transient, retried))
FETCH_CASES = [
    ("/truncated", "download_failed", ["incomplete body", "of 100000 bytes"], "max"),
    ("/stall-body", "download_timeout", ["read_timeout_s"], "max"),
    ("/stall-headers", "download_timeout", ["read_timeout_s"], "max"),
    ("/huge-length", "input_too_large", ["5000000000 bytes"], "1"),
    ("/endless", "input_too_large", ["limit 2000000 bytes"], "1"),
    ("/gzip-bomb", "input_too_large", ["limit 2000000 bytes"], "1"),
    ("/loop", "download_failed", ["too many redirects"], "1"),
    ("/status/404", "download_failed", ["HTTP 404"], "1"),
    ("/status/410", "download_failed", ["HTTP 410"], "1"),
    ("/status/503", "download_failed", ["HTTP 503"], "max"),
    ("/status/429", "download_failed", ["HTTP 429"], "max"),
    ("CLOSED", "download_failed", ["connection"], "max"),
]
MAX_ATTEMPTS = 2


def fetch_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "fetch": {
            "allowed_networks": ["127.0.0.1/32"],
            "read_timeout_s": 0.4,
            "total_timeout_s": 3,
            "max_bytes": 2_000_000,
            "max_redirects": 3,
        },
        "video": {"max_bytes": 2_000_000},
        "queue": {"max_attempts": MAX_ATTEMPTS},
        "backends": [{"name": "cpu", "slots": 4, "tasks": ["upscale", "faceswap_video", "sleep"]}],
    }
    config.update(overrides)
    return config


def leftovers(api: Api) -> list[str]:
    files_dir = api.orchestrator.files_dir
    return [p.name for p in files_dir.iterdir()]


@pytest.mark.parametrize(
    ("task", "field"), [("upscale", "image_url"), ("faceswap_video", "target_url")]
)
async def test_download_failures_end_with_their_code(
    start_server: Any, inputs: Inputs, task: str, field: str
) -> None:
    """The same download failures on the in-memory path (images) and the streamed-to-disk
    path (videos)."""
    api: Api = await start_server(**fetch_config())
    source = inputs.url("/hop/0")
    jobs = {}
    for path, *_ in FETCH_CASES:
        url = f"http://127.0.0.1:{closed_port()}/x" if path == "CLOSED" else inputs.url(path)
        payload = {field: url} if task == "upscale" else {field: url, "source_url": source}
        jobs[path] = await api.submit(task, payload)
    for path, code, words, attempts in FETCH_CASES:
        doc = await api.wait(jobs[path]["job_id"], timeout_s=30)
        where = (task, path, doc["error"])
        assert doc["status"] == "failed", where
        assert doc["error"]["code"] == code, where
        assert doc["error"]["message"].startswith(f"{field}: "), where
        for word in words:
            assert word in doc["error"]["message"], where
        assert doc["attempts"] == (1 if attempts == "1" else MAX_ATTEMPTS), where
    assert leftovers(api) == []  # no partial download, no .video-* work dir


async def test_download_successes_despite_the_server(start_server: Any, inputs: Inputs) -> None:
    api: Api = await start_server(**fetch_config())
    # Wrong Content-Type and a misleading extension: the bytes decide (PNG served as HTML).
    typed = await api.submit("upscale", {"image_url": inputs.url("/photo.jpg")})
    # Redirects within fetch.max_redirects (3) are followed.
    hops = await api.submit("upscale", {"image_url": inputs.url("/hop/3")})
    too_many = await api.submit("upscale", {"image_url": inputs.url("/hop/4")})
    for job in (typed, hops):
        doc = await api.wait(job["job_id"])
        assert doc["status"] == "succeeded", doc["error"]
        assert (doc["result"]["meta"]["width"], doc["result"]["meta"]["height"]) == (1024, 1024)
    doc = await api.wait(too_many["job_id"])
    assert doc["error"]["code"] == "download_failed" and "more than 3" in doc["error"]["message"]


async def test_zero_byte_inputs_on_every_image_task(
    start_server: Any, inputs: Inputs, image_models: Path
) -> None:
    """C11: an empty body is `corrupt_input` naming the field, for every task and field."""
    api: Api = await start_server(**face_and_image_config(image_models))
    empty, photo = inputs.url("/empty"), inputs.url("/hop/0")
    cases = [
        ("upscale", {"image_url": empty}, "image_url"),
        ("remove_background", {"image_url": empty}, "image_url"),
        ("scan_objects", {"image_url": empty}, "image_url"),
        ("remove_object", {"image_url": empty, "prompt": "cat"}, "image_url"),
        ("remove_object", {"image_url": photo, "mask_url": empty}, "mask_url"),
        ("faceswap", {"target_url": empty, "source_url": photo}, "target_url"),
        ("faceswap", {"target_url": photo, "source_url": empty}, "source_url"),
        ("faceswap_multi", {"target_url": photo, "source_urls": [photo, empty]}, "source_urls[1]"),
        ("faceswap_video", {"target_url": empty, "source_url": photo}, "target_url"),
    ]
    jobs = [(await api.submit(task, payload), task, field) for task, payload, field in cases]
    for job, task, field in jobs:
        doc = await api.wait(job["job_id"], timeout_s=60)
        where = (task, field, doc["error"])
        assert doc["status"] == "failed" and doc["error"]["code"] == "corrupt_input", where
        assert field in doc["error"]["message"] and doc["attempts"] == 1, where
    assert leftovers(api) == []


# -- faces (C13, C15) -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_models(tmp_path_factory: Any) -> Path:
    from scripts.tiny_models_images import make_matting
    from scripts.tiny_models_objects import make_yolo

    directory = Path(tmp_path_factory.mktemp("input-case-models"))
    make_test_models(directory)
    build_mtcnn_models(directory)
    make_matting(directory / "tiny_matting.onnx")
    make_yolo(directory / "tiny_yolo.onnx")
    return directory


def face_and_image_config(models_dir: Path, **overrides: Any) -> dict[str, Any]:
    names = ("w600k_r50", "inswapper_128", "tiny_matting", "tiny_yolo")
    config: dict[str, Any] = {
        "models": {"dir": str(models_dir), "files": {n: {"file": f"{n}.onnx"} for n in names}},
        "images": {"matting": "tiny_matting"},
        "objects": {"detector": "tiny_yolo"},
        "backends": [
            {
                "name": "cpu",
                "slots": 2,
                "tasks": [
                    "upscale",
                    "faceswap",
                    "faceswap_multi",
                    "faceswap_video",
                    "remove_background",
                    "scan_objects",
                    "remove_object",
                ],
            }
        ],
    }
    config.update(overrides)
    return config


def png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return bytes(data.tobytes())


def tight_face_crop() -> bytes:
    """C13: the astronaut's face filling the whole frame (detectors often miss these)."""
    pixels = cv2.imread(str(fixtures.astronaut_path()))
    return png(pixels[40:230, 150:330])


def small_group() -> bytes:
    """insightface's t1.jpg (6 faces) at half size: the same faces, a quarter of the work."""
    pixels = cv2.imread(str(t1_path()))
    return png(cv2.resize(pixels, (640, 443), interpolation=cv2.INTER_AREA))


def tiny_face() -> bytes:
    """A face far below faceswap.min_face_px."""
    pixels = cv2.imread(str(fixtures.astronaut_path()))
    return png(cv2.resize(pixels, (40, 40), interpolation=cv2.INTER_AREA))


# (task, payload with ASTRO/GROUP/... placeholders, outcome: a status or an error code, words)
FACE_CASES: list[tuple[str, dict[str, Any], str, list[str]]] = [
    # More indexes than faces (C15): the astronaut has 1 face, the group photo t1 has 6.
    ("faceswap", {"target_url": "GROUP", "source_url": "ASTRO", "swap_faces_index": [3]},
     "face_index_out_of_range", ["swap_faces_index", "source_url"]),
    ("faceswap", {"target_url": "GROUP", "source_url": "ASTRO",
                  "target_faces_index": [0, 1, 2, 3, 4, 5, 6, 7]},
     "face_index_out_of_range", ["target_url"]),
    ("faceswap_multi", {"target_url": "GROUP", "source_urls": ["ASTRO", "ASTRO"],
                        "target_faces_index": [0, 6]},
     "face_index_out_of_range", ["target_url"]),
    ("faceswap_multi", {"target_url": "GROUP", "source_urls": ["ASTRO", "ASTRO"],
                        "swap_faces_index": [0, 2]},
     "face_index_out_of_range", ["source_urls[1]"]),
    # Asking for more faces than there are is not an error: all of them are swapped.
    ("faceswap", {"target_url": "GROUP", "source_url": "ASTRO", "max_faces": 50, "upscale": 0},
     "succeeded", []),
    # No usable face (C13): a face below min_face_px, and a blank image.
    ("faceswap", {"target_url": "TINY", "source_url": "ASTRO"}, "no_face_detected", ["target_url"]),
    # A face filling the frame: found and swapped, or refused with the code (never a crash).
    ("faceswap", {"target_url": "TIGHT", "source_url": "ASTRO", "upscale": 0},
     "succeeded|no_face_detected", []),
    ("faceswap", {"target_url": "GROUP", "source_url": "TIGHT", "upscale": 0},
     "succeeded|no_face_detected", []),
]  # fmt: skip


async def test_face_cases(start_server: Any, media: MediaServer, image_models: Path) -> None:
    api: Api = await start_server(**face_and_image_config(image_models))
    urls = {
        "ASTRO": media.add("astro.png", PNG),
        "GROUP": media.add("group.png", small_group()),
        "TINY": media.add("tiny.png", tiny_face()),
        "TIGHT": media.add("tight.png", tight_face_crop()),
    }

    def fill(value: Any) -> Any:
        if isinstance(value, list):
            return [fill(v) for v in value]
        return urls.get(value, value) if isinstance(value, str) else value

    jobs = []
    for task, payload, outcome, words in FACE_CASES:
        job = await api.submit(task, {k: fill(v) for k, v in payload.items()})
        jobs.append((job, task, payload, outcome, words))
    for job, task, payload, outcome, words in jobs:
        doc = await api.wait(job["job_id"], timeout_s=90)
        got = doc["status"] if doc["status"] == "succeeded" else doc["error"]["code"]
        where = (task, payload, doc["error"])
        assert got in outcome.split("|"), where
        for word in words:
            assert word in doc["error"]["message"], where
        if got == "succeeded":
            assert doc["result"]["meta"]["swapped"], where
    group_all = jobs[4][0]
    doc = await api.job(group_all["job_id"])
    assert len(doc["result"]["meta"]["swapped"]) == len(doc["result"]["meta"]["faces"]["target"])


# -- videos through the server --------------------------------------------------------------------


def rotated_clip(path: Path, frames: int) -> Path:
    """Upright 181x241 frames with a face, stored turned a quarter clockwise (241x181, odd
    both ways, yuv444p) with a 90° display matrix: what a phone writes."""
    face = cv2.resize(cv2.imread(str(fixtures.astronaut_path())), (150, 150))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 241, 181, "yuv444p"
        stream.options = {"preset": "ultrafast"}
        stream.set_display_rotation(90)
        for i in range(frames):
            upright = np.full((241, 181, 3), (60 + i, 90, 140), np.uint8)
            upright[40:190, 15:165] = face
            stored = np.ascontiguousarray(np.rot90(upright, -1))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="bgr24")))
        out.mux(stream.encode())
    return path


async def test_rotated_odd_sized_video_through_the_server(
    start_server: Any, media: MediaServer, image_models: Path, tmp_path: Path
) -> None:
    """C19 + C22 together, end to end: a phone-style clip with a 90° display matrix and odd
    coded dimensions (yuv444p, 241x181) comes out upright, even-sized, untagged."""
    api: Api = await start_server(**face_and_image_config(image_models))
    clip = rotated_clip(tmp_path / "in.mp4", frames=12)
    job = await api.submit(
        "faceswap_video",
        {
            "target_url": media.add("rot.mp4", clip.read_bytes()),
            "source_url": media.add("s.png", PNG),
        },
    )
    doc = await api.wait(job["job_id"], timeout_s=90)
    assert doc["status"] == "succeeded", doc["error"]
    meta = doc["result"]["meta"]
    assert meta["rotation_applied"] == 90
    assert (meta["width"], meta["height"]) == (182, 242)  # upright 181x241, padded even
    async with api.session.get(doc["result"]["url"]) as response:
        out = tmp_path / "out.mp4"
        out.write_bytes(await response.read())
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height, frame.rotation) == (182, 242, 0)
    assert [p for p in leftovers(api) if not p.endswith(".mp4")] == []


# -- webhook receivers that misbehave (C29) -------------------------------------------------------


async def raw_receiver(behaviour: str) -> tuple[asyncio.Server, str]:
    """A TCP server that reads a request and then resets, answers garbage, or never answers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if behaviour == "garbage":
                writer.write(b"HELLO THERE\r\n\r\n")
                await writer.drain()
            elif behaviour == "silent":
                await asyncio.sleep(5)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/hook"


async def test_webhook_receivers_that_misbehave(start_server: Any, aiohttp_server: Any) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        await request.read()
        if kind == "huge":  # 200 with a 5 MB body: the sender reads 64 KiB and moves on
            return web.Response(body=b"x" * 5_000_000)
        if kind == "trickle":
            response = web.StreamResponse()
            await response.prepare(request)
            for _ in range(20):
                await response.write(b".")
                await asyncio.sleep(0.1)
            return response
        if kind == "301":
            raise web.HTTPMovedPermanently("/elsewhere")
        if kind == "308":
            raise web.HTTPPermanentRedirect("/elsewhere")
        return web.Response(status=int(kind))

    app = web.Application()
    app.router.add_post("/{kind}", answer)
    http = await aiohttp_server(app)
    raw = {name: await raw_receiver(name) for name in ("reset", "garbage", "silent")}
    api: Api = await start_server(
        webhooks={"timeout_s": 0.5, "retry_base_s": 0.05, "retry_max_s": 0.1, "max_attempts": 3}
    )
    # url -> (final delivery state, attempts, a word of last_error or None)
    cases = {
        str(http.make_url("/204")): ("delivered", 1, None),
        str(http.make_url("/202")): ("delivered", 1, None),
        str(http.make_url("/huge")): ("delivered", 1, None),
        str(http.make_url("/trickle")): ("delivered", 1, None),
        str(http.make_url("/400")): ("failed", 1, "HTTP 400"),
        str(http.make_url("/404")): ("failed", 1, "HTTP 404"),
        str(http.make_url("/500")): ("failed", 3, "HTTP 500"),
        str(http.make_url("/301")): ("failed", 3, "not followed"),
        str(http.make_url("/308")): ("failed", 3, "not followed"),
        raw["reset"][1]: ("failed", 3, "connection failed"),
        raw["garbage"][1]: ("failed", 3, "connection failed"),
        raw["silent"][1]: ("failed", 3, "timed out"),
        f"http://127.0.0.1:{closed_port()}/hook": ("failed", 3, "connection failed"),
    }
    jobs = {url: await api.submit("sleep", {"seconds": 0}, webhook_url=url) for url in cases}
    deadline = time.monotonic() + 30
    for url, (state, attempts, word) in cases.items():
        job_id = jobs[url]["job_id"]
        assert (await api.wait(job_id))["status"] == "succeeded"  # the receiver never matters
        while True:
            _, body, _ = await api.call("GET", f"/v1/jobs/{job_id}/webhooks")
            (delivery,) = body["deliveries"]
            if delivery["state"] != "pending":
                break
            assert time.monotonic() < deadline, (url, delivery)
            await asyncio.sleep(0.05)
        where = (url, delivery)
        assert (delivery["state"], delivery["attempts"]) == (state, attempts), where
        if word is not None:
            assert word in (delivery["last_error"] or ""), where
    for server, _ in raw.values():
        server.close()
        await server.wait_closed()
    _, stats, _ = await api.call("GET", "/stats")
    assert stats["counts"].get("succeeded") == len(cases)
    assert set(stats["counts"]) <= FINAL
