"""Decode each clip once into the small frames every scorer needs (the CPU step of score).

One `decode_clip` call per clip selects the union of
- `clip_frames` frames spread over the span (inside `frame_margin`) for CLIP/aesthetic, and
- `motion_pairs` adjacent-frame pairs for optical flow,
all converted straight to the analysis size (short side `analysis_short_side`). The cheap
scores come from those frames; the CLIP frames are then centre-cropped to the model input
(`image_size`) and travel on to the model actors as a small uint8 array in a transient
column. A clip whose cheap scores fail an absolute cheap filter gets no frames, so it is
never sent to the model.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from curate import filters
from curate.cheap_scores import cheap_scores, pair_offsets
from curate.decode import decode_clip, sample_uniform
from curate.errors import one_line
from curate.schema import (
    CLIP_SCHEMA,
    END_FRAME,
    END_PTS,
    ERROR,
    FAILED_STAGE,
    HEIGHT,
    SOURCE_URI,
    START_FRAME,
    START_PTS,
    STATUS,
    STATUS_ERROR,
    STATUS_OK,
    WIDTH,
    conform,
    set_columns,
)
from curate.score_config import ScoreConfig

# Transient columns between the CPU step and the model actors; never written to disk.
FRAMES = "_score_frames"  # bytes of a (T, S, S, 3) uint8 array
FRAMES_SHAPE = "_score_frames_shape"  # [T, S, S, 3]
TRANSIENT_FIELDS = (pa.field(FRAMES, pa.binary()), pa.field(FRAMES_SHAPE, pa.list_(pa.int32())))
STAGE = "score"


def analysis_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Display (w, h) with min(w, h) == short_side and the clip's aspect, even sides."""
    s = short_side / min(width, height)
    w, h = max(2, round(width * s)), max(2, round(height * s))
    return w + w % 2, h + h % 2


def center_crop_square(frames: np.ndarray, side: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, side, side, 3): resize the short side to `side`, crop the centre (as CLIP does)."""
    h, w = frames.shape[1:3]
    s = side / min(h, w)
    rw, rh = max(side, round(w * s)), max(side, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    out = []
    for f in frames:
        r = cv2.resize(f, (rw, rh), interpolation=interp) if (rw, rh) != (w, h) else f
        y0, x0 = (rh - side) // 2, (rw - side) // 2
        out.append(r[y0 : y0 + side, x0 : x0 + side])
    return np.stack(out)


def sample_offsets(num_frames_in_span: int, cfg: ScoreConfig) -> tuple[np.ndarray, np.ndarray]:
    """(CLIP frame offsets, every offset to decode) of one span."""
    clip_off = sample_uniform(num_frames_in_span, cfg.clip_frames, cfg.frame_margin)
    pairs = pair_offsets(num_frames_in_span, cfg.motion_pairs, cfg.frame_margin)
    return clip_off, np.union1d(clip_off, pairs)


def decode_and_score(row: dict[str, Any], cfg: ScoreConfig) -> tuple[dict[str, Any], np.ndarray]:
    """One clip row -> (cheap scores, CLIP frames (T, S, S, 3) uint8); the clip is decoded once."""
    n = int(row[END_FRAME]) - int(row[START_FRAME])
    clip_off, all_off = sample_offsets(n, cfg)
    short = max(cfg.analysis_short_side, cfg.image_size)
    size = analysis_size(int(row[WIDTH]), int(row[HEIGHT]), short)
    cf = decode_clip(row[SOURCE_URI], row[START_PTS], row[END_PTS], offsets=all_off, size=size)
    scores = cheap_scores(cf.frames, cf.pts, cfg.cheap, indices=cf.indices)
    pick = np.isin(cf.indices, clip_off)
    return scores, center_crop_square(cf.frames[pick], cfg.image_size)


def prepare_batch(batch: pa.Table, cfg: ScoreConfig) -> pa.Table:
    """CPU task: cheap scores for every ok row; CLIP frames only for rows passing the cheap gate.

    Returns the full clip schema plus the transient frames columns.
    """
    rows = batch.to_pylist()
    updates: dict[str, list[Any]] = {}
    frames_col: list[bytes | None] = []
    shapes_col: list[list[int] | None] = []
    status, error, failed = [], [], []
    for row in rows:
        scores: dict[str, Any] = {}
        frames = None
        st, err, fs = row[STATUS], row[ERROR], row[FAILED_STAGE]
        if row[STATUS] == STATUS_OK:
            try:
                scores, frames = decode_and_score(row, cfg)
            except Exception as e:
                if cfg.on_error == "raise":
                    raise
                st, err, fs = STATUS_ERROR, one_line(e), STAGE
            else:
                if filters.cheap_gate(cfg.filters, scores) is not None:
                    frames = None  # important: a clip failing a cheap filter never reaches the model
        for k in filters.CHEAP_COLUMNS:
            updates.setdefault(k, []).append(scores.get(k))
        frames_col.append(None if frames is None else np.ascontiguousarray(frames).tobytes())
        shapes_col.append(None if frames is None else list(frames.shape))
        status.append(st)
        error.append(err)
        failed.append(fs)
    out = set_columns(conform(batch, CLIP_SCHEMA), {**updates, STATUS: status, ERROR: error, FAILED_STAGE: failed})
    out = out.append_column(TRANSIENT_FIELDS[0], pa.array(frames_col, pa.binary()))
    return out.append_column(TRANSIENT_FIELDS[1], pa.array(shapes_col, pa.list_(pa.int32())))
