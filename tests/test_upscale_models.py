"""`upscale` with super-resolution models: tiles run in batches of `images.tile_batch` on a
dynamic-batch model and one by one on a fixed-batch one (counted on the real ONNX Runtime
session through a recording proxy), the x4 model through the server, and the branch that
shrinks the input first when the model's own result would pass the output limit."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from ahv.models.superres import SuperResolution
from scripts.tiny_models_images import make_superres
from tests import media as fixtures
from tests.conftest import Api, MediaServer


class RecordingSession:
    """Wraps a real ONNX Runtime session: every `run` goes to it, and its feeds' shapes are
    kept, in order."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.runs: list[dict[str, tuple[int, ...]]] = []

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def get_outputs(self) -> Any:
        return self.session.get_outputs()

    def run(self, output_names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.runs.append({name: tuple(value.shape) for name, value in feeds.items()})
        return self.session.run(output_names, feeds)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: Any) -> Path:
    directory = Path(tmp_path_factory.mktemp("sr-models"))
    make_superres(directory / "sr_x2.onnx", scale=2)
    make_superres(directory / "sr_x4.onnx", scale=4)
    make_superres(directory / "sr_x2_batch1.onnx", scale=2, fixed_batch=True)
    return directory


def recording(models_dir: Path, name: str) -> RecordingSession:
    path = str(models_dir / f"{name}.onnx")
    return RecordingSession(ort.InferenceSession(path, providers=["CPUExecutionProvider"]))


def noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_tiles_run_in_batches_on_a_dynamic_batch_model(models_dir: Path, batch: int) -> None:
    proxy = recording(models_dir, "sr_x2")
    model = SuperResolution(proxy, tile=64, overlap=8, batch=batch)
    assert model.batch == batch and model.scale == 2
    assert proxy.runs == [{"input": (1, 3, 16, 16)}]  # the probe that learned the scale
    proxy.runs.clear()
    image = noise(130, 150)  # cores of 48 px: 3 rows × 4 columns = 12 tiles
    out = model.upscale(image)
    assert np.array_equal(out, cv2.resize(image, (300, 260), interpolation=cv2.INTER_NEAREST))
    sizes = [run["input"][0] for run in proxy.runs]
    assert sizes == [min(batch, 12 - i) for i in range(0, 12, batch)]
    assert all(run["input"][1:] == (3, 64, 64) for run in proxy.runs)


def test_a_fixed_batch_model_gets_one_tile_per_run(models_dir: Path) -> None:
    proxy = recording(models_dir, "sr_x2_batch1")
    model = SuperResolution(proxy, tile=64, overlap=8, batch=4)
    assert model.batch == 1
    proxy.runs.clear()
    image = noise(130, 150)
    out = model.upscale(image)
    assert np.array_equal(out, cv2.resize(image, (300, 260), interpolation=cv2.INTER_NEAREST))
    assert len(proxy.runs) == 12 and all(run["input"] == (1, 3, 64, 64) for run in proxy.runs)


# -- through the server ----------------------------------------------------------------------


def server_config(models_dir: Path, upscaler: str, **limits: Any) -> dict[str, Any]:
    files = {name: {"file": f"{name}.onnx"} for name in ("sr_x2", "sr_x4")}
    config: dict[str, Any] = {
        "models": {"dir": str(models_dir), "files": files},
        "images": {"upscaler": upscaler, "tile_px": 128, "tile_overlap_px": 8},
        "backends": [{"name": "cpu", "slots": 1, "tasks": ["upscale"]}],
    }
    if limits:
        config["limits"] = limits
    return config


def opaque_png(rgb: np.ndarray) -> bytes:
    """Opaque RGBA: the result is a lossless PNG, so pixels can be compared exactly."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("RGBA").save(buffer, "PNG")
    return buffer.getvalue()


async def upscale(api: Api, media: MediaServer, data: bytes, **payload: Any) -> tuple[Any, Any]:
    body = {"image_url": media.add(f"in-{len(media.files)}.png", data), **payload}
    status, doc, _ = await api.call("POST", "/upscale", json=body)
    assert status == 200 and doc["status"] == "succeeded", doc
    async with api.session.get(doc["result"]["url"]) as response:
        data = await response.read()
    assert data[:4] == b"\x89PNG"
    return doc["result"]["meta"], cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def crop(width: int, height: int) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(fixtures.astronaut_rgb())[40 : 40 + height, :width])


async def test_the_x4_model_through_the_server(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**server_config(models_dir, "sr_x4"))
    rgb = crop(300, 200)
    bgr = rgb[..., ::-1]
    meta, out = await upscale(api, media, opaque_png(rgb), scale=4)
    assert meta["method"] == "sr_x4" and (meta["width"], meta["height"]) == (1200, 800)
    assert np.array_equal(
        out[..., :3], cv2.resize(bgr, (1200, 800), interpolation=cv2.INTER_NEAREST)
    )
    assert out[..., 3].min() == 255
    # ×2 asked of the x4 model: its ×4 result, brought down to ×2 (area averaging of the
    # model's 2×2 blocks of equal pixels: exactly the ×2 nearest-neighbour picture).
    meta, out = await upscale(api, media, opaque_png(rgb), scale=2)
    assert meta["method"] == "sr_x4" and (meta["width"], meta["height"]) == (600, 400)
    assert np.array_equal(
        out[..., :3], cv2.resize(bgr, (600, 400), interpolation=cv2.INTER_NEAREST)
    )


async def test_a_model_result_over_the_limit_shrinks_the_input_first(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    # ×2 of 256×256 is 512×512 (262144 pixels, under the limit); the x4 model alone would
    # make 1024×1024 (1048576, over it), so the input is shrunk to 128×128 first.
    api = await start_server(**server_config(models_dir, "sr_x4", max_output_pixels=500_000))
    rgb = crop(256, 256)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    meta, out = await upscale(api, media, opaque_png(rgb), scale=2)
    assert meta["method"] == "sr_x4" and (meta["width"], meta["height"]) == (512, 512)
    shrunk = cv2.resize(bgr, (128, 128), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(shrunk, (512, 512), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(out[..., :3], expected)
    # Without the shrink the result would have been the ×2 nearest-neighbour picture.
    unshrunk = cv2.resize(bgr, (512, 512), interpolation=cv2.INTER_NEAREST)
    assert np.abs(out[..., :3].astype(int) - unshrunk).mean() > 3
    # With room for the model's own result, the input is not shrunk.
    roomy = await start_server(
        **server_config(models_dir, "sr_x4", max_output_pixels=2_000_000),
        server={"data_dir": str(models_dir / "roomy-data")},
    )
    _, out = await upscale(roomy, media, opaque_png(rgb), scale=2)
    assert np.array_equal(out[..., :3], unshrunk)
