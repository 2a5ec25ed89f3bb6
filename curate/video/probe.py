"""Metadata of a video file: streams, fps, VFR, rotation, SAR, duration, frames, audio.

`probe(path)` reads the headers and decodes the first frame (which proves the stream
decodes and carries the rotation). Counting frames and telling variable from constant
frame rate need every timestamp: `finish_probe(row, pts)` fills them from the decode pass
that split makes anyway, so a video is decoded once; `probe(path, count_frames=True)`
does that pass itself for standalone use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import av
import numpy as np

from curate import __version__
from curate import schema as S
from curate.errors import StageError, one_line
from curate.ids import video_id_of_file, video_id_of_missing
from curate.io.retry import is_infrastructure
from curate.io.uri import is_remote, local_copy
from curate.video.decode import geometry_of, open_video

VFR_SPREAD = 0.10  # frame intervals spreading more than 10% around the median: variable frame rate


def _base_row(uri: str) -> dict[str, Any]:
    return {S.SOURCE_URI: uri, S.TUBELET_VERSION: __version__}


def error_row(uri: str, video_id: str, stage: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {
        **_base_row(uri),
        S.VIDEO_ID: video_id,
        S.STATUS: S.STATUS_ERROR,
        S.FAILED_STAGE: stage,
        S.ERROR: reason,
        **extra,
    }


def _fraction(x: Any) -> float | None:
    return float(x) if x is not None and x.denominator else None


def probe(
    path: str | Path, count_frames: bool = False, video_id: str | None = None, source_uri: str | None = None
) -> dict[str, Any]:
    """One row of the videos table; unreadable inputs give a status=error row (never raise).

    `video_id`: the file's content id when the caller already hashed it (saves reading it twice).
    `source_uri`: what the row records as the source when `path` is a local copy of it (s3://...)."""
    uri = source_uri or str(path)
    if is_remote(path):  # an object: probe a worker-local copy (removed afterwards)
        try:
            with local_copy(path) as local:
                return probe(local, count_frames, video_id, source_uri=uri)
        except OSError as e:
            if is_infrastructure(e):  # the store or the disk, not this input: the job ends, a rerun reads it
                raise
            return error_row(uri, video_id_of_missing(uri), "probe", f"cannot read object: {one_line(e)}")
    try:
        size = os.stat(path).st_size
    except OSError as e:
        return error_row(uri, video_id_of_missing(uri), "probe", f"cannot read file: {e.strerror}")
    try:
        vid = video_id or video_id_of_file(path)
    except OSError as e:
        return error_row(
            uri, video_id_of_missing(uri), "probe", f"cannot read file: {e.strerror}", **{S.SIZE_BYTES: size}
        )
    if size == 0:
        return error_row(uri, vid, "probe", "empty file (0 bytes)", **{S.SIZE_BYTES: size})
    try:
        row = _probe_container(path)
    except StageError as e:
        return error_row(uri, vid, "probe", e.reason, **{S.SIZE_BYTES: size})
    except Exception as e:
        return error_row(uri, vid, "probe", one_line(e), **{S.SIZE_BYTES: size})
    row.update({**_base_row(uri), S.VIDEO_ID: vid, S.SIZE_BYTES: size, S.STATUS: S.STATUS_OK})
    if count_frames:
        try:
            finish_probe(row, _decode_pts(path))
        except StageError as e:
            return error_row(uri, vid, "probe", e.reason, **{S.SIZE_BYTES: size})
    return row


def _probe_container(path: str | Path) -> dict[str, Any]:
    container, stream = open_video(path, threads=False)
    try:
        cc = stream.codec_context
        audio = container.streams.audio
        duration = None
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1e6
        try:
            first = next(container.decode(stream))
        except (StopIteration, av.FFmpegError) as e:
            raise StageError("probe", f"no decodable video frame ({cc.name}): {one_line(e)}") from e
        geom = geometry_of(stream, first)
        w, h = geom.display_size
        return {
            S.CONTAINER: container.format.name,
            S.VIDEO_CODEC: cc.name,
            S.CODED_WIDTH: geom.coded_width,
            S.CODED_HEIGHT: geom.coded_height,
            S.WIDTH: w,
            S.HEIGHT: h,
            S.ROTATION: geom.rotation,
            S.SAR: f"{geom.sar.numerator}:{geom.sar.denominator}",
            S.FPS_NOMINAL: _fraction(stream.guessed_rate) or _fraction(stream.base_rate),
            S.FPS_AVG: _fraction(stream.average_rate),
            S.DURATION: duration,
            S.PACKET_COUNT: stream.frames or None,
            S.HAS_AUDIO: bool(audio),
            S.AUDIO_CODEC: audio[0].codec_context.name if audio else None,
        }
    finally:
        container.close()


def _decode_pts(path: str | Path) -> np.ndarray:
    container, stream = open_video(path)
    pts = []
    try:
        for frame in container.decode(stream):
            pts.append(float(frame.pts * frame.time_base) if frame.pts is not None else np.nan)
    except av.FFmpegError as e:
        if not pts:
            raise StageError("probe", f"decoding failed: {one_line(e)}") from e
    finally:
        container.close()
    return np.asarray(pts, np.float64)


def finish_probe(row: dict[str, Any], pts: np.ndarray) -> dict[str, Any]:
    """Fill frame count, VFR flag, average fps and duration from every frame's timestamp."""
    n = len(pts)
    row[S.FRAME_COUNT] = n
    if n >= 2:
        d = np.diff(np.sort(pts))
        med = float(np.median(d))
        if med > 0:
            spread = (np.percentile(d, 99) - np.percentile(d, 1)) / med
            row[S.IS_VFR] = bool(spread > VFR_SPREAD)
            row[S.DURATION] = float(pts.max() - pts.min() + med)
            row[S.FPS_AVG] = n / row[S.DURATION]
    else:
        row[S.IS_VFR] = False
    return row
