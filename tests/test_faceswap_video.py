"""`faceswap_video` through the real server, on clips made with PyAV from real face photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from ahv.models.face.mtcnn import build_mtcnn_models
from scripts.make_test_models import make_test_models
from tests import media as fixtures
from tests.conftest import Api, MediaServer, Receiver

FPS = 12
SIZE = (480, 272)


def photo(package: str, *parts: str, side: int = 200) -> np.ndarray:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    return cv2.resize(cv2.imread(str(path)), (side, side), interpolation=cv2.INTER_AREA)


def make_clip(
    path: Path, frames: int, *, audio: bool = True, two_faces: bool = False, blank: bool = False
) -> Path:
    """The astronaut moving right over a grey background (and, with `two_faces`, a second
    person moving left below her, so the two swap sides), with a 440 Hz tone."""
    astro = photo("skimage", "data", "astronaut.png", side=128)
    other = photo("insightface", "data", "images", "Tom_Hanks_54745.png", side=128)
    width, height = SIZE
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = container.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(frames):
            image = np.full((height, width, 3), 90, np.uint8)
            if not blank:
                x = 10 + (i * 300) // max(1, frames - 1)
                image[4:132, x : x + 128] = astro
                if two_faces:
                    x2 = 330 - (i * 300) // max(1, frames - 1)
                    image[140:268, x2 : x2 + 128] = other
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None:
            total = 16000 * frames // FPS
            tone = (np.sin(2 * np.pi * 440 * np.arange(total) / 16000) * 8000).astype(np.int16)
            for start in range(0, total, 1024):
                frame = av.AudioFrame.from_ndarray(
                    tone[start : start + 1024][None, :], format="s16", layout="mono"
                )
                frame.sample_rate, frame.pts = 16000, start
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def read_frames(data: bytes, tmp: Path) -> tuple[list[np.ndarray], float | None]:
    path = tmp / "out.mp4"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        audio = [s for s in container.streams if s.type == "audio"]
        audio_s = None
        if audio:
            audio_s = float(audio[0].duration * audio[0].time_base) if audio[0].duration else None
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    return frames, audio_s


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: Any) -> Path:
    directory = Path(tmp_path_factory.mktemp("models"))
    make_test_models(directory)
    build_mtcnn_models(directory)
    return directory


def video_config(models_dir: Path, **overrides: Any) -> dict[str, Any]:
    files = {name: {"file": f"{name}.onnx"} for name in ("w600k_r50", "inswapper_128")}
    config: dict[str, Any] = {
        "models": {"dir": str(models_dir), "files": files},
        "backends": [{"name": "cpu", "slots": 2, "tasks": ["faceswap_video"]}],
    }
    config.update(overrides)
    return config


async def fetch(api: Api, url: str) -> bytes:
    async with api.session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "video/mp4"
        return await response.read()


async def test_swap_keeps_frames_timing_and_audio(
    start_server: Any, models_dir: Path, media: MediaServer, receiver: Receiver, tmp_path: Path
) -> None:
    api = await start_server(**video_config(models_dir))
    clip = make_clip(tmp_path / "in.mp4", 24)
    job = await api.submit(
        "faceswap_video",
        {
            "target_url": media.add("clip.mp4", clip.read_bytes()),
            "source_url": media.add("face.png", fixtures.astronaut_png()),
        },
        webhook_url=receiver.url("/video"),
        webhook_events=["job.progress"],
    )
    finished = await receiver.wait_for("/video", event="job.finished", timeout_s=90)
    body = finished[0].json
    assert body["status"] == "succeeded", body["error"]
    meta = body["result"]["meta"]
    assert (meta["width"], meta["height"]) == SIZE
    assert meta["frames"] == 24 and abs(meta["duration_s"] - 2.0) < 0.1
    assert meta["has_audio"] is True and meta["frames_without_faces"] == 0
    progress = [
        d.json["progress"] for d in receiver.at("/video") if d.json["event"] == "job.progress"
    ]
    assert progress and progress == sorted(progress)
    before, _ = read_frames(clip.read_bytes(), tmp_path / "..")
    after, audio_s = read_frames(await fetch(api, body["result"]["url"]), tmp_path)
    assert len(after) == 24 and audio_s is not None and abs(audio_s - 2.0) < 0.1
    # The face changed; the far corner of the background did not (beyond codec noise).
    changed = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(after, before, strict=True)]
    assert max(float(d[4:132, :].mean()) for d in changed) > 1
    assert all(float(d[200:, 400:].mean()) < 2 for d in changed)
    assert job["job_id"] == body["job_id"]


async def test_target_face_is_followed_across_frames(
    start_server: Any, models_dir: Path, media: MediaServer, tmp_path: Path
) -> None:
    api = await start_server(**video_config(models_dir))
    clip = make_clip(tmp_path / "two.mp4", 24, audio=False, two_faces=True)
    job = await api.submit(
        "faceswap_video",
        {
            "target_url": media.add("two.mp4", clip.read_bytes()),
            "source_url": media.add("face.png", fixtures.astronaut_png()),
            # On the first frame the astronaut is face 0 (left); she ends up on the right.
            "target_faces_index": [0],
        },
    )
    doc = await api.wait(job["job_id"], timeout_s=90)
    assert doc["status"] == "succeeded", doc["error"]
    assert doc["result"]["meta"]["has_audio"] is False
    before, _ = read_frames(clip.read_bytes(), tmp_path / "..")
    after, audio_s = read_frames(await fetch(api, doc["result"]["url"]), tmp_path)
    assert audio_s is None
    for a, b in zip(after, before, strict=True):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert float(diff[4:132].mean()) > float(diff[140:268].mean())  # her row, not his


async def test_no_face_in_any_frame(
    start_server: Any, models_dir: Path, media: MediaServer, tmp_path: Path
) -> None:
    api = await start_server(**video_config(models_dir))
    clip = make_clip(tmp_path / "blank.mp4", 12, blank=True)
    job = await api.submit(
        "faceswap_video",
        {
            "target_url": media.add("blank.mp4", clip.read_bytes()),
            "source_url": media.add("face.png", fixtures.astronaut_png()),
        },
    )
    doc = await api.wait(job["job_id"], timeout_s=60)
    assert doc["status"] == "failed" and doc["error"]["code"] == "no_face_detected"
    assert list(api.orchestrator.files_dir.glob("*.mp4*")) == []


async def test_limits_and_cancel(
    start_server: Any, models_dir: Path, media: MediaServer, tmp_path: Path
) -> None:
    api = await start_server(**video_config(models_dir, video={"max_duration_s": 1.0}))
    clip = make_clip(tmp_path / "long.mp4", 24)
    source = media.add("face.png", fixtures.astronaut_png())
    job = await api.submit(
        "faceswap_video",
        {"target_url": media.add("c.mp4", clip.read_bytes()), "source_url": source},
    )
    doc = await api.wait(job["job_id"], timeout_s=60)
    assert doc["status"] == "failed" and doc["error"]["code"] == "video_too_long"
    assert "target_url" in doc["error"]["message"]
    ok_limits = await start_server(
        **video_config(models_dir), server={"data_dir": str(tmp_path / "second")}
    )
    late = await ok_limits.submit(
        "faceswap_video",
        {"target_url": media.add("c3.mp4", clip.read_bytes()), "source_url": source, "start_s": 9},
    )
    doc = await ok_limits.wait(late["job_id"], timeout_s=60)
    assert doc["status"] == "failed" and doc["error"]["code"] == "invalid_payload"
    assert "payload.start_s" in doc["error"]["message"]
    status, body, _ = await api.call(
        "POST",
        "/faceswap/video",
        json={"target_url": media.add("t.txt", b"not a video"), "source_url": source},
    )
    assert status == 200 and body["error"]["code"] in ("unsupported_media_type", "corrupt_input")
    truncated = clip.read_bytes()[: len(clip.read_bytes()) // 2]
    status, body, _ = await api.call(
        "POST",
        "/faceswap/video",
        json={"target_url": media.add("half.mp4", truncated), "source_url": source},
    )
    assert body["error"]["code"] == "corrupt_input"
    assert "/" not in body["error"]["message"].split(":", 1)[1]  # no server paths


async def test_cancel_stops_and_leaves_no_file(
    start_server: Any, models_dir: Path, media: MediaServer, tmp_path: Path
) -> None:
    api = await start_server(**video_config(models_dir))
    clip = make_clip(tmp_path / "long.mp4", 240, audio=False)
    job = await api.submit(
        "faceswap_video",
        {
            "target_url": media.add("long.mp4", clip.read_bytes()),
            "source_url": media.add("face.png", fixtures.astronaut_png()),
        },
    )
    import asyncio

    for _ in range(600):  # until it is a quarter through, at most 30 s
        if (await api.job(job["job_id"]))["progress"] >= 25:
            break
        await asyncio.sleep(0.05)
    status, _, _ = await api.call("POST", f"/v1/jobs/{job['job_id']}/cancel")
    assert status == 200
    doc = await api.wait(job["job_id"], timeout_s=10)
    assert doc["status"] == "canceled"
    assert [p.name for p in api.orchestrator.files_dir.iterdir()] == []


# BT.709 → BT.2020 primaries (ITU-R BT.2087), and the SMPTE ST 2084 (PQ) constants.
BT709_TO_BT2020 = np.array(
    [[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]]
)
PQ_M1, PQ_M2, PQ_C1, PQ_C2, PQ_C3 = 0.1593017578125, 78.84375, 0.8359375, 18.8515625, 18.6875
SDR_WHITE_NITS = 203.0  # ITU-R BT.2408 reference white
HDR_SIZE = (640, 360)
ORANGE, TEAL = (26, 69, 230), (200, 160, 40)  # BGR, inside BT.709 (not at its edge)


def sdr_frame(i: int, frames: int) -> np.ndarray:
    """The picture an HDR clip encodes: the astronaut moving right over a light grey
    background, an orange and a teal patch in the bottom-right corner."""
    astro = photo("skimage", "data", "astronaut.png", side=128)
    width, height = HDR_SIZE
    image = np.full((height, width, 3), 200, np.uint8)
    x = 10 + (i * 300) // max(1, frames - 1)
    image[4:132, x : x + 128] = astro
    image[260:340, 480:560] = ORANGE
    image[260:340, 560:630] = TEAL
    return image


def pq_rgb48(bgr: np.ndarray) -> np.ndarray:
    """An SDR BGR picture as HDR10 code values: BT.1886 display light with SDR white at
    203 cd/m², BT.2020 primaries, PQ-encoded to 16-bit RGB."""
    display = (bgr[..., ::-1].astype(np.float64) / 255) ** 2.4 * SDR_WHITE_NITS
    y = np.clip(display @ BT709_TO_BT2020.T / 10000, 0, 1) ** PQ_M1
    pq = ((PQ_C1 + PQ_C2 * y) / (1 + PQ_C3 * y)) ** PQ_M2
    return np.asarray(np.round(pq * 65535), dtype=np.uint16)


def make_hdr_clip(path: Path, frames: int) -> Path:
    """Input case C24: HEVC Main10, yuv420p10le, tagged bt2020 / smpte2084 / bt2020nc."""
    width, height = HDR_SIZE
    tags = "colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:range=limited"
    with av.open(str(path), "w") as container:
        video = container.add_stream(
            "libx265",
            rate=FPS,
            options={"preset": "ultrafast", "x265-params": f"log-level=error:{tags}"},
        )
        video.width, video.height, video.pix_fmt = width, height, "yuv420p10le"
        ctx = video.codec_context
        ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range = 9, 16, 9, 1
        for i in range(frames):
            rgb = av.VideoFrame.from_ndarray(pq_rgb48(sdr_frame(i, frames)), format="rgb48le")
            frame = rgb.reformat(format="yuv420p10le", dst_colorspace=9, dst_color_range=1)
            frame.color_primaries, frame.color_trc, frame.pts = 9, 16, i
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
    return path


async def test_hdr10_clip_becomes_bt709_sdr_with_matching_tags(
    start_server: Any, models_dir: Path, media: MediaServer, tmp_path: Path
) -> None:
    """C24: a 10-bit PQ/BT.2020 clip gives 8-bit BT.709 SDR, tagged so, that looks like the
    SDR picture it encodes (not the flat, grey one of PQ code values shown as SDR)."""
    clip = make_hdr_clip(tmp_path / "hdr.mp4", 24)
    with av.open(str(clip)) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.name, ctx.pix_fmt) == ("hevc", "yuv420p10le")
        assert (ctx.color_primaries, ctx.color_trc, ctx.colorspace) == (9, 16, 9)
    api = await start_server(**video_config(models_dir))
    job = await api.submit(
        "faceswap_video",
        {
            "target_url": media.add("hdr.mp4", clip.read_bytes()),
            "source_url": media.add("face.png", fixtures.astronaut_png()),
        },
    )
    doc = await api.wait(job["job_id"], timeout_s=120)
    assert doc["status"] == "succeeded", doc["error"]
    meta = doc["result"]["meta"]
    assert (meta["width"], meta["height"]) == HDR_SIZE
    assert meta["frames"] == 24 and abs(meta["duration_s"] - 2.0) < 0.1
    assert meta["frames_without_faces"] == 0

    out = tmp_path / "sdr.mp4"
    out.write_bytes(await fetch(api, doc["result"]["url"]))
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        assert (ctx.name, ctx.pix_fmt) == ("h264", "yuv420p")
        # Tags: BT.709 primaries and transfer (what the pixels were converted to), the BT.601
        # matrix and limited range the encoder's frames are made with.
        assert (ctx.color_primaries, ctx.color_trc) == (1, 1)
        assert (ctx.colorspace, ctx.color_range) == (6, 1)
        assert container.duration is not None and abs(container.duration / 1e6 - 2.0) < 0.1
        decoded = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(decoded) == 24
    # The pixels are the SDR picture the clip encodes: the light grey background (PQ code
    # values shown as SDR would give ~135 instead of 200) and the two colours (which would be
    # desaturated), to within codec noise. The face's row is the swap's, not compared.
    for i, got in enumerate(decoded):
        want = sdr_frame(i, 24).astype(int)
        diff = np.abs(got.astype(int) - want)
        assert float(diff[150:250].mean()) < 4, i
        for rows, cols in ((slice(270, 330), slice(490, 550)), (slice(270, 330), slice(570, 620))):
            assert float(diff[rows, cols].mean()) < 10, (i, got[rows, cols].mean(axis=(0, 1)))
