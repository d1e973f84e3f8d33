"""gg_image (Imagen 4), ahv_video (Veo 3.1) and ahv_image (Gemini image output) through the
real server, against a local server speaking the Gemini API's wire format."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import pytest

from tests import media as fixtures
from tests.conftest import Api, MediaServer, Receiver, StartServer, merge
from tests.fake_providers import FakeGoogle, Reply, b64, decode_image, google_error, png

GOOGLE_KEY = "AIzaSyTEST-google-key-5e1c0f9a7b"
FAST_POLLS = {"poll_interval_s": 0.05, "poll_max_interval_s": 0.1}


@pytest.fixture
async def google(aiohttp_server: Any) -> FakeGoogle:
    return await FakeGoogle.start(aiohttp_server, GOOGLE_KEY)


async def start(start_server: StartServer, google: FakeGoogle, **overrides: Any) -> Api:
    section = {"api_key": GOOGLE_KEY, "base_url": google.url, **FAST_POLLS}
    return await start_server(**merge({"providers": {"google": section}}, overrides))


async def download(api: Api, url: str) -> bytes:
    async with api.session.get(url) as response:
        assert response.status == 200, url
        return await response.read()


# -- gg_image: Imagen ------------------------------------------------------------------------


async def test_gg_image_several_images(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    api = await start(start_server, google)
    payload = {
        "prompt": "a red fox in snow",
        "number_of_images": 3,
        "aspect_ratio": "16:9",
        "image_size": "2K",
        "negative_prompt": "blur",
    }
    job = await api.submit("gg_image", payload, webhook_url=receiver.url("/ok"))
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    result = doc["result"]
    files = result["files"]
    assert len(files) == 3 and len({f["filename"] for f in files}) == 3
    assert result["url"] == files[0]["url"] and result["filename"] == files[0]["filename"]
    assert result["meta"]["provider"] == "google" and result["meta"]["images"] == 3
    assert result["meta"]["model"] == "imagen-4.0-generate-001"
    assert result["meta"]["backend"].startswith("google-")
    for i, entry in enumerate(files):
        assert (api.orchestrator.files_dir / entry["filename"]).is_file()
        pixels = decode_image(await download(api, entry["url"]))
        assert pixels is not None and pixels.shape[:2] == (36, 64)
        assert entry["meta"] | {"bytes": 0} == {
            "width": 64, "height": 36, "mime": "image/png", "index": i, "bytes": 0,
        }  # fmt: skip

    (call,) = google.of("predict")
    assert call.path == "/v1beta/models/imagen-4.0-generate-001:predict"
    assert call.headers["x-goog-api-key"] == GOOGLE_KEY
    # Imagen 4 on the Gemini API has no negativePrompt: it is said in the prompt.
    assert call.body == {
        "instances": [{"prompt": "a red fox in snow\n\nAvoid: blur"}],
        "parameters": {
            "sampleCount": 3,
            "aspectRatio": "16:9",
            "sampleImageSize": "2K",
            "includeRaiReason": True,
        },
    }
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "succeeded"
    assert delivery.json["result"]["files"] == files


async def test_gg_image_blocking_endpoint_with_model_override(
    start_server: StartServer, google: FakeGoogle
) -> None:
    api = await start(start_server, google)
    status, doc, _ = await api.call(
        "POST",
        "/gg/image",
        json={"prompt": "a lighthouse", "model": "imagen-4.0-fast-generate-001"},
    )
    assert status == 200 and doc["status"] == "succeeded", doc
    assert len(doc["result"]["files"]) == 1 and doc["result"]["url"]
    assert google.of("predict")[0].path == "/v1beta/models/imagen-4.0-fast-generate-001:predict"

    status, body, _ = await api.call("POST", "/gg/image", json={"prompt": "x", "model": "../files"})
    assert status == 422 and body["error"]["code"] == "invalid_payload"
    assert "payload.model" in body["error"]["message"]
    status, body, _ = await api.call(
        "POST", "/gg/image", json={"prompt": "x", "number_of_images": 5}
    )
    assert status == 422 and "payload.number_of_images" in body["error"]["message"]


async def test_gg_image_safety_filter_rejects(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    api = await start(start_server, google)
    google.imagen_filtered = 2
    job = await api.submit(
        "gg_image", {"prompt": "something", "number_of_images": 2}, webhook_url=receiver.url("/ok")
    )
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "rejected" and doc["ok"] is False
    assert doc["error"]["code"] == "content_blocked"
    assert "Filtered for sexual content" in doc["error"]["message"]
    assert doc["attempts"] == 1 and doc["result"] is None
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "rejected"
    assert delivery.json["error"]["code"] == "content_blocked"

    # Some filtered, some not: the job succeeds with what came back, and says so.
    google.imagen_filtered = 1
    job = await api.submit("gg_image", {"prompt": "something", "number_of_images": 3})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded"
    assert len(doc["result"]["files"]) == 2
    assert doc["result"]["meta"]["filtered"] == ["Filtered for sexual content (58061214)."]


async def test_429_is_retried_after_the_providers_retry_delay(
    start_server: StartServer, google: FakeGoogle
) -> None:
    # Google says when to come back in RetryInfo (no Retry-After header): 1 s, while the
    # queue's own backoff here is 0.05 s (honoured up to queue.retry_max_s).
    retry_info = {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": "1s",
    }
    busy = google_error(
        429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED"
    )
    busy.body["error"]["details"] = [retry_info]
    google.script("predict", busy)
    api = await start(start_server, google, queue={"max_attempts": 2, "retry_max_s": 5})
    job = await api.submit("gg_image", {"prompt": "a boat"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["attempts"] == 2 and doc["error"] is None
    first, second = google.of("predict")
    assert second.at - first.at >= 1.0


async def test_500_until_the_attempts_are_spent(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    google.always["predict"] = google_error(500, "Internal error encountered.", "INTERNAL")
    api = await start(start_server, google, queue={"max_attempts": 3})
    job = await api.submit("gg_image", {"prompt": "a boat"}, webhook_url=receiver.url("/ok"))
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["attempts"] == 3
    assert doc["error"]["code"] == "provider_error"
    assert "HTTP 500" in doc["error"]["message"]
    assert "Internal error encountered." in doc["error"]["message"]
    assert len(google.of("predict")) == 3
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "failed"


async def test_bad_parameters_fail_at_once_quoting_the_provider(
    start_server: StartServer, google: FakeGoogle
) -> None:
    message = "Allow (All ages) for personGeneration is currently not supported."
    google.script("predict", google_error(400, message, "INVALID_ARGUMENT"))
    api = await start(start_server, google, queue={"max_attempts": 3})
    job = await api.submit("gg_image", {"prompt": "kids", "person_generation": "allow_all"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["attempts"] == 1
    assert doc["error"] == {
        "code": "provider_error",
        "message": f"google answered HTTP 400: {message}",
    }
    assert google.of("predict")[0].body["parameters"]["personGeneration"] == "allow_all"


# -- ahv_video: Veo --------------------------------------------------------------------------


async def test_ahv_video_text_to_video(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    google.polls_until_done = 3
    api = await start(start_server, google)
    payload = {
        "prompt": "waves at dusk",
        "duration_s": 4,
        "aspect_ratio": "9:16",
        "resolution": "720p",
        "negative_prompt": "rain",
    }
    job = await api.submit(
        "ahv_video", payload, webhook_url=receiver.url("/v"), webhook_events=["job.progress"]
    )
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["progress"] == 100
    meta = doc["result"]["meta"]
    assert (meta["width"], meta["height"], meta["mime"]) == (64, 48, "video/mp4")
    assert meta["duration_s"] > 0 and meta["mode"] == "text-to-video"
    assert meta["model"] == "veo-3.1-generate-preview"
    assert doc["result"]["filename"].endswith(".mp4")
    assert await download(api, doc["result"]["url"]) == google.video_bytes

    (start_call,) = google.of("veo")
    assert start_call.path == "/v1beta/models/veo-3.1-generate-preview:predictLongRunning"
    assert start_call.body == {
        "instances": [{"prompt": "waves at dusk"}],
        "parameters": {
            "aspectRatio": "9:16",
            "durationSeconds": 4,
            "resolution": "720p",
            "negativePrompt": "rain",
        },
    }
    polls = google.of("poll")
    assert len(polls) == 3
    assert {p.path for p in polls} == {"/v1beta/models/veo-3.1-generate-preview/operations/op1"}
    assert all(p.headers["x-goog-api-key"] == GOOGLE_KEY for p in polls)
    (fetched,) = google.of("download")
    assert fetched.path == "/v1beta/files/op1:download?alt=media"
    assert fetched.headers["x-goog-api-key"] == GOOGLE_KEY
    progress = [d.json["progress"] for d in receiver.at("/v") if d.json["event"] == "job.progress"]
    assert progress and progress == sorted(progress) and max(progress) < 100


async def test_ahv_video_blocking_image_to_video(
    start_server: StartServer, google: FakeGoogle, media: MediaServer
) -> None:
    api = await start(start_server, google)
    frame_url = media.add("frame.jpg", fixtures.exif_rotated_jpeg(6))
    status, doc, _ = await api.call(
        "POST", "/ahv/video", json={"prompt": "she turns", "image_url": frame_url}
    )
    assert status == 200 and doc["status"] == "succeeded", doc
    assert doc["result"]["meta"]["mode"] == "image-to-video"
    image = google.of("veo")[0].body["instances"][0]["image"]
    assert image["mimeType"] == "image/jpeg"
    pixels = decode_image(base64.b64decode(image["bytesBase64Encoded"]))
    # The first frame went through the input decoder: EXIF orientation applied.
    width, height = fixtures.EXIF_UPRIGHT_SIZE
    assert pixels is not None and pixels.shape[:2] == (height, width)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (fixtures.truncated_jpeg(), "corrupt_input"),
        (fixtures.text_file(), "unsupported_media_type"),
        (fixtures.huge_header_png(20000, 20000), "image_too_large"),
    ],
)
async def test_ahv_video_bad_first_frame_is_refused_like_local_inputs(
    start_server: StartServer, google: FakeGoogle, media: MediaServer, data: bytes, code: str
) -> None:
    api = await start(start_server, google)
    job = await api.submit("ahv_video", {"prompt": "x", "image_url": media.add("frame.bin", data)})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["error"]["code"] == code
    assert "image_url" in doc["error"]["message"]
    assert google.of("veo") == []  # nothing was sent to the provider


async def test_cancel_while_polling_stops_the_polls(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    google.polls_until_done = 10**9
    api = await start(start_server, google)
    job = await api.submit("ahv_video", {"prompt": "forever"}, webhook_url=receiver.url("/ok"))
    await google.wait_calls("poll", 2)
    status, _, _ = await api.call("POST", f"/v1/jobs/{job['job_id']}/cancel")
    assert status == 200
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "canceled"
    seen = len(google.of("poll"))
    await asyncio.sleep(0.5)  # five poll intervals
    assert len(google.of("poll")) == seen
    assert google.of("download") == []
    assert list(api.orchestrator.files_dir.iterdir()) == []
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "canceled"


async def test_veo_safety_filter_rejects(start_server: StartServer, google: FakeGoogle) -> None:
    google.video_filtered = True
    api = await start(start_server, google)
    job = await api.submit("ahv_video", {"prompt": "x"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "rejected" and doc["error"]["code"] == "content_blocked"
    assert "filtered by our safety system" in doc["error"]["message"]
    assert google.of("download") == []


async def test_poll_errors_are_tolerated_then_the_operation_error_is_reported(
    start_server: StartServer, google: FakeGoogle
) -> None:
    api = await start(start_server, google, queue={"max_attempts": 1})
    # A 503 on one poll costs a poll, not the generation.
    google.script("poll", google_error(503, "The service is currently unavailable.", "UNAVAILABLE"))
    job = await api.submit("ahv_video", {"prompt": "x"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert len(google.of("veo")) == 1

    failed_op = {"name": "models/m/operations/op2", "done": True}
    failed_op["error"] = {"code": 3, "message": "Unsupported resolution for this model."}
    google.script("poll", Reply(200, failed_op))
    job = await api.submit("ahv_video", {"prompt": "y"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["error"]["code"] == "provider_error"
    assert "Unsupported resolution for this model." in doc["error"]["message"]


# -- ahv_image: Gemini image output ----------------------------------------------------------


async def test_ahv_image_text_and_image_to_image(
    start_server: StartServer, google: FakeGoogle, media: MediaServer
) -> None:
    api = await start(start_server, google)
    job = await api.submit("ahv_image", {"prompt": "a cat", "aspect_ratio": "16:9"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    meta = doc["result"]["meta"]
    assert (meta["width"], meta["height"]) == (64, 36)
    assert meta["model"] == "gemini-2.5-flash-image" and meta["mode"] == "text-to-image"
    assert meta["text"] == "Here it is."
    (call,) = google.of("generate")
    assert call.path == "/v1beta/models/gemini-2.5-flash-image:generateContent"
    assert call.body == {
        "contents": [{"role": "user", "parts": [{"text": "a cat"}]}],
        "generationConfig": {
            "responseModalities": ["TEXT", "IMAGE"],
            "imageConfig": {"aspectRatio": "16:9"},
        },
    }

    urls = [
        media.add("astronaut.png", fixtures.astronaut_png()),
        media.add("alpha.png", fixtures.rgba_png()),
    ]
    status, doc, _ = await api.call(
        "POST", "/ahv/image", json={"prompt": "put them together", "image_urls": urls}
    )
    assert status == 200 and doc["status"] == "succeeded", doc
    assert doc["result"]["meta"]["mode"] == "image-to-image"
    parts = google.of("generate")[1].body["contents"][0]["parts"]
    assert parts[0] == {"text": "put them together"}
    # Re-encoded by ahv: JPEG without alpha, PNG with it.
    assert [p["inline_data"]["mime_type"] for p in parts[1:]] == ["image/jpeg", "image/png"]
    first = decode_image(base64.b64decode(parts[1]["inline_data"]["data"]))
    second = decode_image(base64.b64decode(parts[2]["inline_data"]["data"]))
    assert first is not None and first.shape == (512, 512, 3)
    assert second is not None and second.shape[2] == 4


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("block_reason", "PROHIBITED_CONTENT", "prompt blocked (PROHIBITED_CONTENT)"),
        ("finish_reason", "IMAGE_SAFETY", "finishReason IMAGE_SAFETY"),
    ],
)
async def test_ahv_image_blocks_are_rejected(
    start_server: StartServer, google: FakeGoogle, setting: str, value: str, said: str
) -> None:
    setattr(google, setting, value)
    api = await start(start_server, google)
    job = await api.submit("ahv_image", {"prompt": "x"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "rejected" and doc["error"]["code"] == "content_blocked"
    assert said in doc["error"]["message"]


async def test_ahv_image_several_images_from_one_answer(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    # One candidate with text and three images interleaved: every image is a result file.
    google.generate_images = 3
    api = await start(start_server, google)
    job = await api.submit(
        "ahv_image",
        {"prompt": "three cats", "aspect_ratio": "4:3"},
        webhook_url=receiver.url("/ok"),
    )
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["attempts"] == 1 and len(google.of("generate")) == 1
    result = doc["result"]
    files = result["files"]
    assert len(files) == 3 and len({f["filename"] for f in files}) == 3
    assert result["url"] == files[0]["url"] and result["filename"] == files[0]["filename"]
    meta = result["meta"]
    assert (meta["provider"], meta["model"], meta["images"]) == (
        "google",
        "gemini-2.5-flash-image",
        3,
    )
    assert meta["mode"] == "text-to-image" and meta["backend"].startswith("google-")
    assert meta["text"] == "Here it is. And number 2. And number 3."
    for i, entry in enumerate(files):
        # Each file is the provider's i-th image, byte for byte, in the provider's order.
        expected = png(64, 48, i)
        assert await download(api, entry["url"]) == expected
        assert (api.orchestrator.files_dir / entry["filename"]).read_bytes() == expected
        assert entry["meta"] == {
            "width": 64, "height": 48, "mime": "image/png", "bytes": len(expected), "index": i,
        }  # fmt: skip
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "succeeded"
    assert delivery.json["result"]["files"] == files


async def test_ahv_image_leaves_out_a_thinking_models_draft_images(
    start_server: StartServer, google: FakeGoogle
) -> None:
    # Thinking image models send interim images and text marked thought: true before the
    # answer: only the answer's image is the result, only its text the meta.
    google.thought_images = 2
    api = await start(start_server, google)
    job = await api.submit("ahv_image", {"prompt": "a cat", "aspect_ratio": "4:3"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    (entry,) = doc["result"]["files"]
    assert await download(api, entry["url"]) == png(64, 48, 0)
    assert doc["result"]["meta"]["images"] == 1
    assert doc["result"]["meta"]["text"] == "Here it is."


def gemini_quota_error(retry_delay: str) -> Reply:
    """A 429 as the Gemini API sends it: RESOURCE_EXHAUSTED, with QuotaFailure and RetryInfo
    details and no Retry-After header (https://ai.google.dev/gemini-api/docs/troubleshooting,
    https://cloud.google.com/apis/design/errors)."""
    reply = google_error(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "RESOURCE_EXHAUSTED",
    )
    reply.body["error"]["details"] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_requests"}],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
    ]
    return reply


async def test_ahv_image_429_then_success_after_the_retry_delay(
    start_server: StartServer, google: FakeGoogle
) -> None:
    # Google's retryDelay (0.5 s) is waited, not the queue's own backoff (<= 0.075 s here).
    google.script("generate", gemini_quota_error("0.500s"))
    api = await start(start_server, google, queue={"max_attempts": 3, "retry_max_s": 5})
    job = await api.submit("ahv_image", {"prompt": "a boat"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["attempts"] == 2 and doc["error"] is None
    assert len(doc["result"]["files"]) == 1
    assert await download(api, doc["result"]["url"]) == png(64, 64, 0)
    first, second = google.of("generate")
    assert second.at - first.at >= 0.5
    assert first.body == second.body  # the same request, sent again


async def test_ahv_image_500_until_the_attempts_are_spent(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    google.always["generate"] = google_error(500, "Internal error encountered.", "INTERNAL")
    api = await start(start_server, google, queue={"max_attempts": 3})
    job = await api.submit("ahv_image", {"prompt": "a boat"}, webhook_url=receiver.url("/ok"))
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["ok"] is False
    assert doc["attempts"] == 3 and doc["result"] is None
    assert doc["error"] == {
        "code": "provider_error",
        "message": "google answered HTTP 500: Internal error encountered.",
    }
    assert len(google.of("generate")) == 3
    await asyncio.sleep(0.4)  # longer than a queue backoff (<= 0.3 s): no attempt after the last
    assert len(google.of("generate")) == 3
    assert list(api.orchestrator.files_dir.iterdir()) == []
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "failed"
    assert delivery.json["error"]["code"] == "provider_error"


async def test_cancel_during_a_gemini_image_call_in_flight_ends_at_once(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    google.delay_s = 5.0
    api = await start(start_server, google, queue={"cancel_wait_s": 10})
    job = await api.submit("ahv_image", {"prompt": "slow"}, webhook_url=receiver.url("/ok"))
    await google.wait_calls("generate", 1)
    started = asyncio.get_running_loop().time()
    status, _, _ = await api.call("POST", f"/v1/jobs/{job['job_id']}/cancel")
    assert status == 200
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "canceled" and doc["result"] is None and doc["attempts"] == 1
    # Neither the 5 s answer nor the 10 s cancel_wait_s grace was waited out.
    assert asyncio.get_running_loop().time() - started < 2.0
    # ahv hung up on the provider: the request was abandoned, not left running.
    await google.wait_hangup("generate")
    await asyncio.sleep(0.3)
    assert len(google.of("generate")) == 1  # and not sent again
    _, diag, _ = await api.call("GET", "/diag/backends")
    (row,) = [r for r in diag["backends"] if r["name"] == "google"]
    assert row["busy"] == 0
    assert list(api.orchestrator.files_dir.iterdir()) == []
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "canceled"


# -- ahv_video: Veo, 429 and 5xx ---------------------------------------------------------------


async def test_veo_429_on_the_start_retries_the_job_after_the_retry_delay(
    start_server: StartServer, google: FakeGoogle
) -> None:
    google.script("veo", gemini_quota_error("0.500s"))
    api = await start(start_server, google, queue={"max_attempts": 3, "retry_max_s": 5})
    job = await api.submit("ahv_video", {"prompt": "waves", "duration_s": 4})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["attempts"] == 2 and doc["error"] is None
    first, second = google.of("veo")
    assert second.at - first.at >= 0.5
    assert first.body == second.body
    # Only the second start made an operation: it alone was polled, then downloaded.
    polls = google.of("poll")
    assert len(polls) == google.polls_until_done
    assert {p.path for p in polls} == {"/v1beta/models/veo-3.1-generate-preview/operations/op1"}
    (fetched,) = google.of("download")
    assert fetched.path == "/v1beta/files/op1:download?alt=media"
    assert len(doc["result"]["files"]) == 1
    assert await download(api, doc["result"]["url"]) == google.video_bytes


async def test_veo_429_on_a_poll_waits_the_retry_delay_without_a_new_generation(
    start_server: StartServer, google: FakeGoogle
) -> None:
    # A poll answered 429 is polled again after Google's retryDelay, within the same attempt:
    # no second (billed) generation is started.
    google.script("poll", gemini_quota_error("0.500s"))
    api = await start(start_server, google, queue={"max_attempts": 3})
    job = await api.submit("ahv_video", {"prompt": "waves"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["attempts"] == 1 and doc["error"] is None
    assert len(google.of("veo")) == 1
    limited, *after = google.of("poll")
    assert len(after) == google.polls_until_done  # the 429 counted for nothing
    assert after[0].at - limited.at >= 0.5  # FAST_POLLS would have polled within 0.1 s
    assert len(google.of("download")) == 1
    assert await download(api, doc["result"]["url"]) == google.video_bytes


async def test_veo_5xx_on_the_start_until_the_attempts_are_spent(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    google.always["veo"] = google_error(503, "The model is overloaded.", "UNAVAILABLE")
    api = await start(start_server, google, queue={"max_attempts": 3})
    job = await api.submit("ahv_video", {"prompt": "waves"}, webhook_url=receiver.url("/ok"))
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["ok"] is False
    assert doc["attempts"] == 3 and doc["result"] is None
    assert doc["error"] == {
        "code": "provider_error",
        "message": "google answered HTTP 503: The model is overloaded.",
    }
    assert len(google.of("veo")) == 3
    await asyncio.sleep(0.4)  # longer than a queue backoff (<= 0.3 s): no attempt after the last
    assert len(google.of("veo")) == 3
    assert google.of("poll") == [] and google.of("download") == []
    assert list(api.orchestrator.files_dir.iterdir()) == []
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "failed"
    assert delivery.json["error"] == doc["error"]


async def test_veo_500_on_every_poll_until_the_attempts_are_spent(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    # Each attempt starts one operation and polls it: the first poll and 3 more tolerated
    # failures in a row (gen_video._POLL_RETRIES), then the attempt fails and the job is
    # retried; the second attempt's failure is final.
    google.polls_until_done = 10**9
    google.always["poll"] = google_error(500, "Internal error encountered.", "INTERNAL")
    api = await start(start_server, google, queue={"max_attempts": 2})
    job = await api.submit("ahv_video", {"prompt": "waves"}, webhook_url=receiver.url("/ok"))
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["ok"] is False
    assert doc["attempts"] == 2 and doc["result"] is None
    assert doc["error"] == {
        "code": "provider_error",
        "message": "google answered HTTP 500: Internal error encountered.",
    }
    assert len(google.of("veo")) == 2
    polls = [p.path.rsplit("/", 1)[1] for p in google.of("poll")]
    assert polls == ["op1"] * 4 + ["op2"] * 4
    await asyncio.sleep(0.4)  # four poll intervals, or a queue backoff: nothing after the end
    assert len(google.of("poll")) == 8 and len(google.of("veo")) == 2
    assert google.of("download") == []
    assert list(api.orchestrator.files_dir.iterdir()) == []
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["status"] == "failed"
    assert delivery.json["error"] == doc["error"]


# -- the key stays secret ----------------------------------------------------------------------


async def test_the_api_key_never_shows(
    start_server: StartServer,
    google: FakeGoogle,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    api = await start(start_server, google, queue={"max_attempts": 2})
    # A provider that echoes the key back in its error message.
    echo = f"API key not valid: {GOOGLE_KEY} (AIzaSy***{GOOGLE_KEY[-4:]})"
    google.script("predict", google_error(400, echo, "INVALID_ARGUMENT"))
    google.script("veo", google_error(503, f"overloaded, key {GOOGLE_KEY}", "UNAVAILABLE"))
    google.script("veo", google_error(503, f"overloaded, key {GOOGLE_KEY}", "UNAVAILABLE"))
    jobs = [
        await api.submit("gg_image", {"prompt": "a"}, webhook_url=receiver.url("/ok")),
        await api.submit("ahv_video", {"prompt": "b"}, webhook_url=receiver.url("/ok")),
        await api.submit("ahv_image", {"prompt": "c"}, webhook_url=receiver.url("/ok")),
    ]
    docs = [await api.wait(job["job_id"]) for job in jobs]
    assert [d["status"] for d in docs] == ["failed", "failed", "succeeded"]
    assert "[api key]" in docs[0]["error"]["message"]
    deliveries = await receiver.wait_for("/ok", 3)
    _, diag, _ = await api.call("GET", "/diag/backends")
    _, stats, _ = await api.call("GET", "/stats")
    seen = [str(d) for d in docs] + [d.body.decode() for d in deliveries]
    seen += [str(diag), str(stats), caplog.text]
    for text in seen:
        assert GOOGLE_KEY not in text
        assert GOOGLE_KEY[-10:] not in text


async def test_result_files_are_deleted_with_the_job(
    start_server: StartServer, google: FakeGoogle
) -> None:
    api = await start(start_server, google)
    job = await api.submit("gg_image", {"prompt": "a", "number_of_images": 3})
    doc = await api.wait(job["job_id"])
    names = [f["filename"] for f in doc["result"]["files"]]
    assert all((api.orchestrator.files_dir / n).is_file() for n in names)
    status, _, _ = await api.call("DELETE", f"/v1/jobs/{job['job_id']}")
    assert status in (200, 204)
    assert not any((api.orchestrator.files_dir / n).exists() for n in names)


async def test_video_download_keeps_the_key_on_the_providers_host(
    start_server: StartServer, google: FakeGoogle, media: MediaServer, aiohttp_server: Any
) -> None:
    api = await start(start_server, google)
    # The API redirects the download to storage elsewhere: followed through the input
    # fetcher, without the key.
    google.script(
        "download", Reply(302, headers={"Location": media.add("v.mp4", google.video_bytes)})
    )
    job = await api.submit("ahv_video", {"prompt": "x"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    assert await download(api, doc["result"]["url"]) == google.video_bytes

    storage = await FakeGoogle.start(aiohttp_server, GOOGLE_KEY)
    google.script("download", Reply(307, headers={"Location": f"{storage.url}/v1beta/files/s"}))
    job = await api.submit("ahv_video", {"prompt": "y"})
    doc = await api.wait(job["job_id"])
    (hop,) = storage.of("download")
    assert "x-goog-api-key" not in {name.lower() for name in hop.headers}
    assert doc["status"] == "failed" and doc["error"]["code"] == "download_failed"

    # A result URI on another host is not downloaded at all.
    foreign = {"generatedSamples": [{"video": {"uri": f"{storage.url}/v1beta/files/x"}}]}
    done = {"name": "models/m/operations/op9", "done": True}
    done["response"] = {"generateVideoResponse": foreign}
    google.script("poll", Reply(200, done))
    job = await api.submit("ahv_video", {"prompt": "z"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["error"]["code"] == "provider_error"
    assert "not the provider's" in doc["error"]["message"]
    assert len(storage.of("download")) == 1


# -- what the real API answers, beyond the happy path -----------------------------------------


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        # Imagen's refusal of a prompt (HTTP 400), as the API words it.
        ("predict", "Image generation failed with the following error: The response is "
         "blocked, as it may violate our policies. If you believe this is an error, please "
         "send feedback to your account team. Error Code: 58061214"),
        ("predict", "Image generation failed with the following error: The prompt could not "
         "be submitted. Your current safety filter threshold prohibited one or more words in "
         "this prompt. If you think this was an error, send feedback."),
        # Veo's refusal, in the finished operation's `error`.
        ("poll", "The prompt could not be submitted. This prompt contains sensitive words that "
         "violate Google's Responsible AI practices. Try rephrasing your prompt, or contact "
         "your Google representative to request allowlisting. Support codes: 58061214"),
    ],
)  # fmt: skip
async def test_googles_refusal_messages_are_rejected(
    start_server: StartServer, google: FakeGoogle, kind: str, message: str
) -> None:
    api = await start(start_server, google, queue={"max_attempts": 3})
    if kind == "predict":
        google.script("predict", google_error(400, message, "INVALID_ARGUMENT"))
        job = await api.submit("gg_image", {"prompt": "x"})
    else:
        refused = {"name": "models/m/operations/op1", "done": True}
        refused["error"] = {"code": 3, "message": message}
        google.script("poll", Reply(200, refused))
        job = await api.submit("ahv_video", {"prompt": "x"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "rejected" and doc["attempts"] == 1
    assert doc["error"]["code"] == "content_blocked"
    assert message in doc["error"]["message"]


async def test_the_key_is_scrubbed_from_everything_the_provider_says(
    start_server: StartServer,
    google: FakeGoogle,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    api = await start(start_server, google, queue={"max_attempts": 1})
    # A finished operation's error, a model's text-only answer, and filter reasons.
    failed_op = {"name": "models/m/operations/op1", "done": True}
    failed_op["error"] = {"code": 7, "message": f"API key {GOOGLE_KEY} lacks permission"}
    google.script("poll", Reply(200, failed_op))
    text_only = {"parts": [{"text": f"No image for key {GOOGLE_KEY}."}], "role": "model"}
    google.script("generate", Reply(200, {"candidates": [{"content": text_only}]}))
    filtered = {"predictions": [
        {"bytesBase64Encoded": b64(png(8, 8)), "mimeType": "image/png"},
        {"raiFilteredReason": f"Filtered (key {GOOGLE_KEY})."},
    ]}  # fmt: skip
    google.script("predict", Reply(200, filtered))
    jobs = [
        await api.submit("ahv_video", {"prompt": "a"}, webhook_url=receiver.url("/ok")),
        await api.submit("ahv_image", {"prompt": "b"}, webhook_url=receiver.url("/ok")),
        await api.submit(
            "gg_image", {"prompt": "c", "number_of_images": 2}, webhook_url=receiver.url("/ok")
        ),
    ]
    docs = [await api.wait(job["job_id"]) for job in jobs]
    assert [d["status"] for d in docs] == ["failed", "failed", "succeeded"]
    assert "lacks permission" in docs[0]["error"]["message"]
    assert "No image for key" in docs[1]["error"]["message"]
    assert docs[2]["result"]["meta"]["filtered"] == ["Filtered (key [api key])."]
    deliveries = await receiver.wait_for("/ok", 3)
    seen = [str(d) for d in docs] + [d.body.decode() for d in deliveries] + [caplog.text]
    for text in seen:
        assert GOOGLE_KEY not in text


async def test_a_video_on_the_apis_host_is_fetched_through_base_url(
    start_server: StartServer, google: FakeGoogle
) -> None:
    # The operation names the video on generativelanguage.googleapis.com; with a proxy (here
    # the stand-in) as base_url, the download goes through it like every other request.
    google.video_origin = "https://generativelanguage.googleapis.com"
    api = await start(start_server, google)
    job = await api.submit("ahv_video", {"prompt": "x"})
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "succeeded", doc["error"]
    (fetched,) = google.of("download")
    assert fetched.path == "/v1beta/files/op1:download?alt=media"
    assert fetched.headers["x-goog-api-key"] == GOOGLE_KEY
    assert await download(api, doc["result"]["url"]) == google.video_bytes


async def test_veo_4k_is_asked_for_as_the_api_spells_it(
    start_server: StartServer, google: FakeGoogle
) -> None:
    api = await start(start_server, google)
    status, doc, _ = await api.call(
        "POST", "/ahv/video", json={"prompt": "x", "resolution": "4k", "duration_s": 8}
    )
    assert status == 200 and doc["status"] == "succeeded", doc
    assert google.of("veo")[0].body["parameters"] == {"resolution": "4k", "durationSeconds": 8}
    status, body, _ = await api.call("POST", "/ahv/video", json={"prompt": "x", "resolution": "8k"})
    assert status == 422 and "payload.resolution" in body["error"]["message"]


async def test_a_veo_operation_that_never_finishes_times_out_and_polling_stops(
    start_server: StartServer, google: FakeGoogle, receiver: Receiver
) -> None:
    google.polls_until_done = 10**9
    api = await start(start_server, google, queue={"timeouts_s": {"ahv_video": 0.6}})
    job = await api.submit("ahv_video", {"prompt": "forever"}, webhook_url=receiver.url("/ok"))
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "failed" and doc["attempts"] == 1
    assert doc["error"]["code"] == "timeout"
    seen = len(google.of("poll"))
    assert seen >= 2
    await asyncio.sleep(0.5)  # five poll intervals
    assert len(google.of("poll")) == seen
    assert google.of("download") == [] and list(api.orchestrator.files_dir.iterdir()) == []
    (delivery,) = await receiver.wait_for("/ok")
    assert delivery.json["error"]["code"] == "timeout"


async def test_cancel_during_an_imagen_call_in_flight_ends_at_once(
    start_server: StartServer, google: FakeGoogle
) -> None:
    google.delay_s = 5.0
    api = await start(start_server, google, queue={"cancel_wait_s": 10})
    job = await api.submit("gg_image", {"prompt": "slow"})
    await google.wait_calls("predict", 1)
    started = asyncio.get_running_loop().time()
    status, _, _ = await api.call("POST", f"/v1/jobs/{job['job_id']}/cancel")
    assert status == 200
    doc = await api.wait(job["job_id"])
    assert doc["status"] == "canceled"
    # The request was abandoned, not waited out (nor the cancel_wait_s grace).
    assert asyncio.get_running_loop().time() - started < 2.0
    _, diag, _ = await api.call("GET", "/diag/backends")
    (row,) = [r for r in diag["backends"] if r["name"] == "google"]
    assert row["busy"] == 0
    assert list(api.orchestrator.files_dir.iterdir()) == []
