"""Cheap scores: normalisation on synthetic motion, and the real-video must-shows."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pytest

from curate.decisions.filters import FilterConfig, Rule, apply_cascade
from curate.errors import StageError
from curate.schema import BLACK_FRACTION, DROP_REASON, IS_STATIC, KEPT, MOTION, SHARPNESS, table_from_rows
from curate.scores import cheap_scores as cs
from curate.scores.score_config import SMOKE
from curate.scores.score_frames import prepare_batch
from curate.shots.clip_rows import clip_rows, frame_pts
from curate.video.decode import decode_clip

CHEAP_ONLY = FilterConfig(rules=(Rule(BLACK_FRACTION, "<=", 0.5),), near_dup_cosine=None)


def _texture(seed: int = 0, size: int = 1200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (size // 8, size // 8, 3)).astype(np.float32)
    return cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def _pan(speed: float, width: int, height: int, fps: float, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A camera pan at `speed` short sides per second over a texture, rendered at width x height."""
    tex = _texture()
    view = 400  # texture pixels per short side
    frames = []
    for i in range(n):
        x0 = round(speed * view * i / fps)
        crop = tex[100 : 100 + view, 100 + x0 : 100 + x0 + view * width // height]
        frames.append(cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA))
    return np.stack(frames), np.arange(n) / fps


def test_motion_compares_across_size_and_fps():
    slow_small, t1 = _pan(0.1, 160, 90, fps=30)
    slow_big, t2 = _pan(0.1, 320, 180, fps=15)
    fast_small, t3 = _pan(0.3, 160, 90, fps=30)
    a, b, c = cs.motion(slow_small, t1), cs.motion(slow_big, t2), cs.motion(fast_small, t3)
    assert abs(a - b) / max(a, b) < 0.25, (a, b)
    assert c > 2 * a
    still = np.repeat(slow_small[:1], 6, axis=0)
    scores = cs.cheap_scores(still, t1, cs.CheapConfig())
    assert scores[MOTION] < 1e-3 and scores[IS_STATIC]
    assert not cs.cheap_scores(slow_small, t1, cs.CheapConfig())[IS_STATIC]


def test_sharpness_brightness_black_fraction():
    frames, _ = _pan(0.1, 160, 90, fps=30, n=4)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in frames])
    assert cs.sharpness(blurred) < 0.5 * cs.sharpness(frames)
    mixed = frames.copy()
    mixed[:2] = 3  # two near-black frames of four
    assert cs.black_fraction(mixed) == 0.5
    assert cs.brightness(np.full((2, 4, 4, 3), 255, np.uint8)) == pytest.approx(1.0, abs=1e-3)
    assert cs.pair_offsets(100, 3, 0.1).tolist() == [10, 11, 49, 50, 88, 89]


def test_carphone_distorted_is_less_sharp(real_videos):
    rows = clip_rows(real_videos / "carphone_pristine.mp4", [(0, 120)])
    rows += clip_rows(real_videos / "carphone_distorted.mp4", [(0, 120)])
    out = prepare_batch(table_from_rows(rows), SMOKE)
    pristine, distorted = out.column(SHARPNESS).to_pylist()
    assert distorted < 0.6 * pristine, (pristine, distorted)


def test_traffic_motion_inside_events_above_outside(real_videos, ground_truth):
    """Published DVR-Scan motion events (frame ranges in an ROI): motion in the ROI is higher inside them."""
    path = real_videos / "traffic_camera.mp4"
    ev = ground_truth["traffic_camera.mp4"]["published_motion_events"]
    x, y, w, h = ev["roi_x_y_w_h"]
    inside = [(a, b + 1) for a, b in ev["frame_ranges"]]
    bounds = [0] + [v for a, b in inside for v in (a, b)] + [ground_truth["traffic_camera.mp4"]["frames"]]
    outside = [(a, b) for a, b in zip(bounds[::2], bounds[1::2]) if b - a >= 20]
    pts, (vw, vh) = frame_pts(path)
    s = 2  # decode at half size; the ROI scales with it

    def roi_motion(a: int, b: int) -> float:
        end = pts[b] if b < len(pts) else pts[-1] + 0.04
        cf = decode_clip(path, pts[a], end, offsets=cs.pair_offsets(b - a, 6, 0.0), size=(vw // s, vh // s))
        roi = cf.frames[:, y // s : (y + h) // s, x // s : (x + w) // s]  # (T, H, W, 3) -> ROI crop
        return cs.motion(roi, cf.pts)

    m_in = [roi_motion(a, b) for a, b in inside]
    m_out = [roi_motion(a, b) for a, b in outside]
    assert min(m_in) > max(m_out), json.dumps({"inside": m_in, "outside": m_out})


def test_testvideo_black_segments_flagged_and_dropped(real_videos, ground_truth):
    gt = ground_truth["testvideo.mp4"]
    black = [(a, b + 1) for a, b in gt["black_frames"]]
    photos = [(30, 180), (240, 331), (424, 529), (559, 664)]
    rows = clip_rows(real_videos / "testvideo.mp4", black + photos)
    out = prepare_batch(table_from_rows(rows), SMOKE)
    frac = out.column(BLACK_FRACTION).to_pylist()
    assert frac[: len(black)] == [1.0] * len(black)
    assert frac[len(black) :] == [0.0] * len(photos)
    # the photo segments are stills: flagged static
    assert all(out.column(IS_STATIC).to_pylist()[len(black) :])
    decided, _ = apply_cascade(
        out.drop_columns([c for c in out.column_names if c.startswith("_")]), CHEAP_ONLY
    )
    assert decided.column(KEPT).to_pylist() == [False] * len(black) + [True] * len(photos)
    assert all(
        r.startswith("black_fraction <= 0.5: black_fraction=1")
        for r in decided.column(DROP_REASON).to_pylist()[:4]
    )
    assert isinstance(decided, pa.Table)


def test_motion_pairs_adjacent_frames_at_low_fps_and_never_across_the_clip():
    frames, _ = _pan(0.1, 160, 90, fps=2, n=4)  # a 2 fps timelapse: frames 0.5 s apart
    pts = np.arange(4) / 2.0
    assert cs.motion(frames, pts, indices=np.arange(4)) == pytest.approx(0.1, rel=0.3)
    with pytest.raises(StageError, match="no such pair"):  # without indices, 0.5 s gaps are not pairs
        cs.motion(frames, pts)
    # two adjacent pairs far apart: only the pairs count, not the jump between them
    far = np.stack([frames[0], frames[1], frames[3], frames[3]])
    assert cs.motion(far, np.array([0, 0.5, 10, 10.5]), indices=np.array([0, 1, 20, 21])) == pytest.approx(
        cs.motion(frames[:2], pts[:2], indices=np.arange(2)) / 2, rel=0.1
    )


def test_a_clip_without_a_frame_pair_is_an_error_row_not_static(real_videos):
    """Motion unknown is not motion 0.0: a 1-frame clip must not be flagged static and kept/dropped as
    such."""
    rows = clip_rows(real_videos / "carphone_pristine.mp4", [(10, 11), (20, 60)])
    out = prepare_batch(table_from_rows(rows), SMOKE).to_pylist()
    assert (
        out[0]["status"] == "error"
        and out[0]["failed_stage"] == "score"
        and "motion needs two" in out[0]["error"]
    )
    assert out[0][MOTION] is None and out[0][IS_STATIC] is None
    assert out[1]["status"] == "ok" and out[1][MOTION] > 0
