"""cx_image (OpenAI's GPT image model: generations and edits) and ahv_image routed to OpenAI,
through the real server, against a local server speaking OpenAI's Images API wire format."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import cv2
import numpy as np
import pytest

from tests import media as fixtures
from tests.conftest import Api, MediaServer, Receiver, StartServer, merge
from tests.fake_providers import FakeOpenAI, Reply, decode_image, openai_error

OPENAI_KEY = "sk-proj-TESTopenaiKEY0123456789abcdefWXYZ"


@pytest.fixture
async def openai(aiohttp_server: Any) -> FakeOpenAI:
    return await FakeOpenAI.start(aiohttp_server, OPENAI_KEY)


async def start(start_server: StartServer, openai: FakeOpenAI, **overrides: Any) -> Api:
    section = {"api_key": OPENAI_KEY, "base_url": openai.url}
    return await start_server(**merge({"providers": {"openai": section}}, overrides))


async def download(api: Api, url: str) -> bytes:
    async with api.session.get(url) as response:
        assert response.status == 200, url
        return await response.read()


async def test_cx_image_generation_with_several_images(
    start_server: StartServer, openai: FakeOpenAI, receiver: Receiver
) -> None:
    api = await start(start_server, openai)
    payload = {
        "prompt": "a sticker of a teapot",
        "n": 2,
        "size": "1536x1024",
        "quality": "high",
        "background": "transparent",
    }
    job = await api.submit("cx_image", payload, webhook_url=receiver.url("/ok"))
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    files = doc["result"]["files"]
    assert len(files) == 2 and doc["result"]["url"] == files[0]["url"]
    meta = doc["result"]["meta"]
    assert meta["provider"] == "openai" and meta["model"] == "gpt-image-1.5"
    assert meta["mode"] == "generation" and meta["backend"].startswith("openai-")
    for entry in files:
        pixels = decode_image(await download(api, entry["url"]))
        assert pixels is not None and pixels.shape == (64, 96, 4)  # alpha kept
        assert entry["meta"]["mime"] == "image/png" and entry["filename"].endswith(".png")
    (call,) = openai.of("generations")
    assert call.path == "/v1/images/generations"
    assert call.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert call.body == {"model": "gpt-image-1.5", **payload}
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["result"]["files"] == files


async def test_cx_image_edit_with_images_and_mask(
    start_server: StartServer, openai: FakeOpenAI, media: MediaServer
) -> None:
    api = await start(start_server, openai)
    mask = np.zeros((100, 100), np.uint8)
    mask[20:60, 30:70] = 255  # white: what to change
    ok, encoded = cv2.imencode(".png", mask)
    assert ok
    body = {
        "prompt": "add a hat",
        "image_urls": [
            media.add("astronaut.png", fixtures.astronaut_png()),
            media.add("rotated.jpg", fixtures.exif_rotated_jpeg(6)),
        ],
        "mask_url": media.add("mask.png", encoded.tobytes()),
        "model": "gpt-image-1-mini",
    }
    status, doc, _ = await api.call("POST", "/cx/image", json=body)
    assert status == 200 and doc["status"] == "succeeded", doc
    assert doc["result"]["meta"]["mode"] == "edit"
    assert doc["result"]["meta"]["model"] == "gpt-image-1-mini"
    (call,) = openai.of("edits")
    assert call.headers["Authorization"] == f"Bearer {OPENAI_KEY}"
    fields, images, sent_mask = call.body["fields"], call.body["images"], call.body["mask"]
    assert fields == {"model": "gpt-image-1-mini", "prompt": "add a hat", "n": "1"}
    assert [i["filename"] for i in images] == ["image_0.jpg", "image_1.jpg"]
    assert [i["content_type"] for i in images] == ["image/jpeg", "image/jpeg"]
    assert images[0]["pixels"].shape[:2] == (512, 512)
    width, height = fixtures.EXIF_UPRIGHT_SIZE
    assert images[1]["pixels"].shape[:2] == (height, width)  # EXIF applied
    # The mask: a PNG with alpha, resized to the first image, transparent where it was white.
    alpha = sent_mask["pixels"][..., 3]
    assert sent_mask["pixels"].shape == (512, 512, 4)
    assert alpha[200, 250] == 0 and alpha[10, 10] == 255


async def test_cx_image_masks_are_read_like_remove_objects(
    start_server: StartServer, openai: FakeOpenAI, media: MediaServer
) -> None:
    """A mask without alpha is binarised as remove_object's are (a 0/1 label map's 1 means
    change), and one of another aspect ratio is invalid_mask instead of stretched."""
    api = await start(start_server, openai)
    wide = cv2.imencode(".png", np.full((100, 200, 3), 90, np.uint8))[1].tobytes()
    image_url = media.add("wide.png", wide)
    label = np.zeros((50, 100), np.uint8)
    label[10:30, 10:40] = 1  # half the image's size, same aspect ratio
    body = {"prompt": "add a hat", "image_urls": [image_url]}
    body["mask_url"] = media.add("label.png", cv2.imencode(".png", label)[1].tobytes())
    status, doc, _ = await api.call("POST", "/cx/image", json=body)
    assert status == 200 and doc["status"] == "succeeded", doc
    alpha = openai.of("edits")[0].body["mask"]["pixels"][..., 3]
    assert alpha.shape == (100, 200)
    assert alpha[40, 40] == 0 and alpha[90, 150] == 255  # the 1s (scaled ×2) are transparent
    assert int((alpha == 0).sum()) == 40 * 60

    square = np.full((100, 100), 255, np.uint8)
    body["mask_url"] = media.add("square.png", cv2.imencode(".png", square)[1].tobytes())
    status, doc, _ = await api.call("POST", "/cx/image", json=body)
    assert doc["status"] == "failed" and doc["error"]["code"] == "invalid_mask", doc
    assert doc["error"]["message"] == (
        "mask_url: the mask is 100x100 but the image is 200x100; a mask must have the image's"
        " size or its aspect ratio"
    )
    assert len(openai.of("edits")) == 1  # the refused mask never reached the provider


async def test_cx_image_moderation_block_is_rejected(
    start_server: StartServer, openai: FakeOpenAI, receiver: Receiver
) -> None:
    api = await start(start_server, openai)
    job = await api.submit("cx_image", {"prompt": "forbidden"}, webhook_url=receiver.url("/ok"))
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "rejected" and doc["ok"] is False
    assert doc["error"]["code"] == "content_blocked"
    assert "rejected by the safety system" in doc["error"]["message"]
    assert doc["attempts"] == 1
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "rejected"


async def test_cx_image_payload_errors(start_server: StartServer, openai: FakeOpenAI) -> None:
    api = await start(start_server, openai)
    cases = [
        ({"prompt": "x", "mask_url": "http://127.0.0.1/m.png"}, "payload.mask_url"),
        ({"prompt": "x", "size": "512x512"}, "payload.size"),
        ({"prompt": "x", "n": 11}, "payload.n"),
        ({"prompt": ""}, "payload.prompt"),
        ({"prompt": "x", "image_urls": ["file:///etc/passwd"]}, "payload.image_urls[0]"),
    ]
    for payload, field in cases:
        status, body, _ = await api.call("POST", "/cx/image", json=payload)
        assert status == 422, (payload, body)
        assert field in body["error"]["message"], body
    assert openai.calls == []


async def test_429_honours_retry_after_and_500_is_retried(
    start_server: StartServer, openai: FakeOpenAI
) -> None:
    api = await start(start_server, openai, queue={"max_attempts": 3, "retry_max_s": 5})
    limited = openai_error(429, "Rate limit reached for images.", "rate_limit_exceeded", "requests")
    limited.headers["Retry-After"] = "1"
    openai.script(
        "generations", limited, openai_error(500, "The server had an error.", None, "server_error")
    )
    job = await api.submit("cx_image", {"prompt": "a boat"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["attempts"] == 3
    first, second, _ = openai.of("generations")
    assert second.at - first.at >= 1.0


# What OpenAI answers on an internal error (https://platform.openai.com/docs/guides/error-codes).
SERVER_ERROR = (
    "The server had an error while processing your request. Sorry about that! You can retry "
    "your request, or contact us through our help center at help.openai.com if the error "
    "persists."
)


def cx_payload(mode: str, media: MediaServer) -> dict[str, Any]:
    """A cx_image generation, or an edit of one input image."""
    if mode == "generations":
        return {"prompt": "a boat"}
    return {"prompt": "a boat", "image_urls": [media.add("in.png", fixtures.astronaut_png())]}


@pytest.mark.parametrize("mode", ["generations", "edits"])
async def test_cx_image_500_until_the_attempts_are_spent(
    start_server: StartServer,
    openai: FakeOpenAI,
    media: MediaServer,
    receiver: Receiver,
    mode: str,
) -> None:
    openai.always[mode] = openai_error(500, SERVER_ERROR, None, "server_error")
    api = await start(
        start_server, openai, queue={"max_attempts": 3, "retry_base_s": 0.2, "retry_max_s": 0.3}
    )
    job = await api.submit("cx_image", cx_payload(mode, media), webhook_url=receiver.url("/ok"))
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["ok"] is False
    assert doc["attempts"] == 3 and doc["result"] is None
    assert doc["error"] == {
        "code": "provider_error",
        "message": f"openai answered HTTP 500: {SERVER_ERROR}",
    }
    calls = openai.of(mode)
    assert len(calls) == 3
    # Backed off between attempts: min(retry_max_s, retry_base_s * 2**(attempt-1)), jittered
    # by 0.5-1.5, so 0.1-0.3 s, then 0.15-0.45 s.
    assert calls[1].at - calls[0].at >= 0.1
    assert calls[2].at - calls[1].at >= 0.15
    assert all(c.headers["Authorization"] == f"Bearer {OPENAI_KEY}" for c in calls)
    await asyncio.sleep(0.5)  # longer than any further backoff: no fourth attempt
    assert len(openai.calls) == 3
    assert list(api.orchestrator.files_dir.iterdir()) == []
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "failed"
    assert delivery.json["error"] == doc["error"]


@pytest.mark.parametrize("mode", ["generations", "edits"])
async def test_cancel_during_a_cx_image_call_in_flight_ends_at_once(
    start_server: StartServer,
    openai: FakeOpenAI,
    media: MediaServer,
    receiver: Receiver,
    mode: str,
) -> None:
    openai.delay_s = 5.0
    api = await start(start_server, openai, queue={"cancel_wait_s": 10})
    job = await api.submit("cx_image", cx_payload(mode, media), webhook_url=receiver.url("/ok"))
    await openai.wait_calls(mode, 1)
    started = asyncio.get_running_loop().time()
    status, _, _ = await api.call("POST", f"/v1/jobs/{job['job_id']}/cancel")
    assert status == 200
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "canceled" and doc["result"] is None and doc["attempts"] == 1
    # Neither the 5 s answer nor the 10 s cancel_wait_s grace was waited out.
    assert asyncio.get_running_loop().time() - started < 2.0
    # ahv hung up on the provider: the request was abandoned, not left running.
    await openai.wait_hangup(mode)
    await asyncio.sleep(0.3)
    assert len(openai.calls) == 1  # and not sent again
    _, diag, _ = await api.call("GET", "/diag/backends")
    (row,) = [r for r in diag["backends"] if r["name"] == "openai"]
    assert row["busy"] == 0
    assert list(api.orchestrator.files_dir.iterdir()) == []
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "canceled"


async def test_the_key_is_scrubbed_from_provider_messages(
    start_server: StartServer,
    openai: FakeOpenAI,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    api = await start(start_server, openai)
    masked = f"{OPENAI_KEY[:8]}************{OPENAI_KEY[-4:]}"
    message = f"Incorrect API key provided: {masked}. Your key {OPENAI_KEY} was revoked."
    openai.script(
        "generations", openai_error(401, message, "invalid_api_key", "invalid_request_error")
    )
    job = await api.submit("cx_image", {"prompt": "x"}, webhook_url=receiver.url("/ok"))
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["attempts"] == 1  # a 401 is not retried
    assert doc["error"]["code"] == "provider_error"
    assert doc["error"]["message"].startswith("openai answered HTTP 401: Incorrect API key")
    (delivery,) = await receiver.wait_for("/ok")
    for text in (str(doc), delivery.body.decode(), caplog.text):
        assert OPENAI_KEY not in text and masked not in text and OPENAI_KEY[-12:] not in text


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (fixtures.corrupt_png(), "corrupt_input"),
        (fixtures.animated_gif(), "unsupported_media_type"),
    ],
)
async def test_bad_input_image_is_refused_like_local_inputs(
    start_server: StartServer, openai: FakeOpenAI, media: MediaServer, data: bytes, code: str
) -> None:
    api = await start(start_server, openai)
    urls = [media.add("ok.png", fixtures.astronaut_png()), media.add("bad.bin", data)]
    job = await api.submit("cx_image", {"prompt": "x", "image_urls": urls})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["error"]["code"] == code
    assert "image_urls[1]" in doc["error"]["message"]
    assert openai.calls == []


async def test_ahv_image_routed_to_openai(
    start_server: StartServer, openai: FakeOpenAI, media: MediaServer
) -> None:
    api = await start(
        start_server,
        openai,
        providers={"ahv_image_provider": "openai", "ahv_image_model": "gpt-image-1-mini"},
    )
    status, diag, _ = await api.call("GET", "/diag/backends")
    (row,) = [r for r in diag["backends"] if r["name"] == "openai"]
    assert row["tasks"] == ["ahv_image", "cx_image"]

    status, doc, _ = await api.call(
        "POST", "/ahv/image", json={"prompt": "a wide valley", "aspect_ratio": "16:9"}
    )
    assert status == 200 and doc["status"] == "succeeded", doc
    assert doc["result"]["meta"]["provider"] == "openai"
    (call,) = openai.of("generations")
    assert call.body == {
        "model": "gpt-image-1-mini",
        "prompt": "a wide valley",
        "n": 1,
        "size": "1536x1024",
    }
    image_url = media.add("astronaut.png", fixtures.astronaut_png())
    job = await api.submit("ahv_image", {"prompt": "as a painting", "image_urls": [image_url]})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["result"]["meta"]["mode"] == "image-to-image"
    (edit,) = openai.of("edits")
    assert edit.body["fields"]["model"] == "gpt-image-1-mini"
    assert len(edit.body["images"]) == 1 and edit.body["mask"] is None


async def test_url_results_are_fetched_like_inputs(
    start_server: StartServer, openai: FakeOpenAI, media: MediaServer
) -> None:
    # Older models answer with a URL on a CDN: fetched with the guarded input fetcher.
    image_url = media.add("result.png", fixtures.astronaut_png())
    openai.script("generations", Reply(200, {"created": 1, "data": [{"url": image_url}]}))
    api = await start(start_server, openai)
    job = await api.submit("cx_image", {"prompt": "x"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert (doc["result"]["meta"]["width"], doc["result"]["meta"]["height"]) == (512, 512)


async def test_retention_expires_every_file_of_a_several_image_job(
    start_server: StartServer, openai: FakeOpenAI
) -> None:
    api = await start(
        start_server,
        openai,
        retention={"files_s": 0.3, "jobs_s": 60, "sweep_interval_s": 0.05},
    )
    job = await api.submit("cx_image", {"prompt": "two teapots", "n": 2})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    names = [entry["filename"] for entry in doc["result"]["files"]]
    assert len(set(names)) == 2
    paths = [api.orchestrator.files_dir / name for name in names]
    assert all(path.is_file() for path in paths)
    for _ in range(200):
        if not any(path.exists() for path in paths):
            break
        await asyncio.sleep(0.05)
    assert not any(path.exists() for path in paths), "a result file outlived its retention"
    for entry in doc["result"]["files"]:
        async with api.session.get(entry["url"]) as response:
            assert response.status == 410
            body = await response.json()
            assert body["error"]["code"] == "file_expired"


@pytest.mark.parametrize(
    ("data", "said"),
    [
        # A header claiming 20000x20000 (400 MP, over limits.max_output_pixels here): the
        # file is never handed out as a result.
        (fixtures.huge_header_png(20000, 20000), "image is 20000x20000"),
        (fixtures.truncated_jpeg(), "openai result 1"),
        (b"GIF89a, or so it says", "openai result 1"),
    ],
    ids=["huge-header", "truncated", "not-an-image"],
)
async def test_a_broken_or_oversized_result_image_fails_the_job(
    start_server: StartServer, openai: FakeOpenAI, data: bytes, said: str
) -> None:
    api = await start(start_server, openai, limits={"max_output_pixels": 50_000_000})
    good = {"b64_json": base64.b64encode(fixtures.astronaut_png()).decode()}
    bad = {"b64_json": base64.b64encode(data).decode()}
    openai.script("generations", Reply(200, {"created": 1, "data": [good, bad]}))
    job = await api.submit("cx_image", {"prompt": "x", "n": 2})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["error"]["code"] == "provider_error"
    assert doc["error"]["message"].startswith("openai returned an image ahv cannot read")
    assert said in doc["error"]["message"]
    assert list(api.orchestrator.files_dir.iterdir()) == []  # not even the good one


async def test_insufficient_quota_is_not_retried(
    start_server: StartServer, openai: FakeOpenAI
) -> None:
    message = "You exceeded your current quota, please check your plan and billing details."
    openai.script(
        "generations", openai_error(429, message, "insufficient_quota", "insufficient_quota")
    )
    api = await start(start_server, openai, queue={"max_attempts": 3})
    job = await api.submit("cx_image", {"prompt": "x"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["attempts"] == 1
    assert doc["error"] == {
        "code": "provider_error",
        "message": f"openai answered HTTP 429: {message}",
    }
    assert len(openai.of("generations")) == 1
