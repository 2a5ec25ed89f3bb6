"""Decode each clip once into the small frames every scorer needs (the CPU step of score).

One `decode_clip` call per clip selects the union of
- `clip_frames` frames spread over the span (inside `frame_margin`) for CLIP/aesthetic, and
- `motion_pairs` adjacent-frame pairs for optical flow,
all converted straight to the analysis size (short side `analysis_short_side`). The cheap
scores come from those frames. A clip passing the cheap gate then meets the frame models,
cheapest first, each only if the rules before it passed (`filters.FRAME_SCORERS`): optical
flow and camera motion on the adjacent pairs (curate/scores/flow.py), NSFW (curate/scores/nsfw.py) and
OCR (curate/scores/ocr.py) on the CLIP frames at analysis size. The CLIP frames are then
centre-cropped to the model input (`image_size`) and travel on to the model actors as a
small uint8 array in a transient column. A clip failing an absolute cheap or frame-model
rule gets no frames, so it is never sent to the model.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from curate.decisions import filters
from curate.errors import one_line
from curate.schema import (
    CAMERA_MOTION,
    CLIP_SCHEMA,
    END_FRAME,
    END_PTS,
    ERROR,
    FAILED_STAGE,
    HEIGHT,
    OCR_TEXT,
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
from curate.scores import flow, nsfw, ocr
from curate.scores.cheap_scores import cheap_scores, pair_offsets
from curate.scores.score_config import ScoreConfig
from curate.video.decode import ClipFrames, decode_clip, sample_uniform

# Transient columns between the CPU step and the model actors; never written to disk.
FRAMES = "_score_frames"  # bytes of a (T, S, S, 3) uint8 array
FRAMES_SHAPE = "_score_frames_shape"  # [T, S, S, 3]
TRANSIENT_FIELDS = (pa.field(FRAMES, pa.binary()), pa.field(FRAMES_SHAPE, pa.list_(pa.int32())))
STAGE = "score"
# Every column the CPU step fills: cheap scores, then what the frame models add.
CPU_COLUMNS = (*filters.CHEAP_COLUMNS, *filters.FRAME_COLUMNS, CAMERA_MOTION, OCR_TEXT)


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


def decode_frames(row: dict[str, Any], cfg: ScoreConfig) -> tuple[ClipFrames, np.ndarray]:
    """One clip row -> (its sampled frames at analysis size, mask of the CLIP frames among them)."""
    n = int(row[END_FRAME]) - int(row[START_FRAME])
    clip_off, all_off = sample_offsets(n, cfg)
    short = max(cfg.analysis_short_side, cfg.image_size)
    size = analysis_size(int(row[WIDTH]), int(row[HEIGHT]), short)
    cf = decode_clip(row[SOURCE_URI], row[START_PTS], row[END_PTS], offsets=all_off, size=size)
    return cf, np.isin(cf.indices, clip_off)


def frame_model_scores(
    cf: ClipFrames, pick: np.ndarray, cfg: ScoreConfig, scores: dict[str, Any]
) -> str | None:
    """Run the enabled frame models in cost order into `scores`; stop at the first failed rule (returned)."""
    run = {
        "flow": (cfg.flow.enabled, lambda: flow.flow_scores(cf.frames, cf.pts, cfg.flow, indices=cf.indices)),
        "nsfw": (cfg.nsfw.enabled, lambda: nsfw.detector(cfg.nsfw).scores(cf.frames[pick])),
        "ocr": (cfg.ocr.enabled, lambda: ocr.reader(cfg.ocr).scores(cf.frames[pick])),
    }
    for name, cols in filters.FRAME_SCORERS:
        enabled, scorer = run[name]
        if not enabled:
            continue
        scores.update(scorer())
        why = filters.gate(cfg.filters, scores, cols)
        if why is not None:
            return why
    return None


def decode_and_score(row: dict[str, Any], cfg: ScoreConfig) -> tuple[dict[str, Any], np.ndarray | None]:
    """One clip row -> (CPU-step scores, CLIP frames (T, S, S, 3) uint8, or None when a rule failed).

    The clip is decoded once; frame models run only when the cheap gate passes.
    """
    cf, pick = decode_frames(row, cfg)
    scores = cheap_scores(cf.frames, cf.pts, cfg.cheap, indices=cf.indices)
    if filters.cheap_gate(cfg.filters, scores) is not None:
        return scores, None  # important: a clip failing a cheap filter meets no model
    if frame_model_scores(cf, pick, cfg, scores) is not None:
        return scores, None
    return scores, center_crop_square(cf.frames[pick], cfg.image_size)


def prepare_batch(batch: pa.Table, cfg: ScoreConfig) -> pa.Table:
    """CPU task: cheap scores for every ok row; frame models and CLIP frames only for rows passing the gates.

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
        for k in CPU_COLUMNS:
            updates.setdefault(k, []).append(scores.get(k))
        frames_col.append(None if frames is None else np.ascontiguousarray(frames).tobytes())
        shapes_col.append(None if frames is None else list(frames.shape))
        status.append(st)
        error.append(err)
        failed.append(fs)
    out = set_columns(
        conform(batch, CLIP_SCHEMA), {**updates, STATUS: status, ERROR: error, FAILED_STAGE: failed}
    )
    out = out.append_column(TRANSIENT_FIELDS[0], pa.array(frames_col, pa.binary()))
    return out.append_column(TRANSIENT_FIELDS[1], pa.array(shapes_col, pa.list_(pa.int32())))
