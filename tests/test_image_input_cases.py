"""Every awkward input kind of research/input-cases.md (C01–C11), for each image task, through
one real server: `upscale`, `remove_background`, `scan_objects` and `remove_object` (its image
and its mask) × alpha, gray, gray+alpha, 16-bit, palette, CMYK, EXIF-rotated (mirrored too),
single-frame GIF, and the kinds that must fail with their code (animated GIF/PNG/WebP, a huge
header, empty, truncated, text, HTML), webhook included; then faceswap targets and sources of
those kinds, and the upscale output limit.

The inputs are cut from real photos (skimage's astronaut, insightface's t1.jpg); the models are
the tiny ones with the real signatures (scripts/), so each expected output is computed here from
a Pillow/numpy reference of the upright picture. Detection and matting see transparent pixels
as flat gray (README, "Image inputs"); the RGBA kind hides a red square under alpha 0 to prove it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import msgspec
import numpy as np
import onnxruntime as ort
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image, ImageOps

from ahv.config import Config
from ahv.http.app import create_app
from ahv.models.face.mtcnn import MtcnnDetector, build_mtcnn_models
from ahv.models.matting import Matting
from ahv.models.yolo import Detection, YoloDetector
from ahv.tasks.objects import object_rows
from scripts.make_test_models import make_test_models
from scripts.tiny_models_images import make_all
from scripts.tiny_models_objects import make_lama, make_yolo
from tests import media as fixtures
from tests.conftest import Api, MediaServer, Receiver, base_config, merge

pytestmark = pytest.mark.asyncio(loop_scope="module")

TASKS = ("upscale", "remove_background", "scan_objects", "remove_object")
MODELS = ("tiny_matting", "tiny_sr_x2", "yolo_tiny", "lama_dyn", "w600k_r50", "inswapper_128")
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG", b"\xff\xd8\xff"
# What the detectors see under transparent pixels: the gray YOLO letterboxes with.
VISIBLE_GRAY = 114
# A red square (the tiny detector's `cat`) stored under fully transparent pixels of the RGBA kind.
HIDDEN = (206, 6, 250, 50)

Pixels = np.ndarray


# -- the input kinds ---------------------------------------------------------------------------


def bgr(rgb_or_rgba: Pixels) -> Pixels:
    code = cv2.COLOR_RGBA2BGRA if rgb_or_rgba.shape[2] == 4 else cv2.COLOR_RGB2BGR
    return np.asarray(cv2.cvtColor(np.ascontiguousarray(rgb_or_rgba), code))


def pillow_upright(data: bytes) -> Pixels:
    """The picture a viewer shows, as BGR (BGRA when it has transparency): EXIF applied."""
    with Image.open(io.BytesIO(data)) as image:
        upright = ImageOps.exif_transpose(image)
        alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
        return bgr(np.asarray(upright.convert("RGBA" if alpha else "RGB")))


def from_16bit(values: np.ndarray) -> Pixels:
    """A 16-bit plane (gray) or RGB image scaled to 8 bits the exact way: /257."""
    eight = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return bgr(eight if eight.ndim == 3 else np.dstack([eight] * 3))


def encoded(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png(pixels: Pixels) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return bytes(data.tobytes())


def rgba_hidden_png() -> bytes:
    """256×256: the photo in an opaque disc, a 50%-alpha band, fully transparent elsewhere,
    with a red square hidden (colour kept, alpha 0) in the transparent top-right corner."""
    rgb = np.asarray(fixtures.astronaut_rgb().resize((256, 256), Image.Resampling.LANCZOS)).copy()
    yy, xx = np.mgrid[0:256, 0:256]
    alpha = np.where((xx - 128) ** 2 + (yy - 100) ** 2 <= 80**2, 255, 0).astype(np.uint8)
    alpha[180:220, :] = 128
    x1, y1, x2, y2 = HIDDEN
    rgb[y1:y2, x1:x2] = (255, 0, 0)
    assert alpha[y1:y2, x1:x2].max() == 0
    return png(bgr(np.dstack([rgb, alpha])))


def animated_png() -> bytes:
    """An APNG: three 64×64 crops of the photo."""
    first, *rest = (fixtures.astronaut_rgb().crop((i * 40, 0, i * 40 + 64, 64)) for i in range(3))
    return encoded(first, "PNG", save_all=True, append_images=rest, duration=100)


def html_page() -> bytes:
    return b"<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>"


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable[[], bytes]
    # The upright picture (BGR, or BGRA with transparency) the task must work on.
    reference: Callable[[bytes], Pixels] = pillow_upright
    orientation: int = 1
    # 16-bit inputs: the exact 8-bit scaling (/257), which the reference must be within 1 of
    # (Pillow keeps the high byte of 16-bit RGB; that is as good, never clipped or wrapped).
    ideal: Callable[[], Pixels] | None = None


VALID = [
    Kind("rgba", rgba_hidden_png),
    Kind("gray", fixtures.gray_png),
    Kind("gray_alpha", fixtures.gray_alpha_png),
    Kind("rgb16", fixtures.rgb16_png, ideal=lambda: from_16bit(fixtures.rgb16_values())),
    Kind(
        "gray16",
        fixtures.gray16_png,
        # Pillow would clip a 16-bit gray plane to 255; the server scales it.
        reference=lambda _: from_16bit(fixtures.gray16_values()),
        ideal=lambda: from_16bit(fixtures.gray16_values()),
    ),
    Kind("palette", lambda: fixtures.palette_png(transparent=True)),
    Kind("cmyk", fixtures.cmyk_jpeg),
    Kind("exif3", lambda: fixtures.exif_rotated_jpeg(3), orientation=3),
    Kind("exif6", lambda: fixtures.exif_rotated_jpeg(6), orientation=6),
    Kind("exif8", lambda: fixtures.exif_rotated_jpeg(8), orientation=8),
    Kind("exif7_mirrored", lambda: fixtures.exif_rotated_jpeg(7), orientation=7),
    Kind("gif_one_frame", fixtures.single_frame_gif),
]


@dataclass(frozen=True)
class BadKind:
    name: str
    make: Callable[[], bytes]
    content_type: str
    code: str
    words: tuple[str, ...]


UNSUPPORTED, NOT_IMAGE = "unsupported_media_type", ("not a supported image",)
BAD = [
    # Served as image/png: the format comes from the bytes, not the Content-Type.
    BadKind("animated_gif", fixtures.animated_gif, "image/png", UNSUPPORTED, ("animated",)),
    BadKind("animated_png", animated_png, "image/png", UNSUPPORTED, ("animated",)),
    BadKind("animated_webp", fixtures.animated_webp, "image/webp", UNSUPPORTED, ("animated",)),
    # The file holds one row of pixel data: had it been decoded, it would be corrupt_input.
    BadKind(
        "huge_header",
        lambda: fixtures.huge_header_png(30000, 30000),
        "image/png",
        "image_too_large",
        ("30000x30000",),
    ),
    BadKind("empty", lambda: b"", "image/jpeg", "corrupt_input", ("empty",)),
    BadKind(
        "truncated_jpeg", fixtures.truncated_jpeg, "image/jpeg", "corrupt_input", ("truncated",)
    ),
    BadKind("text", fixtures.text_file, "image/png", UNSUPPORTED, NOT_IMAGE),
    BadKind("html", html_page, "text/html", UNSUPPORTED, NOT_IMAGE),
]


# -- one server for the module -------------------------------------------------------------


@dataclass
class Rig:
    api: Api
    media: MediaServer
    receiver: Receiver
    models: Path
    sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)

    def session(self, name: str) -> ort.InferenceSession:
        """The test's own session of a model (for reference outputs), made once."""
        if name not in self.sessions:
            path = str(self.models / f"{name}.onnx")
            self.sessions[name] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return self.sessions[name]


def rig_config(models: Path, data_dir: Path) -> Config:
    overrides = {
        "models": {
            "dir": str(models),
            "files": {name: {"file": f"{name}.onnx"} for name in MODELS},
        },
        "images": {"matting": "tiny_matting", "upscaler": "tiny_sr_x2"},
        "objects": {"detector": "yolo_tiny", "inpainter": "lama_dyn"},
        "backends": [{"name": "cpu", "slots": 2, "tasks": [*TASKS, "faceswap"]}],
    }
    return msgspec.convert(merge(base_config(data_dir), overrides), Config)


async def started(app: web.Application) -> TestServer:
    server = TestServer(app)
    await server.start_server()
    return server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: Any) -> AsyncIterator[Rig]:
    root = Path(tmp_path_factory.mktemp("input-cases"))
    models = root / "models"
    models.mkdir()
    make_all(models)
    make_yolo(models / "yolo_tiny.onnx")
    make_lama(models / "lama_dyn.onnx", dynamic=True)
    make_test_models(models)
    build_mtcnn_models(models)
    media, receiver = MediaServer(), Receiver()
    media_app, receiver_app = web.Application(), web.Application()
    media_app.router.add_get("/{name}", media.handle)
    receiver_app.router.add_route("*", "/{tail:.*}", receiver.handle)
    media.server, receiver.server = await started(media_app), await started(receiver_app)
    ahv = await started(create_app(rig_config(models, root / "data")))
    session = aiohttp.ClientSession()
    try:
        yield Rig(Api(ahv, session), media, receiver, models)
    finally:
        await session.close()
        for server in (ahv, media.server, receiver.server):
            await server.close()


async def run_job(rig: Rig, task: str, payload: dict[str, Any], hook: str) -> dict[str, Any]:
    job = await rig.api.submit(task, payload, webhook_url=rig.receiver.url(hook))
    return await rig.api.wait(job["job_id"], timeout_s=60)


async def result_file(rig: Rig, doc: dict[str, Any]) -> tuple[Pixels, bytes]:
    async with rig.api.session.get(doc["result"]["url"]) as response:
        assert response.status == 200
        data = await response.read()
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), data


# -- expectations ------------------------------------------------------------------------------


def visible(pixels: Pixels) -> Pixels:
    """BGR as shown: a BGRA picture over the flat gray the detectors are documented to use."""
    if pixels.shape[2] == 3:
        return pixels
    alpha = pixels[..., 3:4].astype(np.int64)
    mixed = pixels[..., :3] * alpha + VISIBLE_GRAY * (255 - alpha)
    return np.asarray((mixed + 127) // 255, dtype=np.uint8)  # rounded to nearest


def max_diff(a: Pixels, b: Pixels) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def assert_jpeg_close(out: Pixels, expected: Pixels, where: Pixels | None = None) -> None:
    diff = np.abs(out.astype(int) - expected.astype(int))
    mean = float(diff[where].mean() if where is not None else diff.mean())
    assert mean < 3.0, f"mean difference {mean:.2f} (JPEG q95 stays well under 3)"


def assert_marker_top_left(out: Pixels, scale: int = 1) -> None:
    """The red square of the EXIF fixtures sits in the upright picture's top-left corner."""
    side = fixtures.EXIF_MARKER * scale
    blue, green, red = out[10 * scale : side - 4, 10 * scale : side - 4, :3].reshape(-1, 3).mean(0)
    assert red > 150 and green < 90 and blue < 90, (blue, green, red)


def corner_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The region remove_object's mask covers: lower right, away from the EXIF marker."""
    return round(width * 0.55), round(height * 0.6), round(width * 0.85), round(height * 0.85)


def box_mask(width: int, height: int, box: tuple[int, int, int, int]) -> Pixels:
    mask = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 255
    return mask


def centre(d: dict[str, Any] | Detection) -> tuple[float, float]:
    x1, y1, x2, y2 = d["box"] if isinstance(d, dict) else d.box
    return (x1 + x2) / 2, (y1 + y2) / 2


def inside(point: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


async def check_upscale(rig: Rig, kind: Kind, ref: Pixels, doc: dict[str, Any]) -> None:
    height, width = ref.shape[:2]
    alpha = ref.shape[2] == 4
    meta = doc["result"]["meta"]
    assert (meta["input_width"], meta["input_height"]) == (width, height)
    assert (meta["width"], meta["height"]) == (2 * width, 2 * height)
    assert meta["method"] == "tiny_sr_x2" and meta["has_alpha"] is alpha
    out, data = await result_file(rig, doc)
    assert data.startswith(PNG_MAGIC if alpha else JPEG_MAGIC)
    assert out.shape == (2 * height, 2 * width, 4 if alpha else 3)
    # The tiny model enlarges by nearest neighbour: the colour is the reference's, doubled.
    nearest = cv2.resize(ref, (2 * width, 2 * height), interpolation=cv2.INTER_NEAREST)
    if not alpha:
        assert_jpeg_close(out, nearest)
    else:
        assert np.array_equal(out[..., :3], nearest[..., :3])
        # Alpha is resized along (Lanczos): the same as the doubled reference wherever it is
        # locally constant (Lanczos4 reaches 4 source pixels, 8 here), close elsewhere.
        near_alpha = nearest[..., 3]
        kernel = np.ones((19, 19), np.uint8)
        constant = cv2.dilate(near_alpha, kernel) == cv2.erode(near_alpha, kernel)
        assert np.array_equal(out[..., 3][constant], near_alpha[constant])
        assert np.abs(out[..., 3].astype(int) - near_alpha).mean() < 2.0
    if kind.orientation != 1:
        assert_marker_top_left(out, scale=2)


async def check_remove_background(rig: Rig, kind: Kind, ref: Pixels, doc: dict[str, Any]) -> None:
    height, width = ref.shape[:2]
    meta = doc["result"]["meta"]
    assert (meta["width"], meta["height"]) == (width, height)
    assert meta["has_alpha"] is True and meta["format"] == "png"
    out, data = await result_file(rig, doc)
    assert data.startswith(PNG_MAGIC) and out.shape == (height, width, 4)
    assert np.array_equal(out[..., :3], ref[..., :3])  # colour untouched
    # The matte is taken on the picture as shown, then multiplied by the input's own alpha.
    matte = Matting(rig.session("tiny_matting")).matte(visible(ref))
    own = ref[..., 3].astype(np.float32) / 255.0 if ref.shape[2] == 4 else 1.0
    expected = np.clip(np.rint(matte * own * 255.0), 0, 255)
    assert max_diff(out[..., 3], expected) <= 1
    if ref.shape[2] == 4:
        assert out[..., 3][ref[..., 3] == 0].max() == 0
    # The share the result shows: hidden input pixels count 0.
    assert meta["foreground_fraction"] == pytest.approx(float((matte * own).mean()), abs=2e-3)
    if kind.orientation != 1:
        assert_marker_top_left(out)


async def check_scan(rig: Rig, kind: Kind, ref: Pixels, doc: dict[str, Any]) -> None:
    height, width = ref.shape[:2]
    meta = doc["result"]["meta"]
    assert (meta["width"], meta["height"]) == (width, height)
    assert doc["result"]["url"] is None
    objects = meta["objects"]
    assert meta["count"] == len(objects)
    for found in objects:
        x1, y1, x2, y2 = found["box"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, found
    # The same detector on the reference picture finds the same objects at the same places.
    detector = YoloDetector(rig.session("yolo_tiny"), names=[])
    expected = detector.detect(visible(ref))
    # Every kind's reference picture holds objects, so the comparison below is not two empty
    # lists: the server must find at least one.
    assert expected, f"the {kind.name} reference shows no object"
    assert objects, "no object found where the reference has some"

    def places(rows: list[dict[str, Any]]) -> list[tuple[str, list[float]]]:
        return sorted((row["label"], row["box"]) for row in rows)

    assert places(objects) == places(object_rows(expected))
    if kind.name == "rgba":
        # The red square under alpha 0 is invisible, so it is not an object; the raw colour
        # channels alone would show it.
        assert any(inside(centre(d), HIDDEN) for d in detector.detect(ref[..., :3]))
        assert not any(inside(centre(o), HIDDEN) for o in objects), objects
    if kind.orientation != 1:
        marker = fixtures.EXIF_MARKER
        cats = [centre(o) for o in objects if o["label"] == "cat"]
        assert any(inside(c, (0, 0, marker, marker)) for c in cats), cats


async def check_remove_object(rig: Rig, kind: Kind, ref: Pixels, doc: dict[str, Any]) -> None:
    height, width = ref.shape[:2]
    alpha = ref.shape[2] == 4
    meta = doc["result"]["meta"]
    assert (meta["width"], meta["height"]) == (width, height)
    # Sized like the upright picture, the mask needed no resizing (EXIF 6/8 would otherwise).
    assert meta["mask_resized"] is False and meta["method"] == "lama"
    assert meta["has_alpha"] is alpha
    out, data = await result_file(rig, doc)
    assert data.startswith(PNG_MAGIC if alpha else JPEG_MAGIC)
    assert out.shape == (height, width, 4 if alpha else 3)  # exactly the input's size
    x1, y1, x2, y2 = corner_box(width, height)
    masked = box_mask(width, height, (x1, y1, x2, y2)) > 0
    if alpha:
        assert np.array_equal(out[..., 3], ref[..., 3])  # alpha untouched
        assert np.array_equal(out[..., :3][~masked], ref[..., :3][~masked])
    else:
        assert_jpeg_close(out, ref, ~masked)
    # The tiny LaMa fills with the mean colour of the unmasked picture: a flat patch of that
    # colour (a 16-bit input read wrongly would give a black or wrapped fill).
    core = out[y1 + 3 : y2 - 3, x1 + 3 : x2 - 3, :3].reshape(-1, 3).astype(float)
    assert core.std(axis=0).max() < 3.0
    mean_outside = ref[..., :3][~masked].reshape(-1, 3).astype(float).mean(axis=0)
    assert np.abs(core.mean(axis=0) - mean_outside).max() < 6.0, (core.mean(0), mean_outside)
    if kind.orientation != 1:
        assert_marker_top_left(out)


CHECKS = {
    "upscale": check_upscale,
    "remove_background": check_remove_background,
    "scan_objects": check_scan,
    "remove_object": check_remove_object,
}


# -- the matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", VALID, ids=[k.name for k in VALID])
@pytest.mark.parametrize("task", TASKS)
async def test_valid_kind_gives_the_right_output(rig: Rig, task: str, kind: Kind) -> None:
    data = kind.make()
    ref = kind.reference(data)
    if kind.ideal is not None:
        assert max_diff(ref, kind.ideal()) <= 1
    height, width = ref.shape[:2]
    if kind.orientation != 1:
        assert (width, height) == fixtures.EXIF_UPRIGHT_SIZE
    name = f"{task}-{kind.name}"
    payload: dict[str, Any] = {"image_url": rig.media.add(name, data)}
    if task == "upscale":
        payload["scale"] = 2
    if task == "remove_object":
        mask = box_mask(width, height, corner_box(width, height))
        payload["mask_url"] = rig.media.add(f"{name}-mask.png", png(mask), "image/png")
    doc = await run_job(rig, task, payload, f"/{name}")
    assert doc["status"] == "succeeded", doc["error"]
    await CHECKS[task](rig, kind, ref, doc)


@pytest.mark.parametrize("kind", BAD, ids=[k.name for k in BAD])
@pytest.mark.parametrize("task", TASKS)
async def test_bad_kind_fails_with_its_code(rig: Rig, task: str, kind: BadKind) -> None:
    name = f"{task}-{kind.name}"
    payload = {"image_url": rig.media.add(name, kind.make(), kind.content_type)}
    if task == "remove_object":
        payload["mask_url"] = rig.media.add(
            f"{name}-mask.png", png(box_mask(64, 64, (8, 8, 40, 40)))
        )
    doc = await run_job(rig, task, payload, f"/{name}")
    assert_failed(doc, kind.code, "image_url", kind.words)
    (delivery,) = await rig.receiver.wait_for(f"/{name}", timeout_s=30)
    body = delivery.json
    assert body["event"] == "job.finished" and body["job_id"] == doc["job_id"]
    assert body["status"] == "failed" and body["ok"] is False
    assert body["error"] == doc["error"] and body["result"] is None


def assert_failed(doc: dict[str, Any], code: str, input_name: str, words: tuple[str, ...]) -> None:
    assert doc["status"] == "failed", doc
    assert doc["error"]["code"] == code, doc["error"]
    message = doc["error"]["message"]
    assert message.startswith(f"{input_name}:"), message
    for word in words:
        assert word in message, message
    assert "Traceback" not in message
    assert doc["attempts"] == 1 and doc["result"] is None  # bad input is never retried


# -- remove_object's mask in every kind ----------------------------------------------------------

MASK_BOX = (40, 60, 120, 140)  # in the upright 300×400 picture; no flip or turn maps it to itself


def mask_white_box() -> Pixels:
    width, height = fixtures.EXIF_UPRIGHT_SIZE
    return box_mask(width, height, MASK_BOX)


def mask_rgba_canvas() -> bytes:
    """White paint everywhere, opaque only in the box: transparent means not painted."""
    alpha = mask_white_box()
    return png(np.dstack([np.full((*alpha.shape, 3), 255, np.uint8), alpha]))


def mask_la() -> bytes:
    alpha = mask_white_box()
    return encoded(
        Image.merge("LA", (Image.new("L", alpha.shape[::-1], 255), Image.fromarray(alpha))), "PNG"
    )


def mask_gray16() -> bytes:
    # 30000 is under half of 65535: not painted. Clipping 16 to 8 bits would paint it all.
    values = np.where(mask_white_box() > 0, 65535, 30000).astype(np.uint16)
    return png(values)


def mask_rgb16() -> bytes:
    box = mask_white_box()[..., None] > 0
    values = np.where(box, np.uint16(65535), np.array([20000, 30000, 25000], np.uint16))
    return png(values.astype(np.uint16))


def mask_palette() -> bytes:
    image = Image.fromarray((mask_white_box() > 0).astype(np.uint8), "P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    return encoded(image, "PNG", transparency=0)


def mask_cmyk() -> bytes:
    return encoded(Image.fromarray(mask_white_box()).convert("CMYK"), "JPEG", quality=95)


def mask_exif(orientation: int) -> Callable[[], bytes]:
    return lambda: fixtures.exif_jpeg(np.dstack([mask_white_box()] * 3), orientation)


MASKS: list[tuple[str, Callable[[], bytes], int]] = [  # name, bytes, edge tolerance (px)
    ("gray", lambda: png(mask_white_box()), 0),
    ("rgba_canvas", mask_rgba_canvas, 0),
    ("gray_alpha", mask_la, 0),
    ("gray16", mask_gray16, 0),
    ("rgb16", mask_rgb16, 0),
    ("palette", mask_palette, 0),
    ("cmyk", mask_cmyk, 2),
    ("exif3", mask_exif(3), 2),
    ("exif6", mask_exif(6), 2),
    ("exif8", mask_exif(8), 2),
    ("exif5_mirrored", mask_exif(5), 2),
]


def upright_photo() -> Pixels:
    """The 300×400 crop of the EXIF fixtures (upright, red marker top-left), opaque BGRA: the
    result is then a lossless PNG."""
    return bgr(np.asarray(fixtures.exif_upright().convert("RGBA")))


@pytest.mark.parametrize(("name", "make", "edge"), MASKS, ids=[m[0] for m in MASKS])
async def test_mask_of_any_kind_is_read_upright(
    rig: Rig, name: str, make: Callable[[], bytes], edge: int
) -> None:
    source = upright_photo()
    payload = {
        "image_url": rig.media.add(f"mask-{name}-image.png", png(source)),
        "mask_url": rig.media.add(f"mask-{name}", make()),
    }
    doc = await run_job(rig, "remove_object", payload, f"/mask-{name}")
    assert doc["status"] == "succeeded", doc["error"]
    meta = doc["result"]["meta"]
    assert meta["mask_resized"] is False
    x1, y1, x2, y2 = MASK_BOX
    area = (x2 - x1) * (y2 - y1) / source[..., 0].size
    assert meta["mask_fraction"] == pytest.approx(area, abs=0.01 if edge else 1e-4)
    out, _ = await result_file(rig, doc)
    assert out.shape == source.shape
    changed = np.any(out != source, axis=2)
    grown = box_mask(out.shape[1], out.shape[0], (x1 - edge, y1 - edge, x2 + edge, y2 + edge))
    assert not changed[grown == 0].any(), "pixels changed outside the upright mask"
    core = out[y1 + edge + 2 : y2 - edge - 2, x1 + edge + 2 : x2 - edge - 2, :3]
    assert core.reshape(-1, 3).astype(float).std(axis=0).max() < 1.0  # filled flat
    assert_marker_top_left(out)


BAD_MASKS = [k for k in BAD if k.name in ("empty", "text", "huge_header", "animated_gif")]


@pytest.mark.parametrize("kind", BAD_MASKS, ids=[k.name for k in BAD_MASKS])
async def test_bad_mask_fails_naming_mask_url(rig: Rig, kind: BadKind) -> None:
    payload = {
        "image_url": rig.media.add(f"bad-mask-{kind.name}-image.png", png(upright_photo())),
        "mask_url": rig.media.add(f"bad-mask-{kind.name}", kind.make(), kind.content_type),
    }
    doc = await run_job(rig, "remove_object", payload, f"/bad-mask-{kind.name}")
    assert_failed(doc, kind.code, "mask_url", kind.words)


# -- the output limit of upscale ---------------------------------------------------------------


async def test_upscale_output_limit_is_checked_before_the_model(rig: Rig, tmp_path: Path) -> None:
    """A 4000×2770 photo is allowed in (11 MP), but ×4 would make 177 MP, over the default
    100 MP output limit. On a server whose upscaler file is missing, ×4 fails with
    image_too_large (the model was never reached) while ×2 gets as far as the model."""
    photo = cv2.imread(str(fixtures.t1_path()), cv2.IMREAD_COLOR)
    big = cv2.resize(photo, (4000, 2770), interpolation=cv2.INTER_CUBIC)
    ok, data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    no_models = tmp_path / "no-models"
    no_models.mkdir()
    server = await started(create_app(rig_config(no_models, tmp_path / "data")))
    try:
        api = Api(server, rig.api.session)
        url = rig.media.add("big-t1.jpg", data.tobytes(), "image/jpeg")
        job = await api.submit("upscale", {"image_url": url, "scale": 4})
        doc = await api.wait(job["job_id"], timeout_s=60)
        words = ("16000x11080", "4000x2770", "100000000")
        assert_failed(doc, "image_too_large", "payload.scale", words)
        job = await api.submit("upscale", {"image_url": url, "scale": 2})
        doc = await api.wait(job["job_id"], timeout_s=60)
        assert doc["status"] == "failed" and doc["error"]["code"] == "model_unavailable"
        assert "tiny_sr_x2" in doc["error"]["message"]
    finally:
        await server.close()


# -- faceswap: target and source in the awkward kinds ------------------------------------------


FACE_NAMES = ("rgba", "gray", "gray16", "exif6", "exif7_mirrored")
FACE_KINDS = [k for k in VALID if k.name in FACE_NAMES]
SOURCE_KINDS = [k for k in VALID if k.name in ("rgba", "gray16", "exif8")]


@functools.cache
def small_face_png() -> bytes:
    """The photo at 256×256: one face, quick to detect."""
    return encoded(fixtures.astronaut_rgb().resize((256, 256), Image.Resampling.LANCZOS), "PNG")


def face_boxes(rig: Rig, shown: Pixels) -> list[list[float]]:
    """The boxes (as result.meta rounds them) MTCNN finds in a picture, left to right."""
    detector = MtcnnDetector(
        rig.session("mtcnn_pnet"), rig.session("mtcnn_rnet"), rig.session("mtcnn_onet")
    )
    faces = [
        f for f in detector.detect(shown) if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= 20
    ]
    return [[round(float(v), 1) for v in f.box] for f in faces]


def near_faces(shape: tuple[int, ...], boxes: list[list[float]]) -> Pixels:
    """Where a paste-back may change pixels: each box grown by its own size on every side."""
    near = np.zeros(shape[:2], bool)
    for x1, y1, x2, y2 in boxes:
        grow_x, grow_y = x2 - x1, y2 - y1
        near[
            max(0, int(y1 - grow_y)) : int(y2 + grow_y) + 1,
            max(0, int(x1 - grow_x)) : int(x2 + grow_x) + 1,
        ] = True
    return near


@pytest.mark.parametrize("kind", FACE_KINDS, ids=[k.name for k in FACE_KINDS])
async def test_faceswap_target_of_any_kind(rig: Rig, kind: Kind) -> None:
    data = kind.make()
    ref = kind.reference(data)
    height, width = ref.shape[:2]
    alpha = ref.shape[2] == 4
    payload = {
        "target_url": rig.media.add(f"face-target-{kind.name}", data),
        "source_url": rig.media.add(f"face-target-{kind.name}-source.png", small_face_png()),
        "upscale": 0,
    }
    doc = await run_job(rig, "faceswap", payload, f"/face-target-{kind.name}")
    assert doc["status"] == "succeeded", doc["error"]
    meta = doc["result"]["meta"]
    assert (meta["width"], meta["height"]) == (width, height)
    # The faces are the upright picture's, as shown (EXIF applied, alpha over gray).
    expected = face_boxes(rig, visible(ref))
    assert expected and [f["box"] for f in meta["faces"]["target"]] == expected
    assert len(meta["swapped"]) == len(expected)
    out, data_out = await result_file(rig, doc)
    assert data_out.startswith(PNG_MAGIC if alpha else JPEG_MAGIC)
    assert out.shape == (height, width, 4 if alpha else 3)
    near = near_faces(out.shape, expected)
    assert np.any(out[near][..., :3] != ref[near][..., :3])  # something was swapped
    if alpha:
        assert np.array_equal(out[..., 3], ref[..., 3])
        assert np.array_equal(out[~near], ref[~near])
    else:
        assert_jpeg_close(out, ref, ~near)


@pytest.mark.parametrize("kind", SOURCE_KINDS, ids=[k.name for k in SOURCE_KINDS])
async def test_faceswap_source_of_any_kind(rig: Rig, kind: Kind) -> None:
    data = kind.make()
    payload = {
        "target_url": rig.media.add(f"face-source-{kind.name}-target.png", small_face_png()),
        "source_url": rig.media.add(f"face-source-{kind.name}", data),
        "upscale": 0,
    }
    doc = await run_job(rig, "faceswap", payload, f"/face-source-{kind.name}")
    assert doc["status"] == "succeeded", doc["error"]
    (source_faces,) = doc["result"]["meta"]["faces"]["sources"]
    expected = face_boxes(rig, visible(kind.reference(data)))
    assert expected and [f["box"] for f in source_faces] == expected


async def test_a_face_under_alpha_zero_is_not_a_face(rig: Rig) -> None:
    """The whole photo is kept in the colour channels, but only its bottom strip (no face) is
    visible: the target has no face to swap."""
    photo = cv2.imread(str(fixtures.astronaut_path()), cv2.IMREAD_COLOR)
    alpha = np.zeros(photo.shape[:2], np.uint8)
    alpha[420:, :] = 255
    target = np.dstack([photo, alpha])
    assert face_boxes(rig, photo) and not face_boxes(rig, visible(target))
    payload = {
        "target_url": rig.media.add("face-hidden.png", png(target)),
        "source_url": rig.media.add("face-hidden-source.png", small_face_png()),
        "upscale": 0,
    }
    doc = await run_job(rig, "faceswap", payload, "/face-hidden")
    assert_failed(doc, "no_face_detected", "target_url", ("no face",))
