"""The hybrid detector's cheap path on a generated video: which hard cuts skip TransNetV2.

One 300-frame video (six model windows of 50 frames) holds one case per window:
window 1 a clean hard cut, window 2 a 5-frame flash inside a shot, window 3 a 2-frame
dissolve, window 4 cuts into and out of black. Only the clean cut may be accepted without
the model; the others must reach it. TransNetV2 (real packaged weights) runs once over the
whole video; the hybrid runs replay those outputs for the windows it asks for (same grid).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from curate.shots.hybrid import (
    HybridConfig,
    HybridDetector,
    colour_histograms,
    confident_cuts,
    cut_score,
    frame_diff,
    hist_change,
    proposals,
)
from curate.shots.transitions import LumaStats, luma_fades
from curate.shots.transnet import FRAME_SIZE, STEP, TransNetConfig, TransNetDetector
from curate.synthetic.synth import pattern_frame
from curate.video.decode import iter_small_yuv
from curate.video.mp4 import write_video
from tests.test_transnet import RecordingScorer, ReplayScorer

W, H = 96, 54
# [first, end) frame ranges; the dissolve changes frames DISSOLVE[0] .. DISSOLVE[1] (the new shot's first)
CUT, FLASH, DISSOLVE, BLACK = 60, (110, 115), (160, 162), (230, 240)
CFG = HybridConfig(transnet=TransNetConfig(batch_size=6), sparse_every=0)


def _frame(t: int) -> np.ndarray:
    """Frame t of the test video (moving patterns, so frame differences are never zero)."""
    if t < CUT:
        return pattern_frame(1, t, W, H)
    if t < DISSOLVE[0]:
        f = pattern_frame(2, t, W, H)
        if FLASH[0] <= t < FLASH[1]:  # a flash: the same shot, much brighter, for 5 frames
            f = np.clip(f.astype(np.int16) + 90, 0, 255).astype(np.uint8)
        return f
    if t < DISSOLVE[1]:
        a = (t - DISSOLVE[0] + 1) / (DISSOLVE[1] - DISSOLVE[0] + 1)
        return (pattern_frame(2, t, W, H) * (1 - a) + pattern_frame(5, t, W, H) * a).astype(np.uint8)
    if t < BLACK[0]:
        return pattern_frame(5, t, W, H)
    if t < BLACK[1]:
        return np.zeros((H, W, 3), np.uint8)
    return pattern_frame(0, t, W, H)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    path = write_video(
        tmp_path_factory.mktemp("hybrid") / "cases.mp4", (_frame(t) for t in range(300)), fps=24
    )
    frames = [f for _, f in iter_small_yuv(Path(path), size=FRAME_SIZE)]
    return np.stack([f.yuv for f in frames]), np.array([f.pts for f in frames])  # (300, 27, 48, 3), (300,)


def test_only_the_clean_cut_is_confident(video: tuple[np.ndarray, np.ndarray]) -> None:
    yuv, _ = video
    d, hist = frame_diff(yuv), colour_histograms(yuv)
    sharp, _ = proposals(d, CFG, hist_change(yuv, CFG.hist_gap, hist))
    # every case is proposed: the flash's edges, the dissolve's frames, the black edges are sharp spikes
    assert {CUT, *FLASH, *range(DISSOLVE[0], DISSOLVE[1] + 1), *BLACK} <= set(sharp.tolist())
    spans = CFG.transnet.spans
    luma = LumaStats.of(yuv, spans)
    near_black = luma.black.copy()
    for a, b, _ in luma_fades(luma, spans):
        near_black[a : b + 1] = True
    sure = confident_cuts(d, hist, near_black, sharp, CFG)
    assert list(sure) == [CUT]
    assert sure[CUT] >= CFG.cut_ratio
    # each guard does the work: without it the case would pass as a clean cut
    assert set(confident_cuts(d, hist, np.zeros_like(near_black), sharp, CFG)) == {CUT, *BLACK}
    assert set(confident_cuts(d, hist, near_black, sharp, replace(CFG, cut_flash_keep=0.0))) == {CUT, *FLASH}
    loose = replace(CFG, cut_ratio=0.0, cut_calm_ratio=0.0, cut_hist_frames=0)  # the dissolve's three guards
    assert set(confident_cuts(d, hist, near_black, sharp, loose)) - {CUT} <= set(
        range(DISSOLVE[0], DISSOLVE[1] + 1)
    )
    assert set(confident_cuts(d, hist, near_black, sharp, loose)) - {CUT}


def test_clean_cut_skips_the_model_the_rest_reach_it(video: tuple[np.ndarray, np.ndarray]) -> None:
    yuv, pts = video
    full_det = TransNetDetector(CFG.transnet)
    full_det.scorer = RecordingScorer(CFG.transnet)
    full = full_det.detect_array(yuv, pts)
    runs = {}
    for cheap in (True, False):
        det = HybridDetector(replace(CFG, cheap_cuts=cheap))
        det.scorer = ReplayScorer(*full_det.scorer.last)
        runs[cheap] = (det.detect_array(yuv, pts), det)
    tr, det = runs[True]
    assert det.cheap_cuts == 1
    cut_window = CUT // STEP
    assert cut_window not in det.scorer.asked
    assert {FLASH[0] // STEP, DISSOLVE[0] // STEP, BLACK[0] // STEP} <= det.scorer.asked
    assert cut_window in runs[False][1].scorer.asked
    assert det.scorer.windows_run < runs[False][1].scorer.windows_run
    # same transitions as the full model run; the cheap cut's score is the documented mapping
    assert CUT in full.cuts
    assert (
        (tr.cuts, tr.excluded) == (full.cuts, full.excluded) == (runs[False][0].cuts, runs[False][0].excluded)
    )
    assert 0.5 < tr.frame_score[CUT] < 1.0
    assert tr.frame_score[CUT] == pytest.approx(cut_score(_ratio(yuv), CFG), abs=1e-6)


def _ratio(yuv: np.ndarray) -> float:
    """The clean cut's spike ratio."""
    d, hist = frame_diff(yuv), colour_histograms(yuv)
    sharp, _ = proposals(d, CFG, hist_change(yuv, CFG.hist_gap, hist))
    return confident_cuts(d, hist, np.zeros(len(d), bool), sharp, CFG)[CUT]


def test_frames_the_model_never_scored_get_a_null_boundary_score(
    video: tuple[np.ndarray, np.ndarray],
) -> None:
    from curate.shots.split import SplitConfig, clip_rows, clip_spans

    yuv, pts = video
    single = np.random.default_rng(0).uniform(0.01, 0.2, len(pts)).astype(np.float32)  # no cut from the model
    det = HybridDetector(CFG)
    det.scorer = ReplayScorer(single, np.zeros_like(single))  # model outputs without running the model
    tr = det.detect_array(yuv, pts)
    seen = np.zeros(len(pts), bool)
    for k in det.scorer.asked:
        seen[k * STEP : (k + 1) * STEP] = True
    unscored = [i for i in range(1, len(pts)) if not seen[i - 1] and i != CUT]
    assert unscored and np.isnan(tr.frame_score[unscored]).all()  # unknown, not 0.0
    both = [i for i in range(1, len(pts)) if seen[i - 1] and i != CUT]
    assert both and np.allclose(tr.frame_score[both], single[np.array(both) - 1])
    video_row = {"video_id": "v", "source_uri": "x.mp4", "width": 48, "height": 27}
    rows = clip_rows(video_row, tr, clip_spans(tr, SplitConfig(min_seconds=0.5))[0], "hybrid", "h")
    starts = {r["start_frame"]: r["boundary_score_start"] for r in rows}
    assert any(v is None for s, v in starts.items() if s in unscored)
    assert all(v is not None and not np.isnan(v) for s, v in starts.items() if s not in unscored)
