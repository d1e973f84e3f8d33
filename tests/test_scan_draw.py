"""`scan_objects` through the real server with the tiny YOLO (scripts/tiny_models_objects.py):
`draw: true` draws the reported boxes (pixels change along each box's edges and nowhere far
from the boxes), and the `classes` filter applies before the 300-detection cap, so objects of
the wanted class are found even when other classes fill the cap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from scripts.tiny_models_objects import make_yolo
from tests.conftest import Api, MediaServer

RED, BLUISH = (0, 0, 255), (200, 70, 70)  # BGR: the tiny detector's `cat` and (weaker) `dog`


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: Any) -> Path:
    directory = Path(tmp_path_factory.mktemp("scan-models"))
    make_yolo(directory / "yolo_tiny.onnx")
    return directory


async def scan_api(start_server: Any, models_dir: Path) -> Api:
    api: Api = await start_server(
        models={"dir": str(models_dir), "files": {"yolo_tiny": {"file": "yolo_tiny.onnx"}}},
        objects={"detector": "yolo_tiny"},
        backends=[{"name": "cpu", "slots": 1, "tasks": ["scan_objects"]}],
    )
    return api


def png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return bytes(data.tobytes())


def scene() -> np.ndarray:
    """Gray 333×251 with two red squares (`cat`s) far apart."""
    pixels = np.full((251, 333, 3), 128, np.uint8)
    pixels[100:150, 200:250] = RED
    pixels[30:70, 30:70] = RED
    return pixels


def edges(box: list[float], shape: tuple[int, ...]) -> list[tuple[Any, Any]]:
    """(rows, columns) of the four sides of a box as drawn (corners rounded to pixels)."""
    height, width = shape[:2]
    x1, y1, x2, y2 = (round(v) for v in box)
    x2, y2 = min(x2, width - 1), min(y2, height - 1)
    xs, ys = np.arange(x1, x2 + 1), np.arange(y1, y2 + 1)
    return [
        (np.full_like(xs, y1), xs),
        (np.full_like(xs, y2), xs),
        (ys, np.full_like(ys, x1)),
        (ys, np.full_like(ys, x2)),
    ]


async def test_draw_draws_the_reported_boxes(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    api = await scan_api(start_server, models_dir)
    source = scene()
    body = {"image_url": media.add("scene.png", png(source)), "draw": True}
    status, doc, _ = await api.call("POST", "/scan-objects", json=body)
    assert status == 200 and doc["status"] == "succeeded", doc
    meta = doc["result"]["meta"]
    assert doc["result"]["filename"].endswith(".jpg") and meta["format"] == "jpg"
    objects = meta["objects"]
    assert objects and {o["label"] for o in objects} == {"cat"}
    # Both squares were found.
    centres = [((o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2) for o in objects]
    assert any(cx < 100 for cx, _ in centres) and any(cx > 180 for cx, _ in centres)
    async with api.session.get(doc["result"]["url"]) as response:
        data = await response.read()
    assert data[:3] == b"\xff\xd8\xff"
    drawn = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == source.shape
    diff = np.abs(drawn.astype(int) - source).sum(axis=2)
    for found in objects:
        for rows, cols in edges(found["box"], source.shape):
            assert diff[rows, cols].mean() > 20, found  # every side of every box is drawn
    # Far from every box (and the label above it), the picture is the source's.
    near = np.zeros(source.shape[:2], bool)
    for found in objects:
        x1, y1, x2, y2 = (round(v) for v in found["box"])
        near[max(0, y1 - 40) : y2 + 20, max(0, x1 - 20) : x2 + 100] = True
    assert (~near).sum() > source.shape[0] * source.shape[1] // 2
    assert diff[~near].max() <= 6  # JPEG q95 of flat gray


async def test_classes_filter_applies_before_the_detection_cap(
    start_server: Any, models_dir: Path, media: MediaServer
) -> None:
    # A red field gives hundreds of `cat`s (more than the 300 kept), all scoring higher than
    # the bluish square's few `dog`s.
    pixels = np.full((640, 640, 3), RED, np.uint8)
    pixels[20:140, 20:140] = BLUISH
    api = await scan_api(start_server, models_dir)
    url = media.add("field.png", png(pixels))
    status, doc, _ = await api.call("POST", "/scan-objects", json={"image_url": url})
    assert status == 200 and doc["status"] == "succeeded", doc
    everything = doc["result"]["meta"]["objects"]
    assert len(everything) == 300 and {o["label"] for o in everything} == {"cat"}
    status, doc, _ = await api.call(
        "POST", "/scan-objects", json={"image_url": url, "classes": ["Dog"]}
    )
    assert status == 200 and doc["status"] == "succeeded", doc
    dogs = doc["result"]["meta"]["objects"]
    assert dogs and {o["label"] for o in dogs} == {"dog"}
    for dog in dogs:
        x1, y1, x2, y2 = dog["box"]
        assert 20 <= (x1 + x2) / 2 <= 140 and 20 <= (y1 + y2) / 2 <= 140, dog
