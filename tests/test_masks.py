"""`remove_object`'s mask through the real server (research/input-cases.md C17): binarised
whatever its encoding (0/1 gray or RGB, 0/255, 1-bit, 16-bit), resized only when it keeps the
image's aspect ratio, refused with `invalid_mask` naming both sizes otherwise."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from ahv.tasks.masks import binarise, same_aspect
from tests import media as fixtures
from tests.conftest import Api, MediaServer

SIZE = (333, 251)  # width, height of the image: neither a multiple of 8 (C17)
BOX = (200, 100, 250, 150)  # x1, y1, x2, y2 of the masked square


def png(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return bytes(data.tobytes())


def photo() -> np.ndarray:
    """A 333×251 cut of the astronaut, opaque BGRA: the result comes back as a lossless PNG."""
    rgb = np.asarray(fixtures.astronaut_rgb())[60 : 60 + SIZE[1], 90 : 90 + SIZE[0]]
    return np.ascontiguousarray(np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 255, np.uint8)]))


def box_plane(size: tuple[int, int] = SIZE, box: tuple[int, ...] = BOX, on: int = 1) -> np.ndarray:
    width, height = size
    plane = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = box
    plane[y1:y2, x1:x2] = on
    return plane


def pillow(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


MASKS: dict[str, Callable[[], bytes]] = {
    "gray_0_1": lambda: png(box_plane()),
    "rgb_0_1": lambda: png(np.dstack([box_plane()] * 3)),
    "gray_0_255": lambda: png(box_plane(on=255)),
    "rgb_0_255": lambda: png(np.dstack([box_plane(on=255)] * 3)),
    "one_bit": lambda: pillow(Image.fromarray(box_plane(on=255)).convert("1")),
    "gray16_0_65535": lambda: png(box_plane().astype(np.uint16) * 65535),
    "gray16_0_1": lambda: png(box_plane().astype(np.uint16)),  # a 16-bit label map
    "gray16_0_255": lambda: png(box_plane().astype(np.uint16) * 255),
}


def config() -> dict[str, Any]:
    return {"backends": [{"name": "cpu", "slots": 2, "tasks": ["remove_object"]}]}


async def remove(api: Api, media: MediaServer, mask: bytes) -> dict[str, Any]:
    body = {
        "image_url": media.add(f"image-{len(media.files)}.png", png(photo())),
        "mask_url": media.add(f"mask-{len(media.files)}.png", mask),
    }
    status, doc, _ = await api.call("POST", "/remove-object", json=body)
    assert status == 200, doc
    return dict(doc)


async def changed_pixels(api: Api, doc: dict[str, Any]) -> np.ndarray:
    async with api.session.get(doc["result"]["url"]) as response:
        data = await response.read()
    after = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert after.shape == (SIZE[1], SIZE[0], 4)  # the input's size exactly
    return np.asarray((after != photo()).any(axis=2))


@pytest.mark.parametrize("kind", list(MASKS))
async def test_mask_is_binarised_whatever_its_encoding(
    start_server: Any, media: MediaServer, kind: str
) -> None:
    api = await start_server(**config())
    doc = await remove(api, media, MASKS[kind]())
    assert doc["status"] == "succeeded", doc["error"]
    meta = doc["result"]["meta"]
    x1, y1, x2, y2 = BOX
    assert meta["mask_fraction"] == pytest.approx((x2 - x1) * (y2 - y1) / (SIZE[0] * SIZE[1]), 1e-3)
    assert meta["mask_resized"] is False
    changed = await changed_pixels(api, doc)
    assert changed[y1:y2, x1:x2].mean() > 0.5  # the square was filled in
    changed[y1:y2, x1:x2] = False
    assert not changed.any()  # and nothing else changed


async def test_an_all_zero_mask_is_still_empty(start_server: Any, media: MediaServer) -> None:
    api = await start_server(**config())
    doc = await remove(api, media, png(np.zeros((SIZE[1], SIZE[0]), np.uint8)))
    assert doc["status"] == "failed" and doc["error"]["code"] == "invalid_mask"
    assert "empty" in doc["error"]["message"]


@pytest.mark.parametrize(
    ("image_size", "mask_size"),
    [((300, 400), (400, 300)), (SIZE, (300, 200)), (SIZE, (333, 333))],
)
async def test_a_mask_of_another_aspect_ratio_is_refused(
    start_server: Any, media: MediaServer, image_size: tuple[int, int], mask_size: tuple[int, int]
) -> None:
    api = await start_server(**config())
    image = np.asarray(fixtures.astronaut_rgb().resize(image_size))[..., ::-1]
    body = {
        "image_url": media.add("image.png", png(np.ascontiguousarray(image))),
        "mask_url": media.add("mask.png", png(box_plane(mask_size, (10, 10, 60, 60), 255))),
    }
    job = await api.submit("remove_object", body)
    doc = await api.wait(job["job_id"], timeout_s=30)
    assert doc["status"] == "failed" and doc["error"]["code"] == "invalid_mask", doc
    message = doc["error"]["message"]
    assert message.startswith("mask_url:"), message
    assert (
        f"{mask_size[0]}x{mask_size[1]}" in message
        and f"{image_size[0]}x{image_size[1]}" in message
    )
    assert doc["attempts"] == 1 and doc["result"] is None


@pytest.mark.parametrize("mask_size", [(666, 502), (167, 126), (999, 753)])
async def test_a_mask_of_the_same_aspect_ratio_is_resized(
    start_server: Any, media: MediaServer, mask_size: tuple[int, int]
) -> None:
    api = await start_server(**config())
    fx, fy = mask_size[0] / SIZE[0], mask_size[1] / SIZE[1]
    x1, y1, x2, y2 = BOX
    scaled = (round(x1 * fx), round(y1 * fy), round(x2 * fx), round(y2 * fy))
    doc = await remove(api, media, png(box_plane(mask_size, scaled, 255)))
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["result"]["meta"]["mask_resized"] is True
    changed = await changed_pixels(api, doc)
    changed[y1 - 2 : y2 + 2, x1 - 2 : x2 + 2] = False  # nearest-neighbour edges, ±1 source px
    assert not changed.any()


def test_binarise_and_same_aspect() -> None:
    ones = np.dstack([box_plane()] * 3)
    assert np.array_equal(binarise(ones, False), box_plane(on=255))
    # 8-bit: over 127 is white; 1 in a mask that also holds 200 is black.
    mixed = box_plane(on=200)
    mixed[0, 0] = 1
    assert np.array_equal(binarise(np.dstack([mixed] * 3), False), box_plane(on=255))
    # Alpha: white paint that is transparent is not painted.
    rgba = np.dstack([np.full((*box_plane().shape, 3), 255, np.uint8), box_plane(on=255)])
    assert np.array_equal(binarise(rgba, True), box_plane(on=255))
    assert same_aspect((666, 502), (333, 251)) and same_aspect((167, 126), (333, 251))
    assert not same_aspect((400, 300), (300, 400)) and not same_aspect((300, 200), (333, 251))
