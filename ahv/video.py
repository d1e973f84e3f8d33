"""Streaming video transcode: decode → process (the models) → encode, in three threads joined by
bounded queues, so memory does not grow with the video's length.

- Frames reach `process` upright (display rotation applied, see video_probe) as BGR24 arrays,
  in batches of up to `batch_size`; the output carries no rotation tag.
- Each frame keeps its source timestamp (variable frame rate stays in sync, duration is kept).
- Output: MP4, H.264 (libx264, yuv420p, BT.601), 8-bit SDR (10-bit input is converted down).
  HDR (PQ, HLG) and BT.2020 input is converted to BT.709 SDR by swscale's colour management
  (see VideoFrames.bgr) and the output is tagged BT.709 primaries and transfer; no HDR output.
  Odd sizes are padded to even by repeating the last row/column.
- Audio: the first audio track is copied when MP4 can hold its codec and there is no trim,
  otherwise decoded, resampled and encoded to AAC. A video without audio gives one without.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import av.container
import numpy as np
import numpy.typing as npt

from ahv import video_probe as media
from ahv.video_probe import VideoInfo, probe_video

__all__ = ["TranscodeResult", "VideoInfo", "probe_video", "transcode"]

Frame = npt.NDArray[np.uint8]
Process = Callable[[list[Frame]], list[Frame]]

# Audio codecs the MP4 muxer accepts as they are (copied without decoding).
MP4_AUDIO = frozenset({"aac", "mp3", "alac", "opus", "flac", "ac3", "eac3"})
_POLL_S = 0.05


class TranscodeResult(NamedTuple):
    frames: int
    width: int  # output size, even
    height: int
    fps: float
    duration_s: float
    has_audio: bool
    audio: str | None  # "copied", "aac" or None


class _Stopped(Exception):
    """Raised inside a pipeline thread when another part failed or the caller stopped it."""


@dataclass
class _Batch:
    frames: list[Frame] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # output timeline, seconds
    audio: list[Any] = field(default_factory=list)  # av.Packet (copy) or av.AudioFrame (aac)

    def __len__(self) -> int:
        return len(self.frames)


class _Pipeline:
    def __init__(
        self,
        inp: av.container.InputContainer,
        out: av.container.OutputContainer,
        process: Process,
        batch_size: int,
        queue_batches: int,
        trim: tuple[float | None, float | None],
    ) -> None:
        self.inp, self.out, self.process, self.batch_size = inp, out, process, batch_size
        start_s, end_s = trim
        self.vin = inp.streams.video[0]
        self.video = media.VideoFrames(inp, start_s, end_s)
        self.tb = self.vin.time_base or Fraction(1, 90000)
        self.rate = self.vin.average_rate or self.vin.guessed_rate or Fraction(25)
        self.ain = inp.streams.audio[0] if inp.streams.audio else None
        self.audio_mode: str | None = None
        if self.ain is not None:
            copy = start_s is None and end_s is None and self.ain.codec_context.name in MP4_AUDIO
            self.audio_mode = "copied" if copy else "aac"
        self.aac = None
        if self.ain is not None and self.audio_mode == "aac":
            self.aac = media.AacAudio(self.ain, start_s, end_s)
        self.aout: Any = None
        self.vout: Any = None
        self.size = (0, 0)  # encoder (width, height)
        self.decoded = queue.Queue[_Batch | None](maxsize=queue_batches)
        self.processed = queue.Queue[_Batch | None](maxsize=queue_batches)
        self.progress = queue.Queue[int | None]()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._guard, args=(fn,), name=f"ahv-video-{fn.__name__}")
            for fn in (self._decode, self._process, self._encode)
        ]
        self.frames = 0
        self.last_pts: int | None = None

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the caller's thread
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = exc
        self.stop.set()

    def _wait(self, call: Callable[[], Any]) -> Any:
        """A bounded queue's put or get, given up (_Stopped) once the pipeline stops."""
        while not self.stop.is_set():
            try:
                return call()
            except (queue.Full, queue.Empty):
                continue
        raise _Stopped

    def _put(self, q: queue.Queue[Any], item: Any) -> None:
        self._wait(lambda: q.put(item, timeout=_POLL_S))

    def _get(self, q: queue.Queue[Any]) -> Any:
        return self._wait(lambda: q.get(timeout=_POLL_S))

    def run(self, on_frames: Callable[[int], None], checkpoint: Callable[[], None]) -> None:
        for thread in self.threads:
            thread.start()
        try:
            while (done := self._get(self.progress)) is not None:
                on_frames(done)
                checkpoint()
        except _Stopped:
            pass  # a thread failed: its error is raised below
        except BaseException as exc:
            self.fail(exc)
        self.shutdown()
        if self.error is not None:
            raise self.error

    def shutdown(self) -> None:
        for thread in self.threads:
            if thread.is_alive():
                thread.join()

    def _decode(self) -> None:
        batch = _Batch()
        streams = [self.vin] if self.ain is None else [self.vin, self.ain]
        try:
            for packet in self.inp.demux(streams):
                if self.stop.is_set():
                    raise _Stopped
                if packet.stream is self.ain:
                    self._audio_packet(packet, batch)
                    continue
                for pixels, t in self.video.decode(packet):
                    batch.frames.append(pixels)
                    batch.times.append(t)
                    if len(batch.frames) >= self.batch_size:
                        self._put(self.decoded, batch)
                        batch = _Batch()
                if self.video.done and (self.aac is None or self.aac.done):
                    break
            self.video.check_complete()
            if self.aac is not None:
                batch.audio.extend(self.aac.flush())
        except av.FFmpegError as exc:
            raise media.corrupt("target_url", f"corrupt video data ({media.reason(exc)})") from None
        self._put(self.decoded, batch)
        self._put(self.decoded, None)

    def _audio_packet(self, packet: av.Packet[Any], batch: _Batch) -> None:
        if self.aac is not None:
            batch.audio.extend(self.aac.decode(packet))
        elif packet.dts is not None and packet.size:
            batch.audio.append(packet)  # copied as it is

    def _process(self) -> None:
        while True:
            batch: _Batch | None = self._get(self.decoded)
            if batch is not None and batch.frames:
                result = self.process(batch.frames)
                if len(result) != len(batch.frames):
                    raise ValueError(f"process returned {len(result)} frames, not {len(batch)}")
                batch.frames = result
            self._put(self.processed, batch)
            if batch is None:
                return

    def _open_output(self, first: Frame) -> None:
        height, width = first.shape[:2]
        self.size = (width + width % 2, height + height % 2)
        self.vout = media.add_h264_stream(
            self.out, self.size, self.rate, self.tb, bt709=self.video.to_sdr
        )
        if self.audio_mode == "copied" and self.ain is not None:
            self.aout = self.out.add_stream_from_template(self.ain)
        elif self.aac is not None:
            self.aout = self.out.add_stream("aac", rate=self.aac.rate)
            self.aout.layout = self.aac.layout

    def _encode_frame(self, pixels: Frame, t: float) -> None:
        frame = media.yuv420_frame(pixels, self.size)
        pts = round(t / self.tb)
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1  # duplicate or out-of-order source stamps
        self.last_pts = frame.pts = pts
        frame.time_base = self.tb
        self.out.mux(self.vout.encode(frame))

    def _encode(self) -> None:
        while True:
            batch: _Batch | None = self._get(self.processed)
            if batch is None:
                break
            if self.vout is None:
                if not batch.frames:
                    raise media.corrupt(
                        "target_url", "no video frame could be decoded in the range"
                    )
                self._open_output(batch.frames[0])
            for pixels, t in zip(batch.frames, batch.times, strict=True):
                self._encode_frame(pixels, t)
            for item in batch.audio:
                if isinstance(item, av.Packet):
                    item.stream = self.aout
                    self.out.mux(item)
                else:
                    self.out.mux(self.aout.encode(item))
            if batch.frames:
                self.frames += len(batch.frames)
                self.progress.put(self.frames)
        if self.vout is None:
            raise media.corrupt("target_url", "no video frame could be decoded in the range")
        self.out.mux(self.vout.encode(None))
        if self.audio_mode == "aac":
            self.out.mux(self.aout.encode(None))
        self.progress.put(None)


def transcode(
    src: Path,
    dst: Path,
    process: Process,
    *,
    batch_size: int = 8,
    start_s: float | None = None,
    end_s: float | None = None,
    checkpoint: Callable[[], None] = lambda: None,
    on_frames: Callable[[int], None] = lambda n: None,
    queue_batches: int = 4,
) -> TranscodeResult:
    """Decode `src`, run `process` on batches of upright BGR frames, write `dst` (MP4/H.264).

    `checkpoint()` runs in the caller's thread after each encoded batch, after `on_frames(n)`
    (frames written so far); an exception from either, from `process` or from the pipeline
    stops all threads, closes both containers, deletes `dst` and propagates unchanged."""
    if batch_size < 1 or queue_batches < 1:
        raise ValueError("batch_size and queue_batches must be at least 1")
    dst = Path(dst)
    inp = media.open_input(Path(src), "target_url")
    out: av.container.OutputContainer | None = None
    pipeline: _Pipeline | None = None
    ok = False
    try:
        out = av.open(str(dst), mode="w", format="mp4")
        pipeline = _Pipeline(inp, out, process, batch_size, queue_batches, (start_s, end_s))
        pipeline.run(on_frames, checkpoint)
        out.close()
        ok = True
    finally:
        if pipeline is not None:
            pipeline.stop.set()
            pipeline.shutdown()
        if out is not None and not ok:
            with contextlib.suppress(Exception):  # a half-written file is deleted anyway
                out.close()
        inp.close()
        if not ok:
            dst.unlink(missing_ok=True)
    assert pipeline is not None
    return _result(dst, pipeline)


def _result(dst: Path, pipeline: _Pipeline) -> TranscodeResult:
    with av.open(str(dst), mode="r") as done:
        duration = done.duration / 1_000_000 if done.duration is not None else 0.0
        audio = pipeline.audio_mode if done.streams.audio else None
    width, height = pipeline.size
    fps = float(pipeline.rate)
    return TranscodeResult(pipeline.frames, width, height, fps, duration, audio is not None, audio)
