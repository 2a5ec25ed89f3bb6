"""The `hybrid` detector: cheap candidates from frame differences, TransNetV2 only around them.

Most frames of most videos are plainly inside a shot. A cheap pass over the same 48x27
frames proposes where a transition may be:
- a frame difference that stands out from its neighbourhood (adaptive ratio, as
  PySceneDetect's AdaptiveDetector, at a low threshold so that every hard cut is proposed);
- a sustained rise of the difference over its long-term level (dissolves, fast fades), or
  of the colour-histogram change across +-10 frames (dissolves between moving shots).
Black segments and fades to/from black come from luma for every frame, as in `transnetv2`.
TransNetV2 then scores only the 50-frame windows that hold a candidate, plus every
`sparse_every`-th window of the rest as a safety net, and windows next to a transition that
runs over a window's edge. The windows sit on the same grid as the full `transnetv2` run, so
on every scored frame the probabilities are exactly those of the full run: the hybrid can
only differ where TransNetV2 would fire on a frame no candidate or sample reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from curate.decode import SmallFrame
from curate.detect import Transitions
from curate.transitions import LumaStats, build_transitions, runs
from curate.transnet import (
    FRAME_SIZE,
    STEP,
    TransNetConfig,
    TransNetScorer,
    collect,
    empty_transitions,
    num_windows,
)


@dataclass(frozen=True)
class HybridConfig:
    transnet: TransNetConfig = field(default_factory=TransNetConfig)
    neighbourhood: int = 12  # frames each side for the adaptive ratio
    diff_ratio: float = 2.0  # candidate when diff >= ratio * (neighbourhood mean + diff_floor)
    diff_floor: float = 1.0  # keeps the ratio finite on static footage
    diff_min: float = 3.0  # ... and diff >= this (mean |YUV difference|, 0-255)
    sustained_frames: int = 9  # frames averaged for a sustained change
    sustained_ratio: float = 3.0  # candidate when that average >= ratio * long-term median + sustained_min
    sustained_min: float = 0.5
    baseline_frames: int = 101  # frames of the long-term median
    hist_gap: int = 10  # colour histograms of frames i - gap and i + gap are compared ...
    hist_ratio: float = 2.0  # ... candidate when their distance >= ratio * long-term median + hist_min
    hist_min: float = 0.15  # (distance: share of pixels that change bin, 0..1)
    sparse_every: int = 16  # also score one window in this many (0: none)


SMOKE = HybridConfig(transnet=TransNetConfig(batch_size=4))
DEFAULT = HybridConfig()


def frame_diff(yuv: np.ndarray) -> np.ndarray:
    """(N,) mean absolute difference of each frame to the previous one (0 for frame 0)."""
    d = np.zeros(len(yuv), np.float32)
    if len(yuv) > 1:
        diff = np.abs(yuv[1:].astype(np.int16) - yuv[:-1].astype(np.int16))  # (N-1, h, w, 3)
        d[1:] = diff.reshape(len(diff), -1).mean(axis=1)
    return d


def hist_change(yuv: np.ndarray, gap: int) -> np.ndarray:
    """(N,) share of pixels whose colour bin differs between frames i - gap and i + gap.

    Colour histograms barely move with camera or object motion but change across a
    dissolve, which frame differences of moving footage hide.
    """
    n = len(yuv)
    q = yuv.reshape(n, -1, 3) >> np.array([5, 6, 6], np.uint8)  # (N, h*w, 3): 8 x 4 x 4 bins
    codes = q[..., 0].astype(np.int64) * 16 + q[..., 1] * 4 + q[..., 2]  # (N, h*w)
    hist = np.bincount((codes + 128 * np.arange(n)[:, None]).ravel(), minlength=128 * n).reshape(n, 128)
    hist = hist / hist.sum(axis=1, keepdims=True)
    i = np.arange(n)
    a, b = np.clip(i - gap, 0, n - 1), np.clip(i + gap, 0, n - 1)
    return 0.5 * np.abs(hist[b] - hist[a]).sum(axis=1)


def _window_mean(x: np.ndarray, half: int) -> np.ndarray:
    """Mean of x over [i - half, i + half] (clipped at the ends)."""
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    i = np.arange(len(x))
    lo, hi = np.maximum(0, i - half), np.minimum(len(x), i + half + 1)
    return (c[hi] - c[lo]) / (hi - lo)


def _window_median(x: np.ndarray, half: int) -> np.ndarray:
    padded = np.pad(x, half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)  # (N, 2h+1) -> (N,)


def candidates(d: np.ndarray, cfg: HybridConfig, hist: np.ndarray | None = None) -> np.ndarray:
    """Frames where a transition may start (sorted, unique).

    `d`: (N,) `frame_diff`; `hist`: (N,) `hist_change` (optional).
    """
    n, w = len(d), cfg.neighbourhood
    if n < 2:
        return np.zeros(0, np.int64)
    # adaptive ratio: the neighbourhood mean leaves out the frame and its two neighbours
    c = np.concatenate([[0.0], np.cumsum(d, dtype=np.float64)])
    i = np.arange(n)
    lo, hi = np.maximum(0, i - w), np.minimum(n, i + w + 1)
    near_lo, near_hi = np.maximum(lo, i - 1), np.minimum(hi, i + 2)
    count = np.maximum(1, (hi - lo) - (near_hi - near_lo))
    base = ((c[hi] - c[lo]) - (c[near_hi] - c[near_lo])) / count
    sharp = (d >= cfg.diff_min) & (d >= cfg.diff_ratio * (base + cfg.diff_floor))
    # sustained change: dissolves and fades raise the difference for many frames
    smooth = _window_mean(d, cfg.sustained_frames // 2)
    level = _window_median(d, cfg.baseline_frames // 2)
    sustained = smooth >= cfg.sustained_ratio * level + cfg.sustained_min
    # TransNetV2 peaks at the middle of a gradual transition; windows over the rest of its
    # span are added by `spill_over` once the model has seen it
    if hist is not None:
        sustained |= hist >= cfg.hist_ratio * _window_median(hist, cfg.baseline_frames // 2) + cfg.hist_min
    mids = [(a + b) // 2 for a, b in runs(sustained)]
    cand = np.unique(np.concatenate([np.flatnonzero(sharp[1:]) + 1, np.asarray(mids, np.int64)]))
    return cand[(cand > 0) & (cand < n)]


def initial_windows(n: int, cand: np.ndarray, sparse_every: int) -> set[int]:
    # a transition at c is marked by TransNetV2 on frame c - 1: score the windows of both
    wins = {int(f) // STEP for c in cand for f in (c - 1, c)}
    if sparse_every > 0:
        wins |= {k for k in range(num_windows(n)) if k % sparse_every == sparse_every // 2}
    return wins


def spill_over(many: np.ndarray, done: set[int], threshold: float) -> set[int]:
    """Unscored windows next to a scored one whose transition span runs over the shared edge."""
    n, out = len(many), set()
    for k in done:
        a, b = k * STEP, min(n, (k + 1) * STEP) - 1
        # two frames: a hard cut's one-frame `many` blip at the edge needs no neighbour
        if k > 0 and k - 1 not in done and min(many[a], many[min(a + 1, b)]) > threshold:
            out.add(k - 1)
        if b < n - 1 and k + 1 not in done and min(many[b], many[max(b - 1, a)]) > threshold:
            out.add(k + 1)
    return out


class HybridDetector:
    """The `hybrid` detector (see the module docstring); same output as `TransNetDetector`."""

    name = "hybrid"
    frame_size: tuple[int, int] | None = FRAME_SIZE
    target_area = FRAME_SIZE[0] * FRAME_SIZE[1]

    def __init__(self, cfg: HybridConfig = DEFAULT, *, device: str | None = None) -> None:
        self.cfg = cfg if device is None else replace(cfg, transnet=replace(cfg.transnet, device=device))
        self.scorer = TransNetScorer(self.cfg.transnet)  # the model loads on first use (once per actor)
        self.frames_seen = 0  # with scorer.windows_run: the share of frames the model saw

    def load(self) -> None:
        self.scorer.load()

    def detect(self, frames: Iterator[SmallFrame]) -> Transitions:
        return self.detect_array(*collect(frames))

    def detect_array(self, yuv: np.ndarray, pts: np.ndarray) -> Transitions:
        """`yuv`: (N, 27, 48, 3) uint8 frames, `pts`: (N,) seconds."""
        n = len(yuv)
        if n == 0:
            return empty_transitions()
        self.frames_seen += n
        spans = self.cfg.transnet.spans
        luma = LumaStats.of(yuv, spans)
        cand = candidates(frame_diff(yuv), self.cfg, hist_change(yuv, self.cfg.hist_gap))
        single = np.zeros(n, np.float32)
        many = np.zeros(n, np.float32)
        done: set[int] = set()
        todo = initial_windows(n, cand, self.cfg.sparse_every)
        while todo:
            ks = sorted(todo)
            s, m = self.scorer.score(yuv, ks)
            for k in ks:
                sl = slice(k * STEP, (k + 1) * STEP)
                single[sl], many[sl] = s[sl], m[sl]
            done |= todo
            todo = spill_over(many, done, spans.span_threshold)
        return build_transitions(pts, single, many, luma, spans)
