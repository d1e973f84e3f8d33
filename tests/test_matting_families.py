"""`remove_background` with each matting family's signature (scripts/tiny_models_matting.py):
U2Net (7 outputs, 320), ISNet (several outputs, 1024), BiRefNet (one logit output, 1024, and a
dynamic export) and MODNet (dynamic), through the real server. The family is auto-detected
from the signature (or set by `images.matting_family`), and the returned alpha is the model's
first output processed the family's way, computed here from the family's reference recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from ahv.models.matting import guess_family
from scripts.tiny_models_images import make_matting
from scripts.tiny_models_matting import MODELS, make_matting_families
from tests import media as fixtures
from tests.conftest import MediaServer

IMAGENET = (np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: Any) -> Path:
    directory = Path(tmp_path_factory.mktemp("matting-models"))
    make_matting_families(directory)
    make_matting(directory / "plain_1024.onnx", size=1024)
    return directory


def session(models_dir: Path, name: str) -> ort.InferenceSession:
    path = str(models_dir / f"{name}.onnx")
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def reference_alpha(model: ort.InferenceSession, family: str, image: np.ndarray, side: int) -> Any:
    """The family's recipe (rembg / DIS / BiRefNet / MODNet reference code), written out here:
    resize, normalise, run, take the first output, post-process, resize back. An output of
    another family outside [0, 1] is taken for logits (ahv.models.matting)."""
    model_input = model.get_inputs()[0]
    height, width = model_input.shape[2:] if isinstance(model_input.shape[2], int) else (side, side)
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    small = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA).astype(np.float64)
    if family == "modnet":
        x = (small - 127.5) / 127.5
    elif family == "isnet":
        x = small / 255.0 - 0.5
    else:
        x = (small / 255.0 - IMAGENET[0]) / IMAGENET[1]
    blob = x.transpose(2, 0, 1)[None].astype(np.float32)
    first = model.run(None, {model_input.name: blob})[0][0, 0].astype(np.float64)
    if family == "birefnet" or first.min() < 0 or first.max() > 1:
        first = 1.0 / (1.0 + np.exp(-first))
    if family in ("u2net", "isnet"):
        first = (first - first.min()) / (first.max() - first.min())
    matte = cv2.resize(first.astype(np.float32), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(np.clip(matte, 0, 1) * 255), 0, 255), matte


CASES = [
    # model, images.matting_family, the family that must run
    ("u2net_tiny", "auto", "u2net"),
    ("isnet_tiny", "auto", "isnet"),
    ("birefnet_tiny", "auto", "birefnet"),
    ("birefnet_dynamic_tiny", "auto", "birefnet"),
    ("modnet_tiny", "auto", "modnet"),
    # What the signature cannot tell: named in ahv.toml.
    ("birefnet_tiny", "isnet", "isnet"),
    ("plain_1024", "birefnet", "birefnet"),
]
# Another family's recipe gives a visibly different alpha: the comparison can fail.
WRONG = {"u2net": "modnet", "isnet": "u2net", "birefnet": "isnet", "modnet": "birefnet"}


@pytest.mark.parametrize(("model", "configured", "family"), CASES)
async def test_remove_background_with_each_family(
    start_server: Any,
    models_dir: Path,
    media: MediaServer,
    model: str,
    configured: str,
    family: str,
) -> None:
    side = 512  # images.matting_size: the side a dynamic-size model gets
    files = {name: {"file": f"{name}.onnx"} for name in (*MODELS, "plain_1024")}
    api = await start_server(
        models={"dir": str(models_dir), "files": files},
        images={"matting": model, "matting_family": configured, "matting_size": side},
        backends=[{"name": "cpu", "slots": 1, "tasks": ["remove_background"]}],
    )
    image_url = media.add("astronaut.png", fixtures.astronaut_png())
    status, doc, _ = await api.call("POST", "/remove-background", json={"image_url": image_url})
    assert status == 200 and doc["status"] == "succeeded", doc
    meta = doc["result"]["meta"]
    assert meta["family"] == family and meta["model"] == model
    async with api.session.get(doc["result"]["url"]) as response:
        data = await response.read()
    assert data[:4] == b"\x89PNG"
    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    original = cv2.imread(str(fixtures.astronaut_path()), cv2.IMREAD_COLOR)
    assert out.shape == (512, 512, 4) and np.array_equal(out[..., :3], original)
    reference = session(models_dir, model)
    expected, matte = reference_alpha(reference, family, original, side)
    assert np.abs(out[..., 3].astype(int) - expected).max() <= 1
    assert meta["foreground_fraction"] == pytest.approx(
        float(np.clip(matte, 0, 1).mean()), abs=1e-3
    )
    assert 0.02 < meta["foreground_fraction"] < 0.98  # a real cut-out, not all or nothing
    wrong, _ = reference_alpha(reference, WRONG[family], original, side)
    assert np.abs(out[..., 3].astype(int) - wrong).max() > 20


def test_the_first_output_is_the_matte(models_dir: Path) -> None:
    """U2Net's and ISNet's later maps differ from the first: the server's alpha (above) is the
    first one's."""
    for name in ("u2net_tiny", "isnet_tiny"):
        model = session(models_dir, name)
        blob = np.random.default_rng(3).normal(0, 1, model.get_inputs()[0].shape)
        maps = model.run(None, {model.get_inputs()[0].name: blob.astype(np.float32)})
        assert len(maps) > 1 and all(not np.allclose(maps[0], other) for other in maps[1:])


def test_guess_family_from_the_signature(models_dir: Path) -> None:
    expected = {
        "u2net_tiny": "u2net",  # 320, seven outputs
        "isnet_tiny": "isnet",  # input_image, several outputs
        "birefnet_tiny": "birefnet",  # input_image, one output
        "birefnet_dynamic_tiny": "birefnet",  # dynamic, input_image
        "modnet_tiny": "modnet",  # dynamic, input
        "tiny_matting": "u2net",  # 320, one output (a U2Net cut to its fused map)
        "plain_1024": "isnet",  # unknown names, fixed 1024: min–max, the safe guess
    }
    make_matting(models_dir / "tiny_matting.onnx", size=320)
    make_matting(models_dir / "plain_512.onnx", size=512)
    for name, family in {**expected, "plain_512": "modnet"}.items():
        assert guess_family(session(models_dir, name)) == family, name
