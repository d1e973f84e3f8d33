"""`upscale` with `face_restore` through the real server: gray, gray+alpha and RGBA inputs
(research/input-cases.md C04, C06), the restorer named in `result.meta`, and CodeFormer's
two-input signature, whose fidelity weight w is fed 1 − fidelity (ahv.models.superres)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from ahv.models.face.mtcnn import build_mtcnn_models
from ahv.models.face.types import Face
from ahv.models.superres import FaceRestorer
from scripts.tiny_models_images import make_all
from tests import media as fixtures
from tests.conftest import Api, MediaServer

MODELS = ("tiny_sr_x2", "tiny_restorer", "tiny_codeformer")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: Any) -> Path:
    directory = Path(tmp_path_factory.mktemp("restore-models"))
    make_all(directory)
    build_mtcnn_models(directory)
    return directory


def config(models_dir: Path, restorer: str) -> dict[str, Any]:
    return {
        "models": {
            "dir": str(models_dir),
            "files": {name: {"file": f"{name}.onnx"} for name in MODELS},
        },
        "images": {"upscaler": "tiny_sr_x2", "restorer": restorer},
        "backends": [{"name": "cpu", "slots": 2, "tasks": ["upscale"]}],
    }


async def upscale(api: Api, media: MediaServer, data: bytes, **payload: Any) -> tuple[Any, Any]:
    body = {"image_url": media.add(f"in-{len(media.files)}", data), "scale": 2, **payload}
    job = await api.submit("upscale", body)
    doc = await api.wait(job["job_id"], timeout_s=60)
    assert doc["status"] == "succeeded", doc["error"]
    async with api.session.get(doc["result"]["url"]) as response:
        raw = await response.read()
    return doc["result"]["meta"], cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)


def outside_faces(changed: np.ndarray, faces: list[dict[str, Any]], margin: int) -> np.ndarray:
    """`changed` with every face box, grown by its own size plus `margin`, cleared."""
    rest = changed.copy()
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        gx, gy = x2 - x1 + margin, y2 - y1 + margin
        rest[max(0, int(y1 - gy)) : int(y2 + gy) + 1, max(0, int(x1 - gx)) : int(x2 + gx) + 1] = 0
    return rest


KINDS: dict[str, Callable[[], bytes]] = {
    "gray": fixtures.gray_png,  # C04: mode L
    "gray_alpha": fixtures.gray_alpha_png,  # C04: mode LA
    "rgba": fixtures.rgba_png,  # C06: opaque disc, 50% band, transparent elsewhere
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_face_restore_on_gray_and_alpha_inputs(
    start_server: Any, models_dir: Path, media: MediaServer, kind: str
) -> None:
    api = await start_server(**config(models_dir, "tiny_restorer"))
    data = KINDS[kind]()
    plain_meta, plain = await upscale(api, media, data)
    meta, restored = await upscale(api, media, data, face_restore=True, fidelity=1)
    faces = meta["faces_restored"]
    assert faces and meta["restorer"] == "tiny_restorer"
    assert "restorer" not in plain_meta and "faces_restored" not in plain_meta
    alpha = kind != "gray"
    assert meta["has_alpha"] is alpha and meta["format"] == ("png" if alpha else "jpg")
    assert restored.shape == plain.shape == (meta["height"], meta["width"], 4 if alpha else 3)
    if alpha:
        # The alpha is the enlarged input's, untouched by the restore.
        assert np.array_equal(restored[..., 3], plain[..., 3])
        assert restored[..., 3].min() == 0 and restored[..., 3].max() == 255
    colour = restored[..., :3].astype(int)
    if kind.startswith("gray"):
        # Gray in, gray out: the three colour channels stay equal (JPEG: within its rounding).
        spread = np.abs(colour - colour[..., :1]).max()
        assert spread <= (0 if alpha else 2), spread
    changed = np.any(restored[..., :3] != plain[..., :3], axis=2)
    assert changed.sum() > 500  # the faces were restored...
    assert not outside_faces(changed, faces, 0 if alpha else 16).any()  # ...and only they


class RecordingSession:
    """A real ONNX Runtime session whose `run` feeds are kept (copied) as they go through."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.feeds: list[dict[str, np.ndarray]] = []

    def get_inputs(self) -> Any:
        return self.session.get_inputs()

    def run(self, output_names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.feeds.append({name: np.array(value) for name, value in feeds.items()})
        return self.session.run(output_names, feeds)


def test_codeformer_is_fed_w_as_one_minus_fidelity(models_dir: Path) -> None:
    session = ort.InferenceSession(
        str(models_dir / "tiny_codeformer.onnx"), providers=["CPUExecutionProvider"]
    )
    proxy = RecordingSession(session)
    restorer = FaceRestorer(proxy)
    assert restorer.takes_weight
    image = cv2.imread(str(fixtures.astronaut_path()), cv2.IMREAD_COLOR)
    landmarks = np.array([[200, 120], [250, 120], [225, 150], [205, 175], [245, 175]], np.float32)
    face = Face(np.array([180, 90, 270, 200], np.float32), 0.99, landmarks)
    results = {}
    for fidelity in (0.25, 0.8):
        results[fidelity] = restorer.restore(image, [face], fidelity)
        weight = proxy.feeds[-1]["weight"]
        assert weight.dtype == np.float64 and weight.shape == (1,)
        assert weight[0] == pytest.approx(1.0 - fidelity)
        assert proxy.feeds[-1]["input"].shape == (1, 3, 512, 512)
    assert not np.array_equal(results[0.25], results[0.8])
    # GFPGAN-family models take the crop alone.
    plain = ort.InferenceSession(
        str(models_dir / "tiny_restorer.onnx"), providers=["CPUExecutionProvider"]
    )
    assert not FaceRestorer(plain).takes_weight


def opaque_png(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGBA").save(buffer, "PNG")
        return buffer.getvalue()


async def test_codeformer_fidelity_through_the_server(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    """The tiny CodeFormer outputs crop·(2w − 1). Fed w = 1 − f and blended by f, a face moves
    from the plain upscale by 2f²·crop (in [-1, 1] units): ×9 from f = 0.3 to f = 0.9. Had w
    stayed fixed, it would move by f·(1 − 2w)·crop, only ×3."""
    api = await start_server(**config(models_dir, "tiny_codeformer"))
    data = opaque_png(fixtures.astronaut_png())
    _, plain = await upscale(api, media, data)
    moved = {}
    for fidelity in (0.3, 0.9):
        meta, out = await upscale(api, media, data, face_restore=True, fidelity=fidelity)
        assert meta["restorer"] == "tiny_codeformer" and meta["faces_restored"]
        assert np.array_equal(out[..., 3], plain[..., 3])
        moved[fidelity] = float(np.abs(out[..., :3].astype(int) - plain[..., :3]).sum())
    assert moved[0.3] > 0
    ratio = moved[0.9] / moved[0.3]
    assert 7.0 < ratio < 11.0, ratio
