"""Model-backed image tasks: `remove_background` (matting) and `upscale` with a
super-resolution model and face restore, through the real server with tiny ONNX models of
the real signatures, plus unit tests of the tiling."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from ahv.errors import AhvError
from ahv.models.face.mtcnn import build_mtcnn_models
from ahv.models.matting import Matting
from ahv.models.superres import FaceRestorer, SuperResolution
from ahv.tasks.background import parse_color
from scripts.tiny_models_images import make_all, make_superres
from tests import media as fixtures
from tests.conftest import Api, MediaServer

MODELS = ("tiny_matting", "tiny_sr_x2", "tiny_sr_x4", "tiny_restorer")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: Any) -> Path:
    directory = Path(tmp_path_factory.mktemp("image-models"))
    make_all(directory)
    build_mtcnn_models(directory)
    return directory


def image_config(models_dir: Path, **images: Any) -> dict[str, Any]:
    return {
        "models": {
            "dir": str(models_dir),
            "files": {name: {"file": f"{name}.onnx"} for name in MODELS},
        },
        "images": images,
        "backends": [{"name": "cpu", "slots": 2, "tasks": ["upscale", "remove_background"]}],
    }


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def opaque_rgba_png(data: bytes) -> bytes:
    """The photo as an opaque RGBA PNG: results come back as lossless PNGs."""
    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGBA").save(buffer, "PNG")
        return buffer.getvalue()


async def result_pixels(api: Api, doc: dict[str, Any]) -> np.ndarray:
    async with api.session.get(doc["result"]["url"]) as response:
        assert response.status == 200
        return decode(await response.read())


async def run(api: Api, media: MediaServer, task: str, data: bytes, **payload: Any) -> Any:
    image_url = media.add(f"in-{len(media.files)}", data)
    job = await api.submit(task, {"image_url": image_url, **payload})
    return await api.wait(job["job_id"], timeout_s=60)


def astronaut_matte(models_dir: Path) -> np.ndarray:
    pixels = cv2.imread(str(fixtures.astronaut_path()), cv2.IMREAD_COLOR)
    return Matting(session(models_dir / "tiny_matting.onnx")).matte(pixels)


# -- remove_background ------------------------------------------------------------------------


async def test_remove_background_gives_an_rgba_cut_out(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**image_config(models_dir, matting="tiny_matting"))
    image_url = media.add("a.png", fixtures.astronaut_png())
    status, doc, _ = await api.call("POST", "/remove-background", json={"image_url": image_url})
    assert status == 200 and doc["status"] == "succeeded", doc
    meta = doc["result"]["meta"]
    assert doc["result"]["filename"].endswith(".png")
    assert (meta["width"], meta["height"]) == (512, 512)
    assert meta["model"] == "tiny_matting" and meta["family"] == "u2net"
    assert 0 < meta["foreground_fraction"] < 1
    pixels = await result_pixels(api, doc)
    assert pixels.shape == (512, 512, 4)
    matte = astronaut_matte(models_dir)
    assert meta["foreground_fraction"] == round(float(matte.mean()), 4)
    expected = np.clip(np.rint(matte * 255), 0, 255)
    assert np.abs(pixels[..., 3].astype(int) - expected).max() <= 1
    assert pixels[..., 3].min() == 0 and pixels[..., 3].max() == 255
    original = cv2.imread(str(fixtures.astronaut_path()), cv2.IMREAD_COLOR)
    assert np.array_equal(pixels[..., :3], original)


async def test_bg_color_gives_a_jpeg_over_that_colour(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**image_config(models_dir, matting="tiny_matting"))
    doc = await run(api, media, "remove_background", fixtures.astronaut_png(), bg_color="#00ff00")
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["result"]["filename"].endswith(".jpg")
    pixels = await result_pixels(api, doc)
    assert pixels.shape == (512, 512, 3)
    matte = astronaut_matte(models_dir)
    background = cv2.erode((matte < 0.01).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert background.sum() > 1000
    mean_bgr = pixels[background].astype(float).mean(axis=0)
    assert np.abs(mean_bgr - [0, 255, 0]).max() < 6
    doc = await run(api, media, "remove_background", fixtures.astronaut_png(), bg_color="0,0,255")
    pixels = await result_pixels(api, doc)
    assert np.abs(pixels[background].astype(float).mean(axis=0) - [255, 0, 0]).max() < 6


@pytest.mark.parametrize("bad", ["green", "#12345", "256,0,0", "1,2", "#gg0000"])
async def test_a_bad_bg_color_is_refused_at_submit(
    start_server: Any, models_dir: Path, bad: str
) -> None:
    api = await start_server(**image_config(models_dir, matting="tiny_matting"))
    status, body, _ = await api.call(
        "POST",
        "/v1/jobs",
        json={
            "task": "remove_background",
            "payload": {"image_url": "http://127.0.0.1:1/a.png", "bg_color": bad},
        },
    )
    assert status == 422, body
    assert "bg_color" in body["error"]["message"]


def test_parse_color() -> None:
    assert parse_color("#ff8000") == (0, 128, 255)
    assert parse_color(" 1, 2 ,3 ") == (3, 2, 1)
    with pytest.raises(AhvError):
        parse_color("1,2,3,4")


async def test_rgba_input_keeps_its_own_transparency(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**image_config(models_dir, matting="tiny_matting"))
    data = fixtures.rgba_png()
    doc = await run(api, media, "remove_background", data)
    assert doc["status"] == "succeeded", doc["error"]
    pixels = await result_pixels(api, doc)
    source = decode(data)
    assert pixels.shape == source.shape == (256, 256, 4)
    input_alpha = source[..., 3]
    assert pixels[..., 3][input_alpha == 0].max() == 0
    assert pixels[..., 3][input_alpha == 128].max() <= 129
    # The matting model sees the picture as shown: transparent pixels over flat gray 114.
    weight = input_alpha[..., None].astype(np.int64)
    shown = ((source[..., :3] * weight + 114 * (255 - weight) + 127) // 255).astype(np.uint8)
    matte = Matting(session(models_dir / "tiny_matting.onnx")).matte(shown)
    expected = np.rint(matte * (input_alpha / 255.0) * 255)
    assert np.abs(pixels[..., 3].astype(int) - expected).max() <= 1


async def test_exif_rotated_input_comes_out_upright(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**image_config(models_dir, matting="tiny_matting"))
    doc = await run(api, media, "remove_background", fixtures.exif_rotated_jpeg(6))
    assert doc["status"] == "succeeded", doc["error"]
    width, height = fixtures.EXIF_UPRIGHT_SIZE
    pixels = await result_pixels(api, doc)
    assert pixels.shape == (height, width, 4)
    assert (doc["result"]["meta"]["width"], doc["result"]["meta"]["height"]) == (width, height)
    corner = pixels[10 : fixtures.EXIF_MARKER, 10 : fixtures.EXIF_MARKER, :3]
    blue, green, red = corner.reshape(-1, 3).mean(0)
    assert red > 150 and green < 90 and blue < 90  # the red marker is top-left, upright


async def test_remove_background_without_a_model(
    start_server: Any, models_dir: Path, media: MediaServer, tmp_path: Path
) -> None:
    api = await start_server(**image_config(models_dir))
    # No matting model set: the task is unavailable in /diag/backends and a submit is
    # refused at once, on both endpoints, instead of a job that can only fail.
    _, diag, _ = await api.call("GET", "/diag/backends")
    assert "images.matting" in diag["backends"][0]["unavailable_tasks"]["remove_background"]
    payload = {"image_url": media.add("a.png", b"x")}
    for message in await api.refused_on_both(
        "remove_background", "/remove-background", payload, "model_unavailable"
    ):
        assert "images.matting" in message
    _, listed, _ = await api.call("GET", "/v1/jobs")
    assert listed["jobs"] == []
    empty = tmp_path / "no-models"
    empty.mkdir()
    missing = await start_server(
        **image_config(empty, matting="tiny_matting"),
        server={"data_dir": str(tmp_path / "second")},
    )
    _, diag, _ = await missing.call("GET", "/diag/backends")
    assert "tiny_matting" in diag["backends"][0]["unavailable_tasks"]["remove_background"]
    doc = await run(missing, media, "remove_background", fixtures.astronaut_png())
    assert doc["status"] == "failed" and doc["error"]["code"] == "model_unavailable"
    assert "tiny_matting" in doc["error"]["message"]


def test_matting_families(models_dir: Path, tmp_path: Path) -> None:
    pixels = cv2.imread(str(fixtures.astronaut_path()), cv2.IMREAD_COLOR)
    from scripts.tiny_models_images import make_matting

    make_matting(tmp_path / "m1024.onnx", size=1024)
    matting = Matting(session(tmp_path / "m1024.onnx"))
    assert matting.family == "isnet" and matting.input_size == (1024, 1024)
    matte = matting.matte(pixels)
    assert matte.shape == (512, 512) and matte.dtype == np.float32
    assert matte.min() == 0.0 and matte.max() == pytest.approx(1.0)
    modnet = Matting(session(tmp_path / "m1024.onnx"), family="modnet").matte(pixels)
    assert 0.0 <= modnet.min() and modnet.max() <= 1.0 and not np.allclose(modnet, matte)
    with pytest.raises(ValueError):
        Matting(session(tmp_path / "m1024.onnx"), family="deeplab")


# -- upscale with a model --------------------------------------------------------------------


def test_tiled_output_equals_untiled(models_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (251, 333, 3), dtype=np.uint8)
    image[60:200, 40:300] = cv2.GaussianBlur(image[60:200, 40:300], (0, 0), 3)
    make_superres(tmp_path / "linear_x2.onnx", scale=2, mode="linear")
    for name in ("tiny_sr_x2.onnx", "tiny_sr_x4.onnx"):
        model = session(models_dir / name)
        tiled = SuperResolution(model, tile=64, overlap=8, batch=3).upscale(image)
        whole = SuperResolution(model, tile=512, overlap=8).upscale(image)
        scale = 2 if "x2" in name else 4
        assert tiled.shape == (251 * scale, 333 * scale, 3)
        assert np.array_equal(tiled, whole)
        nearest = cv2.resize(image, (333 * scale, 251 * scale), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(tiled, nearest)
    linear = session(tmp_path / "linear_x2.onnx")
    one_by_one = SuperResolution(linear, tile=64, overlap=8, batch=1).upscale(image)
    tiled = SuperResolution(linear, tile=64, overlap=8, batch=4).upscale(image)
    whole = SuperResolution(linear, tile=512, overlap=8).upscale(image)
    assert np.abs(tiled.astype(int) - whole).max() <= 1
    assert np.array_equal(one_by_one, tiled)


def test_fixed_size_model_and_progress(tmp_path: Path) -> None:
    make_superres(tmp_path / "fixed.onnx", scale=2, dynamic=False)
    model = SuperResolution(session(tmp_path / "fixed.onnx"), tile=256, overlap=8)
    assert model.scale == 2 and model.tile == (64, 64) and model.batch == 1
    image = np.random.default_rng(1).integers(0, 256, (50, 150, 3), dtype=np.uint8)
    seen: list[float] = []
    out = model.upscale(image, progress=seen.append)
    assert np.array_equal(out, cv2.resize(image, (300, 100), interpolation=cv2.INTER_NEAREST))
    assert seen and seen[-1] == 1.0


async def test_upscale_with_a_model(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(
        **image_config(models_dir, upscaler="tiny_sr_x2", tile_px=96, tile_overlap_px=8)
    )
    data = opaque_rgba_png(fixtures.astronaut_png())
    doc = await run(api, media, "upscale", data, scale=2)
    assert doc["status"] == "succeeded", doc["error"]
    meta = doc["result"]["meta"]
    assert meta["method"] == "tiny_sr_x2" and (meta["width"], meta["height"]) == (1024, 1024)
    pixels = await result_pixels(api, doc)
    source = decode(data)
    assert np.array_equal(pixels, cv2.resize(source, (1024, 1024), interpolation=cv2.INTER_NEAREST))
    doc = await run(api, media, "upscale", fixtures.astronaut_png(), scale=4)
    assert doc["status"] == "succeeded", doc["error"]
    meta = doc["result"]["meta"]
    assert meta["method"] == "tiny_sr_x2" and (meta["width"], meta["height"]) == (2048, 2048)
    assert (await result_pixels(api, doc)).shape == (2048, 2048, 3)


async def test_output_limit_is_checked_before_the_model_runs(
    start_server: Any, tmp_path: Path, media: MediaServer
) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    # The upscaler's file is missing: had the model been loaded first, this would be
    # model_unavailable.
    api = await start_server(
        **image_config(empty, upscaler="tiny_sr_x2"), limits={"max_output_pixels": 1_000_000}
    )
    doc = await run(api, media, "upscale", fixtures.astronaut_png(), scale=4)
    assert doc["status"] == "failed" and doc["error"]["code"] == "image_too_large"
    assert "2048x2048" in doc["error"]["message"]


async def test_face_restore_needs_a_restorer(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**image_config(models_dir, upscaler="tiny_sr_x2"))
    # Refused at submit on both endpoints (not a job that can only fail), naming the field and
    # the setting; upscale itself stays available.
    payload = {"image_url": media.add("a.png", fixtures.astronaut_png()), "face_restore": True}
    for message in await api.refused_on_both("upscale", "/upscale", payload, "model_unavailable"):
        assert message.startswith("payload.face_restore") and "images.restorer" in message
    _, listed, _ = await api.call("GET", "/v1/jobs")
    assert listed["jobs"] == []
    _, diag, _ = await api.call("GET", "/diag/backends")
    assert "upscale" not in diag["backends"][0]["unavailable_tasks"]
    doc = await run(api, media, "upscale", fixtures.astronaut_png())
    assert doc["status"] == "succeeded", doc["error"]


async def test_face_restore_changes_only_the_faces(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(
        **image_config(models_dir, upscaler="tiny_sr_x2", restorer="tiny_restorer")
    )
    data = opaque_rgba_png(fixtures.astronaut_png())
    plain = await run(api, media, "upscale", data, scale=2)
    restored = await run(api, media, "upscale", data, scale=2, face_restore=True, fidelity=1)
    untouched = await run(api, media, "upscale", data, scale=2, face_restore=True, fidelity=0)
    for doc in (plain, restored, untouched):
        assert doc["status"] == "succeeded", doc["error"]
    faces = restored["result"]["meta"]["faces_restored"]
    assert len(faces) >= 1
    before = await result_pixels(api, plain)
    after = await result_pixels(api, restored)
    assert np.array_equal(await result_pixels(api, untouched), before)
    changed = np.any(before != after, axis=2)
    assert changed.sum() > 1000
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        grow_x, grow_y = (x2 - x1) * 1.0, (y2 - y1) * 1.0
        changed[
            max(0, int(y1 - grow_y)) : int(y2 + grow_y) + 1,
            max(0, int(x1 - grow_x)) : int(x2 + grow_x) + 1,
        ] = False
    assert changed.sum() == 0


def test_face_restorer_fidelity(models_dir: Path) -> None:
    from ahv.models.face.types import Face

    restorer = FaceRestorer(session(models_dir / "tiny_restorer.onnx"))
    image = cv2.imread(str(fixtures.astronaut_path()), cv2.IMREAD_COLOR)
    landmarks = np.array(
        [[200, 120], [250, 120], [225, 150], [205, 175], [245, 175]], dtype=np.float32
    )
    face = Face(np.array([180, 90, 270, 200], np.float32), 0.99, landmarks)
    assert np.array_equal(restorer.restore(image, [face], 0.0), image)
    full = restorer.restore(image, [face], 1.0)
    half = restorer.restore(image, [face], 0.5)
    diff_full = np.abs(full.astype(int) - image).sum()
    diff_half = np.abs(half.astype(int) - image).sum()
    assert 0 < diff_half < diff_full
