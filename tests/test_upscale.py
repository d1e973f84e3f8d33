"""The `upscale` task through the real server: awkward real-world inputs, limits, and the
errors a client gets for bad ones."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from tests import media as fixtures
from tests.conftest import Api, MediaServer


async def run_upscale(
    api: Api, media: MediaServer, data: bytes, name: str = "in.bin", **payload: Any
) -> dict[str, Any]:
    image_url = media.add(name, data, "application/octet-stream")
    job = await api.submit("upscale", {"image_url": image_url, **payload})
    return await api.wait(job["job_id"])


async def fetch_result(api: Api, doc: dict[str, Any]) -> np.ndarray:
    async with api.session.get(doc["result"]["url"]) as response:
        assert response.status == 200
        data = await response.read()
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("orientation", [3, 6, 8])
async def test_exif_orientation_is_applied(api: Api, media: MediaServer, orientation: int) -> None:
    doc = await run_upscale(api, media, fixtures.exif_rotated_jpeg(orientation), scale=2)
    assert doc["status"] == "succeeded", doc["error"]
    width, height = fixtures.EXIF_UPRIGHT_SIZE
    assert (doc["result"]["meta"]["width"], doc["result"]["meta"]["height"]) == (
        width * 2,
        height * 2,
    )
    pixels = await fetch_result(api, doc)
    assert pixels.shape[:2] == (height * 2, width * 2)
    corner = pixels[10 : fixtures.EXIF_MARKER, 10 : fixtures.EXIF_MARKER].reshape(-1, 3).mean(0)
    blue, green, red = corner
    assert red > 150 and green < 90 and blue < 90  # the red marker is top-left, upright


async def test_alpha_is_kept_as_png(api: Api, media: MediaServer) -> None:
    doc = await run_upscale(api, media, fixtures.rgba_png(), scale=2)
    assert doc["status"] == "succeeded"
    assert doc["result"]["filename"].endswith(".png")
    assert doc["result"]["meta"]["has_alpha"] is True
    pixels = await fetch_result(api, doc)
    meta = doc["result"]["meta"]
    assert (meta["width"], meta["height"]) == (meta["input_width"] * 2, meta["input_height"] * 2)
    assert pixels.shape == (meta["height"], meta["width"], 4)
    assert pixels[..., 3].min() == 0 and pixels[..., 3].max() == 255


@pytest.mark.parametrize(
    "maker",
    [
        fixtures.gray_png,
        fixtures.gray_alpha_png,
        fixtures.gray16_png,
        fixtures.rgb16_png,
        fixtures.cmyk_jpeg,
        fixtures.single_frame_gif,
        lambda: fixtures.palette_png(transparent=False),
    ],
)
async def test_awkward_but_valid_images_succeed(api: Api, media: MediaServer, maker: Any) -> None:
    doc = await run_upscale(api, media, maker(), scale=2)
    assert doc["status"] == "succeeded", doc["error"]
    pixels = await fetch_result(api, doc)
    assert pixels.shape[0] == doc["result"]["meta"]["height"]
    assert pixels.shape[1] == doc["result"]["meta"]["width"]
    assert pixels.dtype == np.uint8


async def test_max_side_and_sharpen(api: Api, media: MediaServer) -> None:
    doc = await run_upscale(api, media, fixtures.exif_rotated_jpeg(1), max_side=1000, sharpen=1)
    assert doc["status"] == "succeeded"
    assert (doc["result"]["meta"]["width"], doc["result"]["meta"]["height"]) == (750, 1000)
    assert doc["result"]["meta"]["method"] == "lanczos"


async def test_format_is_sniffed_from_the_bytes(api: Api, media: MediaServer) -> None:
    image_url = media.add("photo.jpg", fixtures.astronaut_png(), "text/plain")
    job = await api.submit("upscale", {"image_url": image_url})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded"
    assert doc["result"]["meta"]["width"] == 1024


@pytest.mark.parametrize(
    ("maker", "code", "words"),
    [
        (lambda: fixtures.huge_header_png(20000, 20000), "image_too_large", ["20000x20000"]),
        (fixtures.animated_gif, "unsupported_media_type", ["animated"]),
        (fixtures.animated_webp, "unsupported_media_type", ["animated"]),
        (fixtures.text_file, "unsupported_media_type", ["image_url"]),
        (fixtures.truncated_jpeg, "corrupt_input", ["image_url"]),
        (fixtures.corrupt_png, "corrupt_input", ["image_url"]),
        (lambda: b"", "corrupt_input", ["empty"]),
    ],
)
async def test_bad_inputs_fail_with_a_clear_code(
    api: Api, media: MediaServer, maker: Any, code: str, words: list[str]
) -> None:
    doc = await run_upscale(api, media, maker())
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == code
    for word in words:
        assert word in doc["error"]["message"]
    assert doc["attempts"] == 1  # bad input is never retried
    assert doc["result"] is None
    assert list(api.orchestrator.files_dir.iterdir()) == []


async def test_output_limit_is_checked_before_the_work(
    start_server: Any, media: MediaServer
) -> None:
    api = await start_server(limits={"max_output_pixels": 1_000_000})
    doc = await run_upscale(api, media, fixtures.astronaut_png(), scale=4)
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == "image_too_large"
    assert "2048x2048" in doc["error"]["message"]


@pytest.mark.parametrize(
    ("sent", "named", "size"),
    [
        ({"scale": 4}, "payload.scale", "2048x2048"),
        ({"max_side": 2048}, "payload.max_side", "2048x2048"),
        ({"scale": 4, "max_side": 1200}, "payload.max_side", "1200x1200"),  # max_side caps
        ({"scale": 2, "max_side": 4000}, "payload.scale", "1024x1024"),  # the cap is not reached
        ({}, None, "1024x1024"),
    ],
)
async def test_output_limit_names_what_made_the_output_too_big(
    start_server: Any, media: MediaServer, sent: dict[str, Any], named: str | None, size: str
) -> None:
    api = await start_server(limits={"max_output_pixels": 1_000_000})
    doc = await run_upscale(api, media, fixtures.astronaut_png(), **sent)
    assert doc["status"] == "failed" and doc["error"]["code"] == "image_too_large", doc
    message = doc["error"]["message"]
    assert f"would be {size} " in message and "1000000" in message, message
    if named is None:  # nothing sent: plainly the output, at the default scale
        assert message.startswith("the output would be") and "default scale 2" in message
    else:
        assert message.startswith(f"{named}: the output would be"), message
    for other in {"payload.scale", "payload.max_side"} - {named}:
        assert other not in message, message


async def test_max_side_too_big_names_max_side(api: Api, media: MediaServer) -> None:
    # The default limits: 3000x3000 fitted to a 16000 px side is 256 Mpx, over 100 Mpx.
    ok, data = cv2.imencode(".png", np.zeros((3000, 3000), np.uint8))
    assert ok
    body = {"image_url": media.add("big.png", data.tobytes()), "max_side": 16000}
    status, doc, _ = await api.call("POST", "/upscale", json=body)
    assert status == 200 and doc["status"] == "failed", doc
    assert doc["error"]["code"] == "image_too_large", doc
    message = doc["error"]["message"]
    assert message.startswith("payload.max_side: the output would be 16000x16000"), message
    assert "scale" not in message


async def test_download_errors(start_server: Any, media: MediaServer) -> None:
    api = await start_server(fetch={"max_bytes": 100_000})
    missing = await api.submit("upscale", {"image_url": media.add("x", b"") + "-missing"})
    too_big = await api.submit(
        "upscale", {"image_url": media.add("big.png", fixtures.astronaut_png())}
    )
    doc = await api.wait(missing["job_id"])
    assert doc["status"] == "failed" and doc["error"]["code"] == "download_failed"
    assert "404" in doc["error"]["message"] and doc["attempts"] == 1
    doc = await api.wait(too_big["job_id"])
    assert doc["status"] == "failed" and doc["error"]["code"] == "input_too_large"
    assert "100000" in doc["error"]["message"]


async def test_input_url_guard_at_submit(start_server: Any) -> None:
    api = await start_server(fetch={"allowed_networks": []})
    for url in ("http://127.0.0.1:1/a.png", "http://[::1]/a.png", "http://10.1.2.3/a.png"):
        status, body, _ = await api.call(
            "POST", "/v1/jobs", json={"task": "upscale", "payload": {"image_url": url}}
        )
        assert status == 422, url
        assert body["error"]["code"] == "url_not_allowed"
        assert "payload.image_url" in body["error"]["message"]
