"""The media side of ahv.video: probing the container header (no full decode); opening inputs
with ahv's error codes; upright BGR frames and trimmed AAC-ready audio on the output timeline;
BGR → even-sized yuv420p encoder frames.

Rotation: `VideoFrame.rotation` is the display matrix's counter-clockwise angle (iPhone portrait:
-90, i.e. 270); `np.rot90(pixels, k=angle // 90)` is the upright picture. PyAV 18 exposes no
stream side data, so the probe decodes the first frame to read it."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import av.container
import cv2
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter

from ahv.errors import AhvError

# Magic bytes of containers a video may come in: a file that starts like one but cannot be
# opened is corrupt (truncated download, moov atom lost), anything else is not a video.
# MP4/MOV boxes at offset 4; Matroska/WebM, AVI, Ogg, FLV, MPEG-PS, MPEG-TS at 0.
_VIDEO_MAGICS: tuple[tuple[int, bytes], ...] = (
    *((4, box) for box in (b"ftyp", b"moov", b"mdat", b"free", b"wide")),
    *((0, m) for m in (b"\x1a\x45\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"G")),
)
# Demuxers av.open may use: video containers only. FFmpeg otherwise also reads text files as
# video ("tty"), image sequences, and playlists (hls, concat) that open further files or URLs.
VIDEO_DEMUXERS = "mov,mp4,matroska,webm,avi,flv,mpegts,mpeg,ogg,asf,m4v,h264,hevc,ivf,nut,mxf"
# No B-frames: MP4 track duration is counted on dts, which B-frame reordering makes lag pts
# under variable frame timing (a long last gap would be cut off).
X264_OPTIONS = {"preset": "veryfast", "crf": "18", "bf": "0"}
# Sample rates the AAC encoder takes; anything else is resampled to 48 kHz.
AAC_RATES = frozenset({96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 8000})
# Packets the probe reads at most while looking for the first frame (B-frame reorder delay).
_PROBE_PACKETS = 64
# HDR transfers (AVCOL_TRC_SMPTE2084 = PQ/HDR10, AVCOL_TRC_ARIB_STD_B67 = HLG) and wide-gamut
# primaries (AVCOL_PRI_BT2020): frames tagged so are converted to BT.709 SDR on decode.
HDR_TRCS = frozenset({16, 18})
WIDE_PRIMARIES = frozenset({9})
BT709 = 1  # AVCOL_PRI_BT709 and AVCOL_TRC_BT709


class VideoInfo(NamedTuple):
    width: int  # display size: after the rotation
    height: int
    fps: float  # average
    frames: int  # from the header, or duration × fps
    duration_s: float
    has_audio: bool
    rotation: int  # degrees counter-clockwise the player turns the stored picture: 0/90/180/270
    codec: str


def unsupported(field: str, what: str) -> AhvError:
    return AhvError("unsupported_media_type", f"{field}: {what}", status=415)


def corrupt(field: str, what: str) -> AhvError:
    return AhvError("corrupt_input", f"{field}: {what}")


def normalise_rotation(degrees: float) -> int:
    """0, 90, 180 or 270 for a display rotation in degrees (rounded to quarter turns)."""
    return round(degrees / 90.0) % 4 * 90


def upright(pixels: npt.NDArray[np.uint8], rotation: int) -> npt.NDArray[np.uint8]:
    """The picture as displayed: stored pixels turned counter-clockwise by `rotation`."""
    turns = normalise_rotation(rotation) // 90
    return np.ascontiguousarray(np.rot90(pixels, k=turns)) if turns else pixels


def _looks_like_video(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(16)
    return any(head[at : at + len(magic)] == magic for at, magic in _VIDEO_MAGICS)


def open_input(path: Path, field: str) -> av.container.InputContainer:
    """`av.open` for reading, with ahv's codes for a file that is not a video or is broken."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise corrupt(field, f"cannot read the file ({exc.strerror})") from None
    if size == 0:
        raise corrupt(field, "empty file")
    try:
        container = av.open(str(path), mode="r", options={"format_whitelist": VIDEO_DEMUXERS})
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        if _looks_like_video(path):
            raise corrupt(field, f"truncated or corrupt video ({reason(exc)})") from None
        raise unsupported(field, "not a video container this server can read") from None
    if not container.streams.video:
        container.close()
        raise unsupported(field, "the file has no video stream")
    return container


def reason(exc: BaseException) -> str:
    """What went wrong, without FFmpeg's file path (a server path) or errno numbers."""
    text = getattr(exc, "strerror", None) or type(exc).__name__
    return str(text)


def first_rotation(container: av.container.InputContainer, field: str) -> int:
    """The display rotation of the first decodable frame (0 when no frame decodes soon)."""
    stream = container.streams.video[0]
    try:
        for count, packet in enumerate(container.demux(stream)):
            for frame in packet.decode():
                return normalise_rotation(frame.rotation)
            if count >= _PROBE_PACKETS:
                break
    except av.FFmpegError as exc:
        raise corrupt(field, f"truncated or corrupt video ({reason(exc)})") from None
    return 0


def probe_video(
    path: Path,
    *,
    max_duration_s: float,
    max_frames: int,
    max_pixels: int,
    field: str = "target_url",
) -> VideoInfo:
    """Header facts about a video, checked against the limits before any processing."""
    container = open_input(path, field)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width), int(ctx.height)
        if width <= 0 or height <= 0:
            raise corrupt(field, f"the video stream has no frame size ({width}x{height})")
        if width * height > max_pixels:
            raise AhvError(
                "image_too_large",
                f"{field}: video frames are {width}x{height} = {width * height} pixels, "
                f"the limit is {max_pixels}",
                status=413,
            )
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        fps = float(rate)
        # The longest stream counts: a long audio track next to a short video is long too.
        duration = max(declared_end(container) or 0.0, (container.duration or 0) / 1_000_000)
        if duration > max_duration_s:
            raise AhvError(
                "video_too_long",
                f"{field}: the video lasts {duration:.1f} s, the limit is {max_duration_s:g} s",
                status=413,
            )
        frames = int(stream.frames or 0) or round(duration * fps)
        if frames > max_frames:
            raise AhvError(
                "video_too_long",
                f"{field}: the video has {frames} frames, the limit is {max_frames}",
                status=413,
            )
        rotation = first_rotation(container, field)
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            width=width,
            height=height,
            fps=fps,
            frames=frames,
            duration_s=duration,
            has_audio=bool(container.streams.audio),
            rotation=rotation,
            codec=str(ctx.name),
        )
    finally:
        container.close()


class VideoFrames:
    """Decoded video frames as upright BGR24 arrays with their time on the output timeline
    (seconds from start_s), keeping only [start_s, end_s)."""

    def __init__(
        self, container: av.container.InputContainer, start_s: float | None, end_s: float | None
    ) -> None:
        stream = container.streams.video[0]
        stream.codec_context.thread_type = "AUTO"
        self.declared = declared_end(container)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        self.step = 1 / float(rate)  # for frames without a timestamp
        self.start, self.end, self.offset = start_s, end_s, start_s or 0.0
        self.last_t = -self.step
        self.done = False  # past end_s
        self.to_sdr = False  # some frame was HDR or wide gamut, converted to BT.709 SDR
        # One converter for all frames: setting up the colour conversion takes about a second
        # (frame.reformat would set up a fresh one for every frame), each call after it ms.
        self.reformatter = VideoReformatter()

    def decode(self, packet: av.Packet[Any]) -> list[tuple[npt.NDArray[np.uint8], float]]:
        kept = []
        for frame in packet.decode():
            if not isinstance(frame, av.VideoFrame) or self.done:
                continue
            if frame.is_corrupt:
                raise corrupt("src", f"corrupt video data near {self.last_t + self.step:.2f} s")
            t = frame.time if frame.time is not None else self.last_t + self.step
            if self.end is not None and t >= self.end:
                self.done = True
            elif self.start is None or t >= self.start:
                self.last_t = t
                kept.append((upright(self.bgr(frame), frame.rotation), t - self.offset))
        return kept

    def bgr(self, frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
        """8-bit BGR pixels. An HDR (PQ, HLG) or BT.2020 frame goes through swscale's colour
        management to BT.709 primaries and transfer, gamut mapped: SDR white is the peak the
        source declares (HDR10 mastering metadata), else BT.2408 reference white (203 cd/m²);
        brighter highlights are clipped. Without it, PQ code values would be shown as SDR
        ones: the flat, grey "washed out" picture of input case C24."""
        if frame.color_trc in HDR_TRCS or frame.color_primaries in WIDE_PRIMARIES:
            self.to_sdr = True
            frame = self.reformatter.reformat(
                frame, format="bgr24", dst_color_trc=BT709, dst_color_primaries=BT709
            )
        return np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)

    def check_complete(self) -> None:
        """corrupt_input when the frames stopped well before where the header says the video
        ends (a truncated file, or a broken stretch the demuxer could not resync past)."""
        if self.declared is None or self.done:
            return
        end = self.declared if self.end is None else min(self.end, self.declared)
        if (at := max(0.0, self.last_t)) < end - max(1.0, 0.1 * end):
            raise corrupt("src", f"truncated or corrupt: frames stop at {at:.1f} s of {end:.1f} s")


def declared_end(container: av.container.InputContainer) -> float | None:
    """Where the header says the video track ends, in seconds; None when only the whole
    file's length is known and an audio track may make that longer."""
    stream = container.streams.video[0]
    if stream.duration and stream.time_base:
        return float((stream.duration + (stream.start_time or 0)) * stream.time_base)
    if container.duration and not container.streams.audio:
        return container.duration / 1_000_000
    return None


def yuv420_frame(pixels: npt.NDArray[np.uint8], size: tuple[int, int]) -> av.VideoFrame:
    """An encoder frame of `size` (even) from a BGR24 array of that size, or one pixel less
    in width/height: the last column/row is repeated. OpenCV's BT.601 limited-range
    conversion, because swscale's default one is biased (~-2.5 levels on every channel) and
    would darken the picture on every pass."""
    width, height = size
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"process returned a {pixels.dtype} array of shape {pixels.shape}")
    h, w = pixels.shape[:2]
    if (w + w % 2, h + h % 2) != (width, height):
        raise ValueError(f"process changed the frame size mid-stream, to {w}x{h}")
    if (w, h) != (width, height):
        pixels = np.pad(pixels, ((0, height - h), (0, width - w), (0, 0)), mode="edge")
    i420 = np.asarray(cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_BGR2YUV_I420))
    return av.VideoFrame.from_ndarray(i420.astype(np.uint8, copy=False), format="yuv420p")


def add_h264_stream(
    out: av.container.OutputContainer,
    size: tuple[int, int],
    rate: Fraction,
    tb: Fraction,
    *,
    bt709: bool = False,
) -> av.VideoStream:
    """The output video stream: H.264 yuv420p, BT.601 limited range (as yuv420_frame makes
    it), timestamps in the source's time base. `bt709`: the frames were converted to BT.709
    SDR (VideoFrames.to_sdr), which the primaries and transfer tags then say."""
    stream = out.add_stream("libx264", rate=rate, options=dict(X264_OPTIONS))
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.codec_context.colorspace = 6  # SMPTE 170M
    stream.codec_context.color_range = 1  # MPEG (limited)
    if bt709:
        stream.codec_context.color_primaries = BT709
        stream.codec_context.color_trc = BT709
    stream.time_base = stream.codec_context.time_base = tb
    return stream


class AacAudio:
    """An input audio track decoded for the AAC encoder: planar float at a rate AAC takes,
    stereo (or mono), trimmed to [start_s, end_s) and stamped from 0 at start_s, in
    1/rate units, never overlapping."""

    def __init__(self, stream: av.AudioStream, start_s: float | None, end_s: float | None) -> None:
        ctx = stream.codec_context
        self.rate = ctx.sample_rate if ctx.sample_rate in AAC_RATES else 48000
        self.layout = "stereo" if ctx.channels >= 2 else "mono"
        self.resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self.offset, self.end = start_s or 0.0, end_s
        self.next_pts = 0
        self.done = False  # past end_s: nothing more to keep

    def decode(self, packet: av.Packet[Any]) -> list[av.AudioFrame]:
        kept: list[av.AudioFrame] = []
        for frame in packet.decode():
            if isinstance(frame, av.AudioFrame):
                kept += self._trim(self.resampler.resample(frame))
        return kept

    def flush(self) -> list[av.AudioFrame]:
        return self._trim(self.resampler.resample(None))

    def _trim(self, frames: list[av.AudioFrame]) -> list[av.AudioFrame]:
        kept: list[av.AudioFrame] = []
        for frame in frames:
            rate = frame.sample_rate
            t0 = frame.time if frame.time is not None else self.next_pts / rate + self.offset
            samples = np.asarray(frame.to_ndarray(), dtype=np.float32)
            first, last = max(0, math.ceil((self.offset - t0) * rate)), samples.shape[1]
            if self.end is not None:
                last = min(last, math.floor((self.end - t0) * rate))
                self.done = last < samples.shape[1]
            if last <= first:
                continue
            out = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, first:last]), format="fltp", layout=self.layout
            )
            out.sample_rate, out.time_base = rate, Fraction(1, rate)
            out.pts = max(self.next_pts, round((t0 - self.offset) * rate) + first)
            self.next_pts = out.pts + (last - first)
            kept.append(out)
        return kept
