"""ahv.video: probe limits and the streaming transcode, on clips made here with PyAV (a real face
photo, skimage's astronaut, moving over a background)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from ahv.errors import AhvError
from ahv.video import probe_video, transcode
from tests.media import astronaut_path

ROOT = Path(__file__).resolve().parent.parent
Frame = npt.NDArray[np.uint8]
LIMITS = {"max_duration_s": 600.0, "max_frames": 100_000, "max_pixels": 4096 * 4096}


def face_frames(count: int, width: int, height: int) -> Iterator[Frame]:
    side = min(width, height) * 2 // 3
    face = cv2.resize(cv2.imread(str(astronaut_path())), (side, side))
    for i in range(count):
        image = np.empty((height, width, 3), np.uint8)
        image[:] = (40 + i % 50, 90, 140)
        image[:, :: max(1, width // 8)] = 220  # stripes: something static to compare
        x = int((width - side) * (0.5 + 0.5 * np.sin(i / 10)))
        y = (height - side) // 2
        image[y : y + side, x : x + side] = face
        yield image


def make_clip(
    path: Path,
    *,
    frames: int = 50,
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
    audio: str | None = None,
    fmt: str | None = None,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    pts_ms: list[int] | None = None,
    sample_rate: int = 44100,
    audio_s: float | None = None,
) -> Path:
    width, height = size
    tb = Fraction(1, 1000) if pts_ms is not None else Fraction(1, fps)
    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.codec_context.time_base = tb
        if codec == "libx264":
            video.options = {"preset": "ultrafast"}
        if rotation is not None:
            video.set_display_rotation(rotation)
        sound = out.add_stream(audio, rate=sample_rate) if audio else None
        if sound is not None:
            sound.layout = "stereo"
        for i, image in enumerate(face_frames(frames, width, height)):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = (i if pts_ms is None else pts_ms[i]), tb
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            seconds = (pts_ms[-1] / 1000 + 1 / fps) if pts_ms else frames / fps
            seconds = audio_s or seconds
            _write_tone(out, sound, int(seconds * sample_rate), sample_rate)
    return path


def _write_tone(
    out: av.container.OutputContainer, sound: av.AudioStream, total: int, rate: int
) -> None:
    layout_format = sound.codec_context.format.name
    done = 0
    while done < total:
        count = min(1024, total - done)
        wave = (0.2 * np.sin(2 * np.pi * 440 * (done + np.arange(count)) / rate)).astype(np.float32)
        if layout_format == "s16":
            samples = np.repeat((wave * 32767).astype(np.int16), 2).reshape(1, -1)
        else:
            samples = np.stack([wave, wave])
        frame = av.AudioFrame.from_ndarray(samples, format=layout_format, layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, done, Fraction(1, rate)
        out.mux(sound.encode(frame))
        done += count
    out.mux(sound.encode())


def streams(path: Path) -> dict[str, object]:
    """Facts about a file: durations, frame count, codecs, video size and rotation."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        facts: dict[str, object] = {
            "duration": (container.duration or 0) / 1e6,
            "video_duration": float((video.duration or 0) * (video.time_base or 0)),
            "frames": video.frames,
            "audio": [a.codec_context.name for a in container.streams.audio],
        }
        if container.streams.audio:
            audio = container.streams.audio[0]
            facts["audio_duration"] = float((audio.duration or 0) * (audio.time_base or 0))
    return facts


def decode(path: Path, *, raw: bool = False) -> tuple[list[Frame], list[float], list[int]]:
    """All frames (BGR, as stored), their times and rotations."""
    images, times, rotations = [], [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            images.append(np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8))
            times.append(float(frame.time or 0.0))
            rotations.append(frame.rotation)
    return images, times, rotations


def identity(frames: list[Frame]) -> list[Frame]:
    return frames


# -- transcode -------------------------------------------------------------------------------


def test_aac_audio_is_copied_and_durations_kept(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=50, audio="aac")
    reported: list[int] = []
    result = transcode(src, tmp_path / "out.mp4", identity, on_frames=reported.append)
    before, after = streams(src), streams(tmp_path / "out.mp4")
    assert result.frames == after["frames"] == before["frames"] == 50
    assert result.audio == "copied" and result.has_audio and after["audio"] == ["aac"]
    assert abs(float(after["video_duration"]) - float(before["video_duration"])) <= 1 / 25  # type: ignore[arg-type]
    assert abs(float(after["audio_duration"]) - float(before["audio_duration"])) <= 0.05  # type: ignore[arg-type]
    assert (result.width, result.height) == (320, 240)
    assert reported and reported[-1] == 50 and reported == sorted(reported)


def test_video_without_audio(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=20)
    result = transcode(src, tmp_path / "out.mp4", identity)
    assert result.frames == 20 and not result.has_audio and result.audio is None
    assert streams(tmp_path / "out.mp4")["audio"] == []


def test_pcm_audio_is_reencoded_to_aac(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mkv", frames=50, audio="pcm_s16le", fmt="matroska")
    result = transcode(src, tmp_path / "out.mp4", identity)
    after = streams(tmp_path / "out.mp4")
    assert result.audio == "aac" and after["audio"] == ["aac"]
    assert abs(float(after["audio_duration"]) - 2.0) <= 0.05  # type: ignore[arg-type]
    assert abs(float(after["video_duration"]) - 2.0) <= 1 / 25  # type: ignore[arg-type]


def test_rotation_is_applied_and_not_tagged(tmp_path: Path) -> None:
    # PyAV 18 writes the display matrix itself: VideoStream.set_display_rotation.
    src = make_clip(tmp_path / "in.mp4", frames=10, size=(320, 240), rotation=90)
    info = probe_video(src, **LIMITS)
    assert (info.width, info.height, info.rotation) == (240, 320, 90)
    seen: list[tuple[int, ...]] = []

    def record(frames: list[Frame]) -> list[Frame]:
        seen.extend(f.shape for f in frames)
        return frames

    result = transcode(src, tmp_path / "out.mp4", record)
    assert (result.width, result.height) == (240, 320) and set(seen) == {(320, 240, 3)}
    stored, _, rotations = decode(src)
    output, _, out_rotations = decode(tmp_path / "out.mp4")
    assert set(rotations) == {90} and set(out_rotations) == {0}
    assert output[0].shape == (320, 240, 3)
    # Upright = the stored picture turned a quarter counter-clockwise, as players show it.
    diff = np.abs(output[0].astype(int) - np.rot90(stored[0]).astype(int)).mean()
    assert diff < 3


def test_variable_frame_timing_is_kept(tmp_path: Path) -> None:
    gaps = [40, 40, 120, 40, 200, 40, 40, 80, 40, 400] * 3
    pts = [0, *np.cumsum(gaps).tolist()]
    src = make_clip(tmp_path / "in.mkv", frames=len(pts), fmt="matroska", pts_ms=pts)
    result = transcode(src, tmp_path / "out.mp4", identity, batch_size=4)
    _, times, _ = decode(tmp_path / "out.mp4")
    assert result.frames == len(times) == len(pts)
    relative = np.array(times) - times[0]
    np.testing.assert_allclose(relative, np.array(pts) / 1000, atol=0.002)
    assert abs(result.duration_s - (pts[-1] / 1000 + 0.04)) <= 0.05


def test_odd_dimensions_are_padded_even(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=12, size=(321, 241), pix_fmt="yuv444p")
    result = transcode(src, tmp_path / "out.mp4", identity)
    assert (result.width, result.height) == (322, 242)
    output, _, _ = decode(tmp_path / "out.mp4")
    source, _, _ = decode(src)
    assert len(output) == 12 and output[0].shape == (242, 322, 3)
    # The pad repeats the last row/column.
    assert np.abs(output[5][:, 321].astype(int) - output[5][:, 320].astype(int)).mean() < 4
    assert np.abs(output[5][:241, :321].astype(int) - source[5].astype(int)).mean() < 3


def test_process_changes_only_its_region(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=16)

    def invert(frames: list[Frame]) -> list[Frame]:
        out = []
        for frame in frames:
            frame = frame.copy()
            frame[40:120, 60:180] = 255 - frame[40:120, 60:180]
            out.append(frame)
        return out

    transcode(src, tmp_path / "out.mp4", invert, batch_size=5)
    source, _, _ = decode(src)
    output, _, _ = decode(tmp_path / "out.mp4")
    assert len(output) == len(source) == 16
    for before, after in zip(source, output, strict=True):
        b, a = before.astype(int), after.astype(int)
        inside = np.abs(a[44:116, 64:176] - (255 - b[44:116, 64:176])).mean()
        mask = np.ones(b.shape[:2], bool)
        mask[36:124, 56:184] = False
        outside = np.abs(a[mask] - b[mask]).mean()
        assert inside < 4 and outside < 3


def test_trim(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=75, audio="aac")
    result = transcode(src, tmp_path / "out.mp4", identity, start_s=1.0, end_s=2.0)
    after = streams(tmp_path / "out.mp4")
    assert result.frames == after["frames"] == 25
    assert result.audio == "aac"
    assert abs(float(after["video_duration"]) - 1.0) <= 1 / 25  # type: ignore[arg-type]
    assert abs(float(after["audio_duration"]) - 1.0) <= 0.05  # type: ignore[arg-type]
    _, times, _ = decode(tmp_path / "out.mp4")
    assert times[0] < 0.05


def test_cancel_stops_threads_and_deletes_output(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=80, audio="aac")
    dst = tmp_path / "out.mp4"
    threads_before = threading.active_count()
    calls = 0

    class Stop(Exception):
        pass

    def checkpoint() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Stop

    with pytest.raises(Stop):
        transcode(src, dst, identity, batch_size=4, checkpoint=checkpoint)
    assert calls == 3
    assert not dst.exists()
    assert threading.active_count() == threads_before


def test_process_error_propagates_unchanged(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=30)
    boom = RuntimeError("model failed")

    def failing(frames: list[Frame]) -> list[Frame]:
        raise boom

    with pytest.raises(RuntimeError) as caught:
        transcode(src, tmp_path / "out.mp4", failing)
    assert caught.value is boom and not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize(
    ("name", "fmt", "codec"),
    [("c.mp4", None, "libx264"), ("c.mkv", "matroska", "libx264"), ("m.mkv", "matroska", "mpeg4")],
)
def test_corrupt_data_mid_stream(tmp_path: Path, name: str, fmt: str | None, codec: str) -> None:
    data = bytearray(make_clip(tmp_path / name, frames=100, fmt=fmt, codec=codec).read_bytes())
    third = len(data) // 3
    data[third : third + 20000] = np.random.default_rng(1).bytes(20000)
    broken = tmp_path / f"broken-{name}"
    broken.write_bytes(bytes(data))
    with pytest.raises(AhvError) as caught:
        transcode(broken, tmp_path / "out.mp4", identity)
    assert caught.value.code == "corrupt_input" and caught.value.message.startswith("src: ")
    assert not (tmp_path / "out.mp4").exists()


_RSS_SCRIPT = """
import resource, sys
from pathlib import Path
from ahv.video import transcode
transcode(Path(sys.argv[1]), Path(sys.argv[2]), lambda f: f, batch_size=4, queue_batches=2)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kib(src: Path, dst: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(src), str(dst)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return int(done.stdout.split()[-1])


def test_peak_memory_does_not_grow_with_length(tmp_path: Path) -> None:
    # 640x480: one frame is 0.9 MB, so frames held for the whole clip would show (+220 MB).
    short = make_clip(tmp_path / "short.mp4", frames=60, size=(640, 480))
    long = make_clip(tmp_path / "long.mp4", frames=300, size=(640, 480))
    rss_short = _peak_rss_kib(short, tmp_path / "s.mp4")
    rss_long = _peak_rss_kib(long, tmp_path / "l.mp4")
    assert rss_long <= rss_short * 1.10, (rss_short, rss_long)


# -- probe -----------------------------------------------------------------------------------


def test_probe_reads_the_header(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=50, audio="aac")
    info = probe_video(src, **LIMITS)
    assert (info.width, info.height, info.frames, info.rotation) == (320, 240, 50, 0)
    assert info.fps == 25 and info.has_audio and info.codec == "h264"
    assert abs(info.duration_s - 2.0) < 0.05


@pytest.mark.parametrize(
    ("limits", "code", "numbers"),
    [
        ({"max_duration_s": 1.5}, "video_too_long", ["2.0 s", "1.5 s"]),
        ({"max_frames": 40}, "video_too_long", ["50 frames", "40"]),
        ({"max_pixels": 320 * 200}, "image_too_large", ["320x240", "64000"]),
    ],
)
def test_probe_limits(
    tmp_path: Path, limits: dict[str, float], code: str, numbers: list[str]
) -> None:
    src = make_clip(tmp_path / "in.mp4", frames=50)
    with pytest.raises(AhvError) as caught:
        probe_video(src, **{**LIMITS, **limits}, field="target_url")  # type: ignore[arg-type]
    assert caught.value.code == code
    assert caught.value.message.startswith("target_url: ")
    for number in numbers:
        assert number in caught.value.message


def test_probe_counts_a_long_audio_track(tmp_path: Path) -> None:
    # C25: the header claims a long file because of a long silent-ish track next to the video.
    src = make_clip(tmp_path / "in.mp4", frames=25, audio="aac", audio_s=30.0)
    with pytest.raises(AhvError) as caught:
        probe_video(src, **{**LIMITS, "max_duration_s": 10.0})  # type: ignore[arg-type]
    assert caught.value.code == "video_too_long" and "30.0 s" in caught.value.message


def test_probe_rejects_text_and_truncated_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("just some text, not a video\n" * 50)
    with pytest.raises(AhvError) as caught:
        probe_video(text, **LIMITS, field="video")
    assert caught.value.code == "unsupported_media_type" and "video:" in caught.value.message

    data = make_clip(tmp_path / "in.mp4", frames=30).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AhvError) as caught:
        probe_video(cut, **LIMITS)
    assert caught.value.code == "corrupt_input"

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(AhvError) as caught:
        probe_video(empty, **LIMITS)
    assert caught.value.code == "corrupt_input"
    with pytest.raises(AhvError) as caught:
        transcode(text, tmp_path / "out.mp4", identity)
    assert caught.value.code == "unsupported_media_type"


def test_probe_does_not_decode_the_whole_file(tmp_path: Path) -> None:
    src = make_clip(tmp_path / "long.mp4", frames=1500, size=(160, 120))
    started = time.perf_counter()
    with av.open(str(src)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    full = time.perf_counter() - started
    started = time.perf_counter()
    info = probe_video(src, **LIMITS)
    probe = time.perf_counter() - started
    assert decoded == info.frames == 1500
    assert probe < full / 5, (probe, full)
