"""Split-style clip rows built directly from frame spans, without running the split stage.

The score tests and the score benchmark (jobs/bench/score.py) feed the score stage such rows:
`clip_rows` takes spans of a real file and reads its pts from the demuxer; `window_rows` cuts
a constant-frame-rate file into fixed windows whose times follow from the frame rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate import ids
from curate.schema import (
    CLIP_ID,
    END_FRAME,
    END_PTS,
    FPS,
    HEIGHT,
    SHOT_INDEX,
    SOURCE_URI,
    SPLIT_METHOD,
    START_FRAME,
    START_PTS,
    STATUS,
    STATUS_OK,
    TRANSITION_BEFORE,
    VIDEO_ID,
    WIDTH,
)
from curate.video.decode import geometry_of, open_video


def frame_pts(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Presentation timestamps (s) of every frame, from the demuxer (no decode), and display size."""
    container, stream = open_video(path, threads=False)
    try:
        pts = sorted(float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None)
        container.seek(0)
        first = next(container.decode(stream))
        size = geometry_of(stream, first).display_size
    finally:
        container.close()
    return np.asarray(pts), size


def _row(
    path: str | Path,
    vid: str,
    k: int,
    span: tuple[int, int],
    times: tuple[float, float],
    fps: float,
    size: tuple[int, int],
    method: str,
    transition: str,
) -> dict[str, Any]:
    (a, b), (w, h) = span, size
    # important: source_uri is absolute, as the split stage stores it, so rows work from any cwd
    return {
        CLIP_ID: ids.clip_id(vid, a, b),
        VIDEO_ID: vid,
        SOURCE_URI: str(Path(path).absolute()),
        START_FRAME: a,
        END_FRAME: b,
        START_PTS: times[0],
        END_PTS: times[1],
        FPS: fps,
        WIDTH: w,
        HEIGHT: h,
        SHOT_INDEX: k,
        SPLIT_METHOD: method,
        TRANSITION_BEFORE: transition,
        STATUS: STATUS_OK,
    }


def clip_rows(
    path: str | Path, spans: Sequence[tuple[int, int]], method: str = "test"
) -> list[dict[str, Any]]:
    """One ok clip row per [start, end) frame span of `path`, with pts-derived times."""
    pts, size = frame_pts(path)
    step = float(np.median(np.diff(pts))) if len(pts) > 1 else 0.04
    vid = ids.video_id_of_file(path)
    rows = []
    for k, (a, b) in enumerate(spans):
        end = float(pts[b]) if b < len(pts) else float(pts[-1]) + step
        rows.append(
            _row(
                path,
                vid,
                k,
                (a, b),
                (float(pts[a]), end),
                (b - a) / (end - float(pts[a])),
                size,
                method,
                "start" if k == 0 else "cut",
            )
        )
    return rows


def window_rows(
    path: str | Path, num_frames: int, fps: float, size: tuple[int, int], window: int
) -> list[dict[str, Any]]:
    """Rows of consecutive `window`-frame clips of a constant-frame-rate file of `num_frames`
    frames (a trailing partial window is dropped); times are frame / fps, no demux."""
    vid = ids.video_id_of_file(path)
    starts = range(0, num_frames - window + 1, window)
    return [
        _row(
            path, vid, k, (a, a + window), (a / fps, (a + window) / fps), float(fps), size, "window", "window"
        )
        for k, a in enumerate(starts)
    ]
