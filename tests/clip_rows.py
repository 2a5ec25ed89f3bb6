"""Build split-style clip rows for score tests (the split stage is written elsewhere)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate import ids
from curate.decode import geometry_of, open_video
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


def clip_rows(path: str | Path, spans: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """One ok clip row per [start, end) frame span of `path`, with pts-derived times."""
    pts, (w, h) = frame_pts(path)
    step = float(np.median(np.diff(pts))) if len(pts) > 1 else 0.04
    vid = ids.video_id_of_file(path)
    rows = []
    for k, (a, b) in enumerate(spans):
        end = float(pts[b]) if b < len(pts) else float(pts[-1]) + step
        rows.append({
            CLIP_ID: ids.clip_id(vid, a, b), VIDEO_ID: vid, SOURCE_URI: str(path),
            START_FRAME: a, END_FRAME: b, START_PTS: float(pts[a]), END_PTS: end,
            FPS: (b - a) / (end - float(pts[a])), WIDTH: w, HEIGHT: h,
            SHOT_INDEX: k, SPLIT_METHOD: "test", TRANSITION_BEFORE: "start" if k == 0 else "cut", STATUS: STATUS_OK,
        })
    return rows

