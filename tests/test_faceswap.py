"""`faceswap` and `faceswap_multi` through the real server: the real MTCNN detector on real
photos, tiny ArcFace and inswapper models with the real signatures, real webhooks."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from ahv.models.face.mtcnn import build_mtcnn_models
from scripts.make_test_models import make_test_models
from tests import media as fixtures
from tests.conftest import Api, MediaServer, Receiver


def t1_path() -> Path:
    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "data" / "images" / "t1.jpg"


def lossless(path_or_bytes: Path | bytes) -> bytes:
    """The photo as an opaque RGBA PNG: the result then comes back as a PNG, so pixels away
    from the swapped faces can be compared exactly."""
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGBA").save(buffer, "PNG")
        return buffer.getvalue()


def constant_classifier(path: Path, probabilities: list[float]) -> None:
    """A tiny 'NSFW classifier' whose output is forced: N×3×224×224 → the given scores."""
    scores = helper.make_tensor("scores", TensorProto.FLOAT, [1, 2], probabilities)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["nothing", "scores"], ["probabilities"]),
        ],
        "constant_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        [scores, helper.make_tensor("zero", TensorProto.FLOAT, [1, 1], [0.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what ONNX Runtime reads, whatever the installed onnx writes
    onnx.save(model, path)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: Any) -> Path:
    directory = Path(tmp_path_factory.mktemp("models"))
    make_test_models(directory)
    build_mtcnn_models(directory)
    constant_classifier(directory / "nsfw_yes.onnx", [0.1, 0.9])
    return directory


def face_config(models_dir: Path, **faceswap: Any) -> dict[str, Any]:
    files = {
        name: {"file": f"{name}.onnx"}
        for name in ("det_10g", "w600k_r50", "inswapper_128", "nsfw_yes")
    }
    return {
        "models": {"dir": str(models_dir), "files": files},
        "faceswap": faceswap,
        "backends": [
            {"name": "cpu", "slots": 2, "tasks": ["faceswap", "faceswap_multi", "upscale"]}
        ],
    }


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


async def result_pixels(api: Api, doc: dict[str, Any]) -> np.ndarray:
    async with api.session.get(doc["result"]["url"]) as response:
        assert response.status == 200
        return decode(await response.read())


def changed_outside(before: np.ndarray, after: np.ndarray, boxes: list[list[float]]) -> int:
    """Pixels that differ outside the given face boxes (grown by the paste-back margin)."""
    changed = np.any(before != after, axis=2)
    for x1, y1, x2, y2 in boxes:
        # The aligned 128 px crop reaches about 0.8 box sizes past the box (as insightface's).
        grow_x, grow_y = (x2 - x1) * 1.0, (y2 - y1) * 1.0
        changed[
            max(0, int(y1 - grow_y)) : int(y2 + grow_y) + 1,
            max(0, int(x1 - grow_x)) : int(x2 + grow_x) + 1,
        ] = False
    return int(changed.sum())


async def test_multi_swap_changes_the_two_chosen_faces_only(
    start_server: Any, models_dir: Path, media: MediaServer, receiver: Receiver
) -> None:
    api = await start_server(**face_config(models_dir))
    group = lossless(t1_path())
    target_url = media.add("group.png", group)
    sources = [
        media.add("astro.png", fixtures.astronaut_png()),
        media.add("t1.jpg", t1_path().read_bytes()),
    ]
    await api.submit(
        "faceswap_multi",
        {
            "target_url": target_url,
            "source_urls": sources,
            "swap_faces_index": [0, 5],
            "target_faces_index": [1, 4],
            "upscale": 0,
            "max_side": 1280,
        },
        webhook_url=receiver.url("/faces"),
    )
    (delivery,) = await receiver.wait_for("/faces", timeout_s=60)
    body = delivery.json
    assert body["status"] == "succeeded", body["error"]
    meta = body["result"]["meta"]
    faces = meta["faces"]["target"]
    assert [f["index"] for f in faces] == list(range(6))
    assert [len(s) for s in meta["faces"]["sources"]] == [1, 6]
    assert meta["swapped"] == [
        {"source": 0, "source_face": 0, "target_face": 1},
        {"source": 1, "source_face": 5, "target_face": 4},
    ]
    before = decode(group)
    after = await result_pixels(api, body)
    assert after.shape == before.shape
    chosen = [faces[1]["box"], faces[4]["box"]]
    assert changed_outside(before, after, chosen) == 0
    for box in chosen:
        x1, y1, x2, y2 = (int(v) for v in box)
        assert np.any(before[y1:y2, x1:x2] != after[y1:y2, x1:x2])
    for other in (0, 2, 3, 5):
        x1, y1, x2, y2 = (int(v) for v in faces[other]["box"])
        center = (
            slice((y1 + y2) // 2 - 2, (y1 + y2) // 2 + 2),
            slice((x1 + x2) // 2 - 2, (x1 + x2) // 2 + 2),
        )
        assert np.array_equal(before[center], after[center])


async def test_single_swap_puts_the_source_on_every_face(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**face_config(models_dir))
    job = await api.submit(
        "faceswap",
        {
            "target_url": media.add("group.jpg", t1_path().read_bytes()),
            "source_url": media.add("astro.png", fixtures.astronaut_png()),
        },
    )
    doc = await api.wait(job["job_id"], timeout_s=60)
    assert doc["status"] == "succeeded", doc["error"]
    meta = doc["result"]["meta"]
    assert [s["target_face"] for s in meta["swapped"]] == list(range(6))
    # max_side 1080 shrinks the 1280×886 photo, then upscale=1 (the default) doubles it.
    assert (meta["width"], meta["height"]) == (2160, 1496)
    assert meta["upscaled"] is True and meta["method"] == "lanczos"


async def test_scrfd_detector_and_direct_endpoint(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**face_config(models_dir, detector="det_10g"))
    body = {
        "target_url": media.add("astro.png", fixtures.astronaut_png()),
        "source_urls": [media.add("astro2.png", fixtures.astronaut_png())],
        "upscale": 0,
    }
    status, doc, _ = await api.call("POST", "/faceswap", json=body)
    assert status == 200
    assert doc["task"] == "faceswap_multi"
    assert doc["status"] in ("succeeded", "failed")
    if doc["status"] == "failed":  # random-weight SCRFD may find no face: a clean error then
        assert doc["error"]["code"] in ("no_face_detected", "face_index_out_of_range")
    else:
        assert doc["result"]["meta"]["detector"] == "det_10g"


@pytest.mark.parametrize(
    ("where", "code", "word"),
    [
        ("target", "no_face_detected", "target_url"),
        ("source", "no_face_detected", "source_url"),
        ("index", "face_index_out_of_range", "6 faces detected in target_url"),
    ],
)
async def test_face_errors(
    start_server: Any, models_dir: Path, media: MediaServer, where: str, code: str, word: str
) -> None:
    api = await start_server(**face_config(models_dir))
    blank = cv2.imencode(".png", np.full((300, 400, 3), 128, np.uint8))[1].tobytes()
    group = t1_path().read_bytes()
    payload: dict[str, Any] = {
        "target_url": media.add("t.bin", blank if where == "target" else group),
        "source_url": media.add("s.bin", blank if where == "source" else fixtures.astronaut_png()),
    }
    if where == "index":
        payload["target_faces_index"] = [9]
    job = await api.submit("faceswap", payload)
    doc = await api.wait(job["job_id"], timeout_s=60)
    assert doc["status"] == "failed" and doc["error"]["code"] == code
    assert word in doc["error"]["message"]


async def test_index_problems_are_refused_at_submit(start_server: Any, models_dir: Path) -> None:
    api = await start_server(**face_config(models_dir))
    status, body, _ = await api.call(
        "POST",
        "/v1/jobs",
        json={
            "task": "faceswap",
            "payload": {
                "target_url": "http://127.0.0.1:9/t.jpg",
                "source_url": "http://127.0.0.1:9/s.jpg",
                "target_faces_index": [-1],
            },
        },
    )
    assert status == 422 and body["error"]["code"] == "face_index_out_of_range"
    assert "target_faces_index[0]" in body["error"]["message"]


async def test_missing_model_fails_with_model_unavailable(
    start_server: Any, tmp_path: Path, models_dir: Path, media: MediaServer
) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    api = await start_server(**face_config(empty))
    _, diag, _ = await api.call("GET", "/diag/backends")
    unavailable = diag["backends"][0]["unavailable_tasks"]
    assert "faceswap" in unavailable and "w600k_r50" in unavailable["faceswap"]
    job = await api.submit(
        "faceswap",
        {
            "target_url": media.add("g.jpg", t1_path().read_bytes()),
            "source_url": media.add("a.png", fixtures.astronaut_png()),
        },
    )
    doc = await api.wait(job["job_id"], timeout_s=60)
    assert doc["status"] == "failed" and doc["error"]["code"] == "model_unavailable"
    assert "ahv models fetch" in doc["error"]["message"]


async def test_content_filter_rejects(
    start_server: Any, models_dir: Path, media: MediaServer, tmp_path: Path
) -> None:
    api = await start_server(**face_config(models_dir, nsfw_model="nsfw_yes"))
    payload = {
        "target_url": media.add("g.jpg", t1_path().read_bytes()),
        "source_url": media.add("a.png", fixtures.astronaut_png()),
    }
    doc = await api.wait((await api.submit("faceswap", payload))["job_id"], timeout_s=60)
    assert doc["status"] == "rejected"
    assert doc["error"]["code"] == "nsfw_blocked" and "target_url" in doc["error"]["message"]
    relaxed = await start_server(
        **face_config(models_dir, nsfw_model="nsfw_yes", nsfw_threshold=0.95),
        server={"data_dir": str(tmp_path / "second")},
    )
    doc = await relaxed.wait((await relaxed.submit("faceswap", payload))["job_id"], timeout_s=60)
    assert doc["status"] == "succeeded", doc["error"]


async def test_a_model_removed_after_loading_fails_the_next_job(
    start_server: Any, models_dir: Path, media: MediaServer, tmp_path: Path
) -> None:
    import shutil

    own = tmp_path / "own-models"
    shutil.copytree(models_dir, own)
    api = await start_server(**face_config(own))
    payload = {
        "target_url": media.add("a1.png", fixtures.astronaut_png()),
        "source_url": media.add("a2.png", fixtures.astronaut_png()),
        "upscale": 0,
    }
    first = await api.wait((await api.submit("faceswap", payload))["job_id"], timeout_s=60)
    assert first["status"] == "succeeded", first["error"]
    (own / "w600k_r50.onnx").unlink()
    second = await api.wait((await api.submit("faceswap", payload))["job_id"], timeout_s=60)
    assert second["status"] == "failed" and second["error"]["code"] == "model_unavailable"
    assert "w600k_r50" in second["error"]["message"]


async def test_output_limit_is_checked_before_the_models_run(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**face_config(models_dir), limits={"max_output_pixels": 1_000_000})
    payload = {
        "target_url": media.add("g.jpg", t1_path().read_bytes()),
        "source_url": media.add("a.png", fixtures.astronaut_png()),
    }
    doc = await api.wait((await api.submit("faceswap", payload))["job_id"], timeout_s=60)
    assert doc["status"] == "failed" and doc["error"]["code"] == "image_too_large"
    assert "upscale" in doc["error"]["message"] and "2160x1496" in doc["error"]["message"]
