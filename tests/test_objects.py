"""`scan_objects` and `remove_object` through the real server, with tiny YOLO and LaMa models of
the real signatures (scripts/tiny_models_objects.py), plus unit tests of the YOLO decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from ahv.errors import AhvError
from ahv.models.inpaint import LamaInpainter, classical_inpaint
from ahv.models.yolo import (
    Letterbox,
    YoloDetector,
    check_layout,
    decode_output,
    letterbox,
    parse_names,
)
from scripts.tiny_models_objects import make_lama, make_yolo
from tests import media as fixtures
from tests.conftest import Api, MediaServer, Receiver

SIZE = (333, 251)  # width, height: neither a multiple of 8
RED = (0, 0, 255)
SQUARE = (200, 100, 250, 150)  # x1, y1, x2, y2 of the red square in scene()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: Any) -> Path:
    directory = Path(tmp_path_factory.mktemp("object-models"))
    make_yolo(directory / "yolo_tiny.onnx")
    make_yolo(directory / "yolo_plain.onnx", metadata=False)
    make_yolo(directory / "yolo_transposed.onnx", transposed=True)
    make_lama(directory / "lama_512.onnx", dynamic=False)
    make_lama(directory / "lama_dyn.onnx", dynamic=True)
    return directory


def objects_config(models_dir: Path, **objects: Any) -> dict[str, Any]:
    files = {
        name: {"file": f"{name}.onnx"}
        for name in ("yolo_tiny", "yolo_plain", "yolo_transposed", "lama_512", "lama_dyn")
    }
    return {
        "models": {"dir": str(models_dir), "files": files},
        "objects": {"detector": "yolo_tiny", **objects},
        "backends": [{"name": "cpu", "slots": 2, "tasks": ["scan_objects", "remove_object"]}],
    }


def png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return bytes(data.tobytes())


def photo() -> np.ndarray:
    """A 333×251 BGR cut of the astronaut photo."""
    rgb = np.asarray(fixtures.astronaut_rgb())[60 : 60 + SIZE[1], 90 : 90 + SIZE[0]]
    return np.ascontiguousarray(rgb[..., ::-1])


def scene() -> np.ndarray:
    """Gray 333×251 with a red square (the tiny detector's `cat`)."""
    pixels = np.full((SIZE[1], SIZE[0], 3), 128, np.uint8)
    x1, y1, x2, y2 = SQUARE
    pixels[y1:y2, x1:x2] = RED
    return pixels


def opaque(pixels: np.ndarray) -> np.ndarray:
    """BGRA with full alpha: the result then comes back as a lossless PNG."""
    return np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])


def square_mask(size: tuple[int, int] = SIZE, box: tuple[int, int, int, int] = SQUARE) -> bytes:
    mask = np.zeros((size[1], size[0]), np.uint8)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = 255
    return png(mask)


async def result_pixels(api: Api, doc: dict[str, Any]) -> tuple[np.ndarray, bytes]:
    async with api.session.get(doc["result"]["url"]) as response:
        assert response.status == 200
        data = await response.read()
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), data


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    assert before.shape == after.shape
    diff = before != after
    return np.asarray(diff.any(axis=2) if diff.ndim == 3 else diff)


def outside(mask: np.ndarray, box: tuple[int, int, int, int], grow: int) -> np.ndarray:
    x1, y1, x2, y2 = box
    keep = mask.copy()
    keep[max(0, y1 - grow) : y2 + grow, max(0, x1 - grow) : x2 + grow] = False
    return keep


# -- scan_objects ----------------------------------------------------------------------------


async def test_scan_finds_objects_with_metadata_labels(
    start_server: Any, models_dir: Path, media: MediaServer, receiver: Receiver
) -> None:
    api = await start_server(**objects_config(models_dir))
    url = media.add("astro.png", fixtures.astronaut_png())
    await api.submit("scan_objects", {"image_url": url}, webhook_url=receiver.url("/scan"))
    (delivery,) = await receiver.wait_for("/scan", timeout_s=30)
    body = delivery.json
    assert body["status"] == "succeeded", body["error"]
    result = body["result"]
    assert result["url"] is None and result["filename"] is None
    meta = result["meta"]
    assert (meta["width"], meta["height"]) == (512, 512)
    assert meta["backend"].startswith("cpu")
    objects = meta["objects"]
    assert meta["count"] == len(objects) > 0
    labels = {o["label"] for o in objects}
    assert labels <= {"person", "cat", "dog"} and "person" in labels
    scores = [o["score"] for o in objects]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.25
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512

    # The blocking endpoint, with filters.
    status, doc, _ = await api.call(
        "POST", "/scan-objects", json={"image_url": url, "min_score": 0.8}
    )
    assert status == 200 and doc["status"] == "succeeded", doc
    strict = doc["result"]["meta"]["objects"]
    assert 0 < len(strict) < len(objects) and all(o["score"] >= 0.8 for o in strict)
    status, doc, _ = await api.call(
        "POST", "/scan-objects", json={"image_url": url, "classes": ["PERSON"]}
    )
    assert status == 200 and doc["status"] == "succeeded", doc
    persons = doc["result"]["meta"]["objects"]
    assert persons and {o["label"] for o in persons} == {"person"}
    assert len(persons) == sum(o["label"] == "person" for o in objects)


@pytest.mark.parametrize("orientation", [6, 8, 3])
async def test_scan_boxes_are_in_upright_coordinates(
    start_server: Any, models_dir: Path, media: MediaServer, orientation: int
) -> None:
    api = await start_server(**objects_config(models_dir))
    url = media.add("rot.jpg", fixtures.exif_rotated_jpeg(orientation))
    status, doc, _ = await api.call("POST", "/scan-objects", json={"image_url": url})
    assert status == 200 and doc["status"] == "succeeded", doc
    meta = doc["result"]["meta"]
    assert (meta["width"], meta["height"]) == fixtures.EXIF_UPRIGHT_SIZE
    marker = fixtures.EXIF_MARKER
    centres = [
        ((o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2)
        for o in meta["objects"]
        if o["label"] == "cat"
    ]
    # The red marker sits in the upright picture's top-left corner.
    assert any(x <= marker and y <= marker for x, y in centres), centres


async def test_class_names_from_config_when_the_model_has_none(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(
        **objects_config(models_dir, detector="yolo_plain", names=["human", "kitty", "doggo"])
    )
    body = {"image_url": media.add("scene.png", png(scene()))}
    status, doc, _ = await api.call("POST", "/scan-objects", json=body)
    assert status == 200 and doc["status"] == "succeeded", doc
    assert {o["label"] for o in doc["result"]["meta"]["objects"]} == {"kitty"}


async def test_missing_detector_is_model_unavailable(
    start_server: Any, tmp_path: Path, models_dir: Path, media: MediaServer
) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    api = await start_server(**objects_config(empty))
    _, diag, _ = await api.call("GET", "/diag/backends")
    unavailable = diag["backends"][0]["unavailable_tasks"]
    assert "yolo_tiny" in unavailable["scan_objects"]
    url = media.add("scene.png", png(scene()))
    status, doc, _ = await api.call("POST", "/scan-objects", json={"image_url": url})
    assert status == 200 and doc["status"] == "failed", doc
    assert doc["error"]["code"] == "model_unavailable"
    assert "ahv models fetch yolo_tiny" in doc["error"]["message"]
    # remove_object by prompt needs the detector too; by mask it does not.
    body = {"image_url": url, "prompt": "cat"}
    status, doc, _ = await api.call("POST", "/remove-object", json=body)
    assert doc["status"] == "failed" and doc["error"]["code"] == "model_unavailable"
    body = {"image_url": url, "mask_url": media.add("m.png", square_mask())}
    status, doc, _ = await api.call("POST", "/remove-object", json=body)
    assert doc["status"] == "succeeded", doc


async def test_no_detector_configured(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**objects_config(models_dir, detector=""))
    url = media.add("scene.png", png(scene()))
    # scan_objects is unavailable in /diag/backends and refused at submit, on both endpoints,
    # instead of a job that can only fail; remove_object stays available (a mask needs no
    # detector).
    _, diag, _ = await api.call("GET", "/diag/backends")
    unavailable = diag["backends"][0]["unavailable_tasks"]
    assert "objects.detector" in unavailable["scan_objects"]
    assert "remove_object" not in unavailable
    scan = {"image_url": url}
    for message in await api.refused_on_both(
        "scan_objects", "/scan-objects", scan, "model_unavailable"
    ):
        assert "objects.detector" in message
    # A prompt needs the detector: refused at submit, naming the field and the setting.
    remove = {"image_url": url, "prompt": "cat"}
    for message in await api.refused_on_both(
        "remove_object", "/remove-object", remove, "model_unavailable"
    ):
        assert message.startswith("payload.prompt") and "objects.detector" in message
    _, listed, _ = await api.call("GET", "/v1/jobs")
    assert listed["jobs"] == []
    body = {"image_url": url, "mask_url": media.add("m.png", square_mask())}
    status, doc, _ = await api.call("POST", "/remove-object", json=body)
    assert status == 200 and doc["status"] == "succeeded", doc


async def test_detector_of_the_wrong_layout_is_model_unavailable(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    # A transposed export ([1, 8400, 7]) used to decode into no detections, silently.
    api = await start_server(**objects_config(models_dir, detector="yolo_transposed"))
    url = media.add("scene.png", png(scene()))
    for path, body in (
        ("/scan-objects", {"image_url": url}),
        ("/remove-object", {"image_url": url, "prompt": "cat"}),
    ):
        status, doc, _ = await api.call("POST", path, json=body)
        assert status == 200 and doc["status"] == "failed", doc
        assert doc["error"]["code"] == "model_unavailable", doc
        message = doc["error"]["message"]
        assert "'yolo_transposed'" in message, message
        assert "output is [1, 8400, 7]" in message and "expected [1, 7, N]" in message, message


async def test_class_names_of_another_count_are_model_unavailable(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    # The model scores 3 classes; objects.names lists 5, so labels would be misread.
    names = ["a", "b", "c", "d", "e"]
    api = await start_server(**objects_config(models_dir, detector="yolo_plain", names=names))
    body = {"image_url": media.add("scene.png", png(scene()))}
    status, doc, _ = await api.call("POST", "/scan-objects", json=body)
    assert status == 200 and doc["status"] == "failed", doc
    assert doc["error"]["code"] == "model_unavailable", doc
    message = doc["error"]["message"]
    assert "'yolo_plain'" in message and "output is [1, 7, 8400]" in message, message
    assert "expected [1, 9, N]" in message and "objects.names has 5 class names" in message


@pytest.mark.parametrize(
    ("shape", "names", "refused"),
    [
        ((1, 7, 8400), 3, None),
        ((7, 8400), 3, None),
        (("batch", 7, "anchors"), 3, None),  # a model's symbolic dims: judged on the run
        (("batch", "rows", "anchors"), 3, None),
        ((1, 84, 8400), 0, None),  # no names known: any class count
        ((1, 8400, 7), 3, "output is [1, 8400, 7], expected [1, 7, N]"),
        ((1, 8400, 84), 0, "output is [1, 8400, 84], expected [1, 4 + C, N]"),
        (("batch", 8400, 84), 80, "output is [?, 8400, 84], expected [1, 84, N]"),
        ((1, 84, 8400), 3, "the model's metadata has 3 class names, so 7 rows"),
        ((1, 4, 8400), 0, "4 rows are fewer than 4 box values and a class"),
        ((2, 7, 8400), 3, "it is not [1, rows, anchors]"),
        ((8400,), 0, "it is not [1, rows, anchors]"),
    ],
)
def test_check_layout(shape: tuple[Any, ...], names: int, refused: str | None) -> None:
    labels = [f"c{i}" for i in range(names)]
    if refused is None:
        check_layout(shape, names=labels, names_from="the model's metadata", model="m")
        return
    with pytest.raises(AhvError) as info:
        check_layout(shape, names=labels, names_from="the model's metadata", model="m")
    assert (info.value.code, info.value.status) == ("model_unavailable", 503)
    assert info.value.message.startswith("model 'm' is not a YOLOv8/v11 detection export")
    assert refused in info.value.message, info.value.message


async def test_scan_payload_is_checked_at_submit(start_server: Any, models_dir: Path) -> None:
    api = await start_server(**objects_config(models_dir))
    for payload in (
        {"image_url": "http://127.0.0.1:9/a.png", "min_score": 2},
        {"image_url": "http://127.0.0.1:9/a.png", "classes": [" "]},
        {"image_url": "http://127.0.0.1:9/a.png", "colour": "red"},
    ):
        status, body, _ = await api.call(
            "POST", "/v1/jobs", json={"task": "scan_objects", "payload": payload}
        )
        assert status == 422 and body["error"]["code"] == "invalid_payload", body


# -- remove_object ---------------------------------------------------------------------------


@pytest.mark.parametrize("inpainter", ["", "lama_512", "lama_dyn"])
async def test_remove_with_mask_changes_only_the_masked_region(
    start_server: Any, models_dir: Path, media: MediaServer, inpainter: str
) -> None:
    api = await start_server(**objects_config(models_dir, inpainter=inpainter))
    source = opaque(scene())
    body = {
        "image_url": media.add("scene.png", png(source)),
        "mask_url": media.add("mask.png", square_mask()),
    }
    job = await api.submit("remove_object", body)
    doc = await api.wait(job["job_id"], timeout_s=30)
    assert doc["status"] == "succeeded", doc["error"]
    meta = doc["result"]["meta"]
    assert meta["method"] == ("lama" if inpainter else "cv2_inpaint_telea")
    assert (meta["width"], meta["height"]) == SIZE
    assert meta["mask_resized"] is False and meta["dilate_px"] == 0
    x1, y1, x2, y2 = SQUARE
    assert meta["mask_fraction"] == pytest.approx((x2 - x1) * (y2 - y1) / (SIZE[0] * SIZE[1]), 1e-3)
    after, _ = await result_pixels(api, doc)
    assert after.shape == source.shape  # exactly the input's size
    diff = changed(source, after)
    assert not outside(diff, SQUARE, 0).any()
    # The red square is gone: its centre is now gray like its surroundings.
    centre = after[(y1 + y2) // 2, (x1 + x2) // 2, :3].astype(int)
    assert np.abs(centre - 128).max() < 20, centre


async def test_remove_keeps_jpeg_size_and_alpha(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**objects_config(models_dir, inpainter="lama_dyn"))
    source = photo()
    body = {
        "image_url": media.add("photo.jpg", cv2.imencode(".jpg", source)[1].tobytes()),
        "mask_url": media.add("mask.png", square_mask()),
        "dilate_px": 5,
    }
    status, doc, _ = await api.call("POST", "/remove-object", json=body)
    assert status == 200 and doc["status"] == "succeeded", doc
    assert doc["result"]["filename"].endswith(".jpg")
    after, _ = await result_pixels(api, doc)
    assert after.shape == source.shape

    # A real alpha channel comes back untouched, as PNG.
    alpha = np.tile(np.linspace(0, 255, SIZE[0]).astype(np.uint8), (SIZE[1], 1))
    rgba = np.dstack([photo(), alpha])
    body["image_url"] = media.add("photo.png", png(rgba))
    status, doc, _ = await api.call("POST", "/remove-object", json=body)
    assert status == 200 and doc["status"] == "succeeded", doc
    assert doc["result"]["meta"]["has_alpha"] is True
    after, data = await result_pixels(api, doc)
    assert data[:4] == b"\x89PNG" and after.shape == rgba.shape
    assert np.array_equal(after[..., 3], alpha)
    diff = changed(rgba[..., :3], after[..., :3])
    assert diff.any() and not outside(diff, SQUARE, 5).any()


async def test_mask_of_another_size_is_resized(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**objects_config(models_dir))
    source = opaque(scene())
    big = tuple(2 * v for v in SQUARE)
    body = {
        "image_url": media.add("scene.png", png(source)),
        "mask_url": media.add("mask.png", square_mask((666, 502), big)),  # type: ignore[arg-type]
    }
    status, doc, _ = await api.call("POST", "/remove-object", json=body)
    assert status == 200 and doc["status"] == "succeeded", doc
    assert doc["result"]["meta"]["mask_resized"] is True
    after, _ = await result_pixels(api, doc)
    assert not outside(changed(source, after), SQUARE, 1).any()


async def test_empty_mask_is_invalid_mask(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**objects_config(models_dir))
    body = {
        "image_url": media.add("scene.png", png(scene())),
        "mask_url": media.add("mask.png", png(np.full((SIZE[1], SIZE[0]), 100, np.uint8))),
    }
    doc = await api.wait((await api.submit("remove_object", body))["job_id"], timeout_s=30)
    assert doc["status"] == "failed" and doc["error"]["code"] == "invalid_mask"
    assert "mask_url" in doc["error"]["message"]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"mask_url": "http://127.0.0.1:9/m.png", "prompt": "cat"},
        {"prompt": " , "},
        {"prompt": []},
        {"mask_url": "http://127.0.0.1:9/m.png", "dilate_px": -1},
    ],
)
async def test_remove_payload_is_checked_at_submit(
    start_server: Any, models_dir: Path, extra: dict[str, Any]
) -> None:
    api = await start_server(**objects_config(models_dir))
    payload = {"image_url": "http://127.0.0.1:9/a.png", **extra}
    status, body, _ = await api.call(
        "POST", "/v1/jobs", json={"task": "remove_object", "payload": payload}
    )
    assert status == 422 and body["error"]["code"] == "invalid_payload", body
    status, body, _ = await api.call("POST", "/remove-object", json=payload)
    assert status == 422 and body["error"]["code"] == "invalid_payload", body


@pytest.mark.parametrize("prompt", ["cat", ["dog", "Cat"], "Cat, dog"])
async def test_remove_by_prompt(
    start_server: Any, models_dir: Path, media: MediaServer, prompt: Any
) -> None:
    api = await start_server(**objects_config(models_dir, mask_dilate_px=6))
    source = opaque(scene())
    body = {"image_url": media.add("scene.png", png(source)), "prompt": prompt}
    status, doc, _ = await api.call("POST", "/remove-object", json=body)
    assert status == 200 and doc["status"] == "succeeded", doc
    meta = doc["result"]["meta"]
    assert meta["dilate_px"] == 6 and meta["objects"]
    assert {o["label"] for o in meta["objects"]} == {"cat"}
    after, _ = await result_pixels(api, doc)
    assert not np.any(np.all(after[..., :3] == RED, axis=2))  # no pure red left
    # Boxes of the tiny detector reach ~13 px past the square, then the mask grows by 6.
    assert not outside(changed(source, after), SQUARE, 13 + 6 + 1).any()


async def test_prompt_mask_is_grown_by_dilate_px(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    # Noisy gray around the red square, and LaMa-style filling with the mean colour: every
    # masked pixel changes, so the changed pixels are the mask the job used.
    rng = np.random.default_rng(5)
    noisy = rng.integers(100, 156, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    x1, y1, x2, y2 = SQUARE
    noisy[y1:y2, x1:x2] = RED
    source = opaque(noisy)
    api = await start_server(**objects_config(models_dir, inpainter="lama_dyn", mask_dilate_px=9))
    url = media.add("noisy.png", png(source))
    masks, fractions = {}, {}
    for grow in (0, 4, 12, None):  # None: objects.mask_dilate_px (9)
        body = {"image_url": url, "prompt": "cat", **({} if grow is None else {"dilate_px": grow})}
        status, doc, _ = await api.call("POST", "/remove-object", json=body)
        assert status == 200 and doc["status"] == "succeeded", doc
        meta = doc["result"]["meta"]
        assert meta["dilate_px"] == (9 if grow is None else grow)
        after, _ = await result_pixels(api, doc)
        masks[grow] = changed(source, after)
        fractions[grow] = meta["mask_fraction"]
        assert fractions[grow] == pytest.approx(masks[grow].mean(), abs=2e-3)
    boxes = masks[0].astype(np.uint8) * 255
    assert boxes.any() and not outside(masks[0], SQUARE, 14).any()
    for grow in (4, 9, 12):
        got = masks[None if grow == 9 else grow]
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
        expected = cv2.dilate(boxes, kernel) > 0
        # The mask is the boxes grown by `grow` pixels: no more, no less.
        assert np.count_nonzero(got != expected) <= 3, grow
    assert fractions[0] < fractions[4] < fractions[None] < fractions[12]


async def test_prompt_without_a_match_is_no_object_detected(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await start_server(**objects_config(models_dir))
    body = {"image_url": media.add("scene.png", png(scene())), "prompt": "dog"}
    doc = await api.wait((await api.submit("remove_object", body))["job_id"], timeout_s=30)
    assert doc["status"] == "failed" and doc["error"]["code"] == "no_object_detected"
    assert "'dog'" in doc["error"]["message"] and "found: cat" in doc["error"]["message"]


async def test_missing_inpainter_is_model_unavailable(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    config = objects_config(models_dir, inpainter="lama_big")
    config["models"]["files"]["lama_big"] = {"file": "lama_big.onnx"}
    api = await start_server(**config)
    body = {
        "image_url": media.add("scene.png", png(scene())),
        "mask_url": media.add("mask.png", square_mask()),
    }
    status, doc, _ = await api.call("POST", "/remove-object", json=body)
    assert status == 200 and doc["status"] == "failed"
    assert doc["error"]["code"] == "model_unavailable"
    assert "lama_big" in doc["error"]["message"]


# -- units -----------------------------------------------------------------------------------


def test_parse_names() -> None:
    assert parse_names("{0: 'person', 1: 'bicycle', 2: 'car'}") == ["person", "bicycle", "car"]
    assert parse_names("{1: 'b', 0: 'a'}") == ["a", "b"]
    assert parse_names("['x', 'y']") == ["x", "y"]
    assert parse_names("not python") == []


def test_decode_output_maps_letterboxed_boxes_back() -> None:
    # A 200×100 image letterboxed into 640×640: ratio 3.2, 160 px bands above and below.
    image = np.zeros((100, 200, 3), np.uint8)
    padded, placement = letterbox(image, (640, 640))
    assert padded.shape == (640, 640, 3) and placement == Letterbox(3.2, 0, 160)
    assert padded[0, 0].tolist() == [114, 114, 114] and padded[320, 320].tolist() == [0, 0, 0]
    output = np.zeros((1, 4 + 2, 5), np.float32)
    # cx, cy, w, h, score class 0, score class 1
    output[0, :, 0] = [320, 320, 64, 32, 0.9, 0.1]  # image box (90, 45, 110, 55)
    output[0, :, 1] = [322, 321, 64, 32, 0.8, 0.0]  # overlaps the first: suppressed
    output[0, :, 2] = [322, 321, 64, 32, 0.0, 0.7]  # same place, other class: kept
    output[0, :, 3] = [620, 200, 80, 80, 0.6, 0.0]  # past the right edge: clipped
    output[0, :, 4] = [100, 100, 10, 10, 0.1, 0.2]  # under the threshold
    found = decode_output(
        output,
        names=["a", "b"],
        placement=placement,
        image_size=(200, 100),
        score_threshold=0.25,
        nms_iou=0.45,
    )
    assert [d.label for d in found] == ["a", "b", "a"]
    assert found[0].box == pytest.approx((90, 45, 110, 55))
    assert found[1].score == pytest.approx(0.7)
    assert found[2].box[2] == 200 and found[2].box[0] == pytest.approx(181.25)


def test_tiny_detector_finds_a_square_where_it_was_drawn(models_dir: Path) -> None:
    session = ort.InferenceSession(
        str(models_dir / "yolo_tiny.onnx"), providers=["CPUExecutionProvider"]
    )
    detector = YoloDetector(session, names=[])
    assert detector.names == ["person", "cat", "dog"]
    for width, height, box in [(333, 251, SQUARE), (180, 600, (40, 400, 120, 480))]:
        image = np.full((height, width, 3), 128, np.uint8)
        x1, y1, x2, y2 = box
        image[y1:y2, x1:x2] = RED
        found = detector.detect(image)
        assert found and {d.label for d in found} == {"cat"}
        for d in found:
            cx, cy = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
            assert x1 - 2 <= cx <= x2 + 2 and y1 - 2 <= cy <= y2 + 2, d


def test_inpainters_keep_size_and_unmasked_pixels(models_dir: Path) -> None:
    image = photo()
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[10:60, 300:333] = 255
    results = [classical_inpaint(image, mask)]
    for name in ("lama_512.onnx", "lama_dyn.onnx"):
        session = ort.InferenceSession(str(models_dir / name), providers=["CPUExecutionProvider"])
        results.append(LamaInpainter(session).inpaint(image, mask))
    for result in results:
        assert result.shape == image.shape and result.dtype == np.uint8
        assert np.array_equal(result[mask == 0], image[mask == 0])
        assert not np.array_equal(result[mask > 0], image[mask > 0])
