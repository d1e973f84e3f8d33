"""`ahv_video`: Veo 3.1 text-to-video and image-to-video through the Gemini API.

The long-running operation is started, polled with backoff (`providers.google.poll_*`) until
done, and its video is downloaded into /files/. The job's progress is an estimate from the
time waited (the Gemini API reports none). A cancel (or timeout) stops at the next poll; the
Gemini API documents no cancel call for these operations, so the remote one runs out.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from ahv.errors import AhvError
from ahv.providers import google_wire as wire
from ahv.providers.google import GeminiClient, safety_reason
from ahv.providers.transport import blocked
from ahv.tasks.base import OutputFile, TaskContext, TaskOutput, TaskSpec
from ahv.tasks.gen_common import ModelOverride, Prompt, hub, key_kept_out, load_image
from ahv.video import probe_video

# Transient poll failures in a row tolerated before the job itself is retried (a retry
# starts a new, billed, generation; a missed poll costs nothing).
_POLL_RETRIES = 3
# Time scale of the progress estimate: about 2/3 of the way after this many seconds.
_EXPECTED_S = 60.0
# google.rpc.Code values worth another attempt: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
# INTERNAL, UNAVAILABLE (https://cloud.google.com/apis/design/errors#handling_errors).
_TRANSIENT_CODES = frozenset({4, 8, 13, 14})


class AhvVideoPayload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Veo 3.1 (`providers.google.veo_model`): text-to-video, or image-to-video from a first
    frame."""

    prompt: Prompt
    image_url: Annotated[
        str | None,
        msgspec.Meta(description="First frame of the video (image-to-video)."),
    ] = None
    duration_s: Annotated[
        Literal[4, 6, 8] | None,
        msgspec.Meta(description="Length of the video in seconds (the model's default: 8)."),
    ] = None
    aspect_ratio: Annotated[
        Literal["16:9", "9:16"] | None,
        msgspec.Meta(description="Landscape or portrait (the model's default: 16:9)."),
    ] = None
    resolution: Annotated[
        Literal["720p", "1080p", "4k"] | None,
        msgspec.Meta(
            description="Video resolution (the model's default: 720p; Veo 3.1 makes 1080p and "
            "4k videos of 8 s only)."
        ),
    ] = None
    negative_prompt: (
        Annotated[str, msgspec.Meta(max_length=8000, description="What the video should not show.")]
        | None
    ) = None
    model: ModelOverride | None = None


async def run_ahv_video(ctx: TaskContext, payload: AhvVideoPayload) -> TaskOutput:
    client = hub(ctx).google()
    model = payload.model or client.settings.veo_model
    first_frame = None
    if payload.image_url is not None:
        first_frame = await load_image(ctx, payload.image_url, "image_url")
    ctx.progress(5)
    with key_kept_out(client):
        name = await client.start_video(
            model,
            prompt=payload.prompt,
            first_frame=first_frame,
            duration_s=payload.duration_s,
            aspect_ratio=payload.aspect_ratio,
            resolution=payload.resolution,
            negative_prompt=payload.negative_prompt,
        )
        operation = await _wait(ctx, client, name)
        uris = _video_uris(operation)
        ctx.progress(90)
        files = [await _download(ctx, client, uri, i) for i, uri in enumerate(uris)]
    meta: dict[str, Any] = {
        **files[0].meta,
        "provider": "google",
        "model": model,
        "mode": "image-to-video" if first_frame is not None else "text-to-video",
        "videos": len(files),
    }
    return TaskOutput(filename=files[0].filename, meta=meta, files=files)


async def _wait(ctx: TaskContext, client: GeminiClient, name: str) -> wire.Operation:
    """Poll the operation until it is done, with backoff; stops at once on cancel."""
    settings = client.settings
    loop = asyncio.get_running_loop()
    started = loop.time()
    interval = settings.poll_interval_s
    failures = 0
    while True:
        ctx.checkpoint()
        await asyncio.sleep(interval)
        ctx.checkpoint()
        interval = min(interval * 1.5, settings.poll_max_interval_s)
        try:
            operation = await client.operation(name)
        except AhvError as exc:
            failures += 1
            if not exc.transient or failures > _POLL_RETRIES:
                raise
            interval = max(interval, exc.retry_after_s or 0.0)
            continue
        failures = 0
        if operation.done:
            return operation
        waited = loop.time() - started
        ctx.progress(10 + int(75 * (1 - math.exp(-waited / _EXPECTED_S))))


def _video_uris(operation: wire.Operation) -> list[str]:
    """The videos of a finished operation, or the error that says why there are none."""
    if operation.error is not None:
        error = operation.error
        reason = safety_reason(error.message)
        if reason is not None:
            raise blocked("google", reason)
        raise AhvError(
            "provider_error",
            f"google: the video generation failed (code {error.code}): {error.message}",
            transient=error.code in _TRANSIENT_CODES,
        )
    response = operation.response or wire.OperationResponse()
    video = response.generate_video_response or wire.GenerateVideoResponse()
    samples = video.generated_samples or response.generated_samples
    uris = [s.video.uri for s in samples if s.video is not None and s.video.uri]
    if uris:
        return uris
    if video.rai_media_filtered_count or video.rai_media_filtered_reasons:
        reasons = "; ".join(video.rai_media_filtered_reasons)
        raise blocked("google", reasons or f"{video.rai_media_filtered_count} video(s) filtered")
    raise AhvError("provider_error", "google: the finished operation holds no video")


async def _download(ctx: TaskContext, client: GeminiClient, uri: str, index: int) -> OutputFile:
    name, part = ctx.new_output("mp4")
    max_bytes = ctx.config.video.max_bytes
    sink = await asyncio.to_thread(Path(part).open, "wb")
    try:
        elsewhere = await client.download(uri, sink, max_bytes=max_bytes)
        if elsewhere is not None:  # a redirect off the API host: no key, guarded fetcher
            await ctx.fetch(
                elsewhere, field=f"google video {index}", sink=sink, max_bytes=max_bytes
            )
    finally:
        await asyncio.to_thread(sink.close)
    try:
        # The provider's output, probed for its meta only: no input limits apply.
        info = await ctx.run_in_thread(
            probe_video,
            part,
            max_duration_s=math.inf,
            max_frames=2**62,
            max_pixels=2**62,
            field=f"google video {index}",
        )
    except AhvError as exc:
        raise AhvError(
            "provider_error", f"google returned a video ahv cannot read ({exc.message})"
        ) from None
    size = await asyncio.to_thread(lambda: part.stat().st_size)
    await asyncio.to_thread(ctx.publish_output, name)
    meta = {
        "width": info.width,
        "height": info.height,
        "duration_s": round(info.duration_s, 3),
        "fps": round(info.fps, 3),
        "has_audio": info.has_audio,
        "mime": "video/mp4",
        "bytes": size,
        "index": index,
    }
    return OutputFile(filename=name, meta=meta)


AHV_VIDEO = TaskSpec(
    name="ahv_video",
    payload_type=AhvVideoPayload,
    run=run_ahv_video,
    url_fields=("image_url",),
    direct_path="/ahv/video",
    default_predict_s=90.0,
    provider=lambda config: "google",
)
