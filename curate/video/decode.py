"""Decode frames of a video, in display orientation and aspect (shared by every stage).

Two paths:
- `iter_small_yuv`: every frame, shrunk to a few thousand pixels straight from the
  decoder's YUV planes with OpenCV's area resize. It skips swscale's RGB conversion,
  which on 2 cores costs as much as decoding itself; split runs at ~85% of decode speed.
- `decode_clip`: the frames of one span (seek, then decode), sampled uniformly or at a
  target fps, converted to RGB at a chosen size. Only the selected frames are converted.

Display geometry follows ffmpeg: the sample aspect ratio stretches the width, and the
display-matrix rotation (PyAV `frame.rotation`, counter-clockwise degrees) is applied.
Times are presentation timestamps in seconds, so variable frame rate is handled.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from curate.errors import StageError
from curate.io.uri import is_remote, open_input

cv2.setNumThreads(1)  # tiny per-frame resizes: a thread pool costs more than it saves

# Counts decoder opens and decoded frames in this process; tests use it to prove that a
# stage decodes each clip once. Mutated, never rebound.
DECODE_STATS: Counter[str] = Counter()

_PLANAR_8BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"}


@dataclass(frozen=True)
class Geometry:
    coded_width: int
    coded_height: int
    sar: Fraction
    rotation: int  # counter-clockwise degrees, a multiple of 90

    @property
    def quarter_turns(self) -> int:
        # np.rot90 turns counter-clockwise for k > 0, as the display matrix does.
        return (self.rotation // 90) % 4

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as a player shows it: SAR applied to the width, then rotation."""
        w, h = self.coded_width, self.coded_height
        if self.sar > 0 and self.sar != 1:
            # non-square pixels: the width is rescaled, and (as ffmpeg's scale to display aspect)
            # rounded to even; square pixels keep the coded size, odd or not (637x357 stays so)
            w = round(w * float(self.sar))
            w += w % 2
        return (h, w) if self.quarter_turns % 2 else (w, h)

    def fit(self, target_area: int | None = None, max_side: int | None = None) -> tuple[int, int]:
        """A display-aspect (width, height) with about `target_area` pixels or `max_side` at most."""
        dw, dh = self.display_size
        if target_area is not None:
            s = math.sqrt(target_area / (dw * dh))
        elif max_side is not None:
            s = min(1.0, max_side / max(dw, dh))
        else:
            s = 1.0
        return max(2, round(dw * s)), max(2, round(dh * s))

    def coded_target(self, display_wh: tuple[int, int]) -> tuple[int, int]:
        """The pre-rotation (width, height) that rotates into `display_wh`."""
        w, h = display_wh
        return (h, w) if self.quarter_turns % 2 else (w, h)


def open_video(
    path: str | Path, threads: bool = True
) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open a file and its first video stream; a clear StageError when there is none."""
    DECODE_STATS["opens"] += 1
    try:
        if is_remote(path):
            # streamed from object storage by this worker: PyAV reads through pyarrow's seekable
            # file (1 MiB ranged GETs); a clip decode touches only the bytes of its span
            container = av.open(open_input(path), metadata_errors="ignore", buffer_size=1 << 20)
        else:
            container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise StageError("decode", f"cannot open as video: {e}") from e
    if not container.streams.video:
        container.close()
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise StageError("decode", f"no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if threads:
        stream.thread_type = "AUTO"
    return container, stream


def _sar_of(stream: av.video.stream.VideoStream, frame: av.VideoFrame | None = None) -> Fraction:
    for src in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if src is not None and src.numerator > 0 and src.denominator > 0:
            return Fraction(src.numerator, src.denominator)
    return Fraction(1, 1)


def geometry_of(stream: av.video.stream.VideoStream, frame: av.VideoFrame) -> Geometry:
    rot = round(getattr(frame, "rotation", 0) or 0)
    rot = (round(rot / 90) * 90) % 360  # the display matrix can carry rounding noise
    return Geometry(frame.width, frame.height, _sar_of(stream, frame), rot)


def _plane(frame: av.VideoFrame, i: int) -> np.ndarray:
    p = frame.planes[i]
    # (H, line_size) view of the decoder's buffer, cropped to the visible width; no copy.
    return np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]


def shrink(plane: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    """Downscale a uint8 plane to `wh` with ~16 samples averaged per output pixel.

    important: OpenCV's INTER_AREA from 720p straight to 64x36 costs ~0.8 ms, as much as
    decoding the frame; bilinear to 4x the target (2x2 samples per tap) then a 4x4 area
    average costs ~30 us and still low-passes enough for frame differences."""
    w, h = wh
    if plane.shape[1] >= 8 * w and plane.shape[0] >= 8 * h:
        plane = cv2.resize(plane, (4 * w, 4 * h), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(plane, wh, interpolation=cv2.INTER_AREA)


def small_yuv(frame: av.VideoFrame, coded_wh: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 YUV of one frame at `coded_wh` (before rotation)."""
    if frame.format.name in _PLANAR_8BIT:
        planes = [shrink(_plane(frame, i), coded_wh) for i in range(3)]
        return np.stack(planes, axis=-1)  # (h, w) x3 -> (h, w, 3)
    # 10-bit, NV12, RGB, paletted ...: let swscale do it (slower, rare).
    w, h = coded_wh
    return (
        frame.reformat(width=w, height=h, format="yuv444p", interpolation="AREA")
        .to_ndarray()
        .transpose(1, 2, 0)
    )


def rotate(img: np.ndarray, quarter_turns: int) -> np.ndarray:
    """Rotate (H, W, ...) counter-clockwise by quarter turns; contiguous result."""
    return np.ascontiguousarray(np.rot90(img, k=quarter_turns)) if quarter_turns else img


@dataclass(frozen=True)
class SmallFrame:
    index: int  # 0-based decoded-frame index
    pts: float  # seconds
    yuv: np.ndarray  # (h, w, 3) uint8, display orientation


def _pts_seconds(frame: av.VideoFrame, stream: av.video.stream.VideoStream, fallback: float) -> float:
    if frame.pts is None:
        return fallback
    tb = frame.time_base or stream.time_base
    return float(frame.pts * tb)


def iter_small_yuv(
    path: str | Path, target_area: int = 64 * 36, size: tuple[int, int] | None = None
) -> Iterator[tuple[Geometry, SmallFrame]]:
    """Every decoded frame of the file, shrunk to about `target_area` pixels, display-oriented.

    `size` (display width, height) forces an exact size instead (TransNetV2 wants 48x27).

    Yields (geometry, frame). Raises StageError("decode", ...) on an undecodable stream;
    frames decoded before the error have been yielded, so a truncated file keeps its head.
    """
    container, stream = open_video(path)
    geom: Geometry | None = None
    coded_wh = (0, 0)
    index = 0
    last_pts = 0.0
    step = 1.0 / float(stream.guessed_rate or 25)
    tb = float(stream.time_base or 0.0)
    try:
        for frame in container.decode(stream):
            if geom is None:
                geom = geometry_of(stream, frame)
                tb = float(frame.time_base or stream.time_base or 0.0)
                coded_wh = geom.coded_target(size or geom.fit(target_area=target_area))
            # float time base once: Fraction arithmetic per frame costs more than the resize
            raw = frame.pts
            pts = raw * tb if raw is not None else (last_pts + step if index else 0.0)
            yuv = rotate(small_yuv(frame, coded_wh), geom.quarter_turns)
            DECODE_STATS["frames"] += 1
            yield geom, SmallFrame(index, pts, yuv)
            last_pts = pts
            index += 1
    except av.FFmpegError as e:
        raise StageError("decode", f"decoding failed after {index} frames: {e}") from e
    finally:
        container.close()


@dataclass(frozen=True)
class ClipFrames:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, display orientation
    pts: np.ndarray  # (T,) float64 seconds
    indices: np.ndarray  # (T,) int64 frame offsets from the span's first frame


def sample_uniform(num_frames_in_span: int, n: int, margin: float = 0.0) -> np.ndarray:
    """`n` offsets spread over a span of `num_frames_in_span` frames, avoiding `margin` (share) at
    each end."""
    if num_frames_in_span <= 0:
        return np.zeros(0, np.int64)
    n = min(n, num_frames_in_span)
    lo = margin * (num_frames_in_span - 1)
    hi = (1.0 - margin) * (num_frames_in_span - 1)
    return np.unique(np.round(np.linspace(lo, hi, n)).astype(np.int64))


@dataclass(frozen=True)
class Selection:
    """Which frames of a span to convert, and at what size (see `decode_clip`)."""

    offsets: Sequence[int] | np.ndarray | None = None
    times: Sequence[float] | np.ndarray | None = None
    size: tuple[int, int] | None = None
    max_side: int | None = None

    def __post_init__(self) -> None:
        if (self.offsets is None) == (self.times is None):
            raise ValueError("pass exactly one of offsets= or times=")


class _Picker:
    """One selection's frames, picked as the span's frames go by (each converted at its size)."""

    def __init__(self, sel: Selection):
        self.sel = sel
        self.want_off = set(int(o) for o in sel.offsets) if sel.offsets is not None else None
        self.want_t = np.sort(np.asarray(sel.times, np.float64)) if sel.times is not None else None
        self.ti = 0
        self.frames: list[np.ndarray] = []
        self.pts: list[float] = []
        self.idx: list[int] = []
        self.geom: Geometry | None = None
        self.coded_wh = (0, 0)

    def start(self, geom: Geometry) -> None:
        self.geom = geom
        self.coded_wh = geom.coded_target(self.sel.size or geom.fit(max_side=self.sel.max_side))

    def _take(self, fr: av.VideoFrame, pts: float, k: int) -> None:
        w, h = self.coded_wh
        rgb = fr.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
        self.frames.append(rotate(rgb, self.geom.quarter_turns))
        self.pts.append(pts)
        self.idx.append(k)

    def see(self, frame: av.VideoFrame, pts: float, k: int, prev: tuple | None, eps: float) -> None:
        if self.want_off is not None:
            if k in self.want_off:
                self._take(frame, pts, k)
            return
        # each target time passed before this frame takes the latest earlier frame
        # (or this one, for targets before the span's first frame)
        while self.ti < len(self.want_t) and self.want_t[self.ti] < pts - eps:
            self._take(*(prev if prev is not None else (frame, pts, k)))
            self.ti += 1

    def end(self, prev: tuple | None, end_pts: float, eps: float) -> None:
        if self.want_t is not None and prev is not None:
            while self.ti < len(self.want_t) and self.want_t[self.ti] < end_pts - eps:
                self._take(*prev)
                self.ti += 1


def decode_clip(
    path: str | Path,
    start_pts: float,
    end_pts: float,
    *,
    offsets: Sequence[int] | np.ndarray | None = None,
    times: Sequence[float] | np.ndarray | None = None,
    size: tuple[int, int] | None = None,
    max_side: int | None = None,
) -> ClipFrames:
    """Decode the span [start_pts, end_pts) once and convert only the selected frames.

    Select by `offsets` (frame offsets within the span, e.g. `sample_uniform(...)`) or by
    `times` (seconds; each picks the latest frame at or before it: resampling to a target
    fps). `size` is the display (width, height); else `max_side` bounds the longer side;
    else the display size.
    """
    clip = decode_clips(path, start_pts, end_pts, [Selection(offsets, times, size, max_side)])[0]
    if clip is None:
        raise StageError("decode", no_frames(start_pts, end_pts))
    return clip


def no_frames(start_pts: float, end_pts: float) -> str:
    return f"no frames decoded in span {start_pts:.3f}-{end_pts:.3f}s"


def decode_clips(
    path: str | Path, start_pts: float, end_pts: float, selections: Sequence[Selection]
) -> list[ClipFrames | None]:
    """`decode_clip` for several selections in one decode of the span (the caption frames and the
    encode frames of a clip: one seek and one pass instead of two). Each result is what
    `decode_clip` with that selection alone returns, or None where it would raise `no_frames`."""
    container, stream = open_video(path)
    tb = stream.time_base
    eps = 1e-4
    pickers = [_Picker(s) for s in selections]
    geom: Geometry | None = None
    try:
        if start_pts > 0 and tb is not None:
            # backward=True lands on the keyframe at or before start; frames before start are skipped.
            container.seek(max(0, int((start_pts - 1.0) / tb)), stream=stream, backward=True)
        k = 0  # offset within the span
        prev: tuple[av.VideoFrame, float, int] | None = None
        for frame in container.decode(stream):
            DECODE_STATS["frames"] += 1
            pts = _pts_seconds(frame, stream, start_pts)
            if pts < start_pts - eps:
                continue
            if pts >= end_pts - eps:
                break
            if geom is None:
                geom = geometry_of(stream, frame)
                for pk in pickers:
                    pk.start(geom)
            for pk in pickers:
                pk.see(frame, pts, k, prev, eps)
            prev = (frame, pts, k)
            k += 1
        for pk in pickers:
            pk.end(prev, end_pts, eps)
    except av.FFmpegError as e:
        raise StageError("decode", f"decoding span {start_pts:.3f}-{end_pts:.3f}s failed: {e}") from e
    finally:
        container.close()
    return [
        ClipFrames(np.stack(pk.frames), np.asarray(pk.pts), np.asarray(pk.idx, np.int64))
        if pk.frames
        else None
        for pk in pickers
    ]
