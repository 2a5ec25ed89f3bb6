"""The `hybrid` detector: cheap candidates from frame differences, TransNetV2 only where ambiguous.

Most frames of most videos are plainly inside a shot. A cheap pass over the same 48x27
frames proposes where a transition may be:
- a frame difference that stands out from its neighbourhood (adaptive ratio, as
  PySceneDetect's AdaptiveDetector, at a low threshold so that every hard cut is proposed);
- a sustained rise of the difference over its long-term level (dissolves, fast fades), or
  of the colour-histogram change across +-10 frames (dissolves between moving shots).
Black segments and fades to/from black come from luma for every frame, as in `transnetv2`.

Unambiguous hard cuts need no model. A candidate is accepted as a cut at that frame (the
first frame of the new shot) when all of these hold (thresholds in `HybridConfig`, `cut_*`):
- its frame difference is large and at least `cut_ratio` times its +-`neighbourhood` mean;
- the `cut_calm_frames` frames on each side are calm (none comes near it): not a short
  dissolve or a two-frame flicker;
- the colour histogram changes most at that frame and is steady on both sides: not a
  gradual change;
- the `cut_flash_frames` frames after it do not return to the look before it, nor those
  before it to the look after it: not a flash, nor a flash's end;
- no black or luma-fade frame within `cut_black_gap` frames: cuts to/from black and fades
  go to the model and the luma rules.
Sustained-change runs that a confident cut explains on its own (they lie within the cut's
reach) are no candidates of their own.
The `frame_score` of a cut accepted this way is not a model probability: it is
`1 - 0.5 * cut_ratio / spike_ratio`, 0.5 at the acceptance threshold and approaching 1 as the
spike grows (a cut always scores >= 0.5, as with TransNetV2's 0.5 cut threshold).

TransNetV2 then scores only the 50-frame windows that hold an ambiguous candidate, plus every
`sparse_every`-th window of the rest as a safety net, and windows next to a transition that
runs over a window's edge. The windows sit on the same grid as the full `transnetv2` run, so
on every scored frame the probabilities are exactly those of the full run. Where the model
scored the frame before a confident cut (a safety-net or neighbouring window), the model's
verdict is kept; elsewhere the confident cut is used as is. Counters: `scorer.windows_run`
(model windows), `frames_seen`, `cheap_cuts` (cuts accepted without the model).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from curate.shots.detect import Transitions
from curate.shots.detect_content import grow_dissolve, span_margin
from curate.shots.transitions import LumaStats, build_transitions, luma_fades, runs
from curate.shots.transnet import (
    FRAME_SIZE,
    STEP,
    TransNetConfig,
    TransNetScorer,
    collect,
    empty_transitions,
    num_windows,
)
from curate.shots.wipes import WipeConfig, find_wipes, thumbnails
from curate.video.decode import SmallFrame


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
    # confident hard cuts, accepted without the model. Margins on the 16 real videos: the true
    # cuts accepted have spike ratios 7.7-33, every non-cut candidate <= 2.5 (module docstring)
    cheap_cuts: bool = True  # False: every candidate goes to the model (the previous behaviour)
    cut_ratio: float = 5.0  # diff >= ratio * (mean diff of the +-neighbourhood, spike left out, + diff_floor)
    cut_min_diff: float = 6.0  # ... and diff >= this: not noise on static footage (a jump cut in one
    # scene changes 6-9 on the 48x27 frames; the ratio above keeps noise out)
    cut_calm_frames: int = 3  # the frames this close on each side are the spike's neighbours ...
    cut_calm_ratio: float = 3.0  # ... diff >= ratio * (their largest diff + diff_floor): not a short dissolve
    cut_hist_frames: int = 3  # histograms of this many frames on each side are steady: the change
    # across the cut (old shot's last frame -> new shot's first) is at least each of their changes
    cut_flash_frames: int = 10  # over this many frames after (before) the cut the histogram must stay away
    cut_flash_keep: float = 0.5  # from the old (new) shot's by >= this share of the cut's change (no flash)
    cut_black_gap: int = 3  # no black frame, luma fade or wipe within this many frames (cuts to/from black)
    wipes: WipeConfig | None = field(
        default_factory=WipeConfig
    )  # spatial transitions (curate/shots/wipes.py)
    wipe_margin: int = 2  # frames added on each side of a wipe (as the content detector's margin) ...
    wipe_grow: float = (
        0.1  # ... plus this share of its detected length (curate/shots/detect_content.py `span_margin`)
    )
    flash_keep: float = 0.5  # a cut whose old look returns within 2 frames (closer than this share
    # of the cut's change) is a flash, for the model's cuts as for the cheap ones
    dissolve_edge_levels: float = 2.0  # model dissolves grow while the next frame holds this much of
    # the other shot (curate/shots/detect_content.py `grow_dissolve`)
    burst_frames: int = 4  # a model cut must stand out from the median difference of this many frames ...
    burst_ratio: float = 2.0  # ... on each side by this factor (`in_motion_burst`)
    dissolve_margin: int = 2  # frames added on each side of a grown dissolve
    flash_span: int = 12  # model spans shorter than this whose sides look alike are flashes too


SMOKE = HybridConfig(transnet=TransNetConfig(batch_size=4))
DEFAULT = HybridConfig()


def frame_diff(yuv: np.ndarray) -> np.ndarray:
    """(N,) mean absolute difference of each frame to the previous one (0 for frame 0)."""
    d = np.zeros(len(yuv), np.float32)
    if len(yuv) > 1:
        diff = np.abs(yuv[1:].astype(np.int16) - yuv[:-1].astype(np.int16))  # (N-1, h, w, 3)
        d[1:] = diff.reshape(len(diff), -1).mean(axis=1)
    return d


def colour_histograms(yuv: np.ndarray) -> np.ndarray:
    """(N, 128) normalised colour histograms (8 x 4 x 4 YUV bins) of (N, h, w, 3) uint8 frames."""
    n = len(yuv)
    q = yuv.reshape(n, -1, 3) >> np.array([5, 6, 6], np.uint8)  # (N, h*w, 3): 8 x 4 x 4 bins
    codes = q[..., 0].astype(np.int64) * 16 + q[..., 1] * 4 + q[..., 2]  # (N, h*w)
    hist = np.bincount((codes + 128 * np.arange(n)[:, None]).ravel(), minlength=128 * n).reshape(n, 128)
    return hist / hist.sum(axis=1, keepdims=True)


def hist_distance(hist: np.ndarray, a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Share of pixels that change bin between frames a and b (0..1), elementwise."""
    return 0.5 * np.abs(hist[b] - hist[a]).sum(axis=-1)


def hist_change(yuv: np.ndarray, gap: int, hist: np.ndarray | None = None) -> np.ndarray:
    """(N,) share of pixels whose colour bin differs between frames i - gap and i + gap.

    Colour histograms barely move with camera or object motion but change across a
    dissolve, which frame differences of moving footage hide. `hist`: `colour_histograms(yuv)`
    when already computed.
    """
    n = len(yuv)
    hist = colour_histograms(yuv) if hist is None else hist
    i = np.arange(n)
    return hist_distance(hist, np.clip(i - gap, 0, n - 1), np.clip(i + gap, 0, n - 1))


def _window_mean(x: np.ndarray, half: int) -> np.ndarray:
    """Mean of x over [i - half, i + half] (clipped at the ends)."""
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    i = np.arange(len(x))
    lo, hi = np.maximum(0, i - half), np.minimum(len(x), i + half + 1)
    return (c[hi] - c[lo]) / (hi - lo)


def _window_median(x: np.ndarray, half: int) -> np.ndarray:
    padded = np.pad(x, half, mode="edge")
    return np.median(
        np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1
    )  # (N, 2h+1) -> (N,)


def _spike_base(d: np.ndarray, w: int, near: int) -> np.ndarray:
    """(N,) mean of d over [i - w, i + w] leaving out [i - near, i + near] (clipped at the ends)."""
    n = len(d)
    c = np.concatenate([[0.0], np.cumsum(d, dtype=np.float64)])
    i = np.arange(n)
    lo, hi = np.maximum(0, i - w), np.minimum(n, i + w + 1)
    near_lo, near_hi = np.maximum(lo, i - near), np.minimum(hi, i + near + 1)
    count = np.maximum(1, (hi - lo) - (near_hi - near_lo))
    return ((c[hi] - c[lo]) - (c[near_hi] - c[near_lo])) / count


def proposals(
    d: np.ndarray, cfg: HybridConfig, hist: np.ndarray | None = None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Sharp candidates (frames whose difference stands out) and sustained-change runs [a, b].

    `d`: (N,) `frame_diff`; `hist`: (N,) `hist_change` (optional).
    """
    n = len(d)
    if n < 2:
        return np.zeros(0, np.int64), []
    # adaptive ratio: the neighbourhood mean leaves out the frame and its two neighbours
    sharp = (d >= cfg.diff_min) & (
        d >= cfg.diff_ratio * (_spike_base(d, cfg.neighbourhood, 1) + cfg.diff_floor)
    )
    # sustained change: dissolves and fades raise the difference for many frames
    smooth = _window_mean(d, cfg.sustained_frames // 2)
    level = _window_median(d, cfg.baseline_frames // 2)
    sustained = smooth >= cfg.sustained_ratio * level + cfg.sustained_min
    if hist is not None:
        sustained |= hist >= cfg.hist_ratio * _window_median(hist, cfg.baseline_frames // 2) + cfg.hist_min
    return np.flatnonzero(sharp[1:]) + 1, runs(sustained)


def candidates(d: np.ndarray, cfg: HybridConfig, hist: np.ndarray | None = None) -> np.ndarray:
    """Frames where a transition may start (sorted, unique): sharp ones and run middles.

    TransNetV2 peaks at the middle of a gradual transition; windows over the rest of its
    span are added by `spill_over` once the model has seen it.
    """
    sharp, spans = proposals(d, cfg, hist)
    cand = np.unique(np.concatenate([sharp, np.asarray([(a + b) // 2 for a, b in spans], np.int64)]))
    return cand[(cand > 0) & (cand < len(d))]


def confident_cuts(
    d: np.ndarray, hist: np.ndarray, near_black: np.ndarray, sharp: np.ndarray, cfg: HybridConfig
) -> dict[int, float]:
    """Sharp candidates that are unambiguous hard cuts -> their spike ratio (see the module docstring).

    `d`: (N,) `frame_diff`; `hist`: (N, 128) `colour_histograms`; `near_black`: (N,) bool,
    frames that are black or part of a luma fade.
    """
    n, out = len(d), {}
    base = _spike_base(d, cfg.neighbourhood, 0)
    for c in (int(x) for x in sharp):
        ratio = float(d[c] / (base[c] + cfg.diff_floor))
        if d[c] < cfg.cut_min_diff or ratio < cfg.cut_ratio:
            continue
        k = cfg.cut_calm_frames
        nbr = np.r_[d[max(1, c - k) : c], d[c + 1 : c + k + 1]]
        if len(nbr) and d[c] < cfg.cut_calm_ratio * (nbr.max() + cfg.diff_floor):
            continue
        g = cfg.cut_black_gap
        if near_black[max(0, c - g) : c + g + 1].any():
            continue
        jump = float(hist_distance(hist, c - 1, c))
        k = cfg.cut_hist_frames
        before = hist_distance(hist, np.arange(max(0, c - 1 - k), c - 1), c - 1)
        after = hist_distance(hist, np.arange(c + 1, min(n, c + 1 + k)), c)
        if np.r_[before, after, 0.0].max() > jump:
            continue
        # a flash (or a flash's end) returns to the look of the frames before (after) it
        f = cfg.cut_flash_frames
        later = hist_distance(hist, np.arange(c + 1, min(n, c + 1 + f)), c - 1)
        earlier = hist_distance(hist, np.arange(max(0, c - 1 - f), c - 1), c)
        if np.r_[later, earlier, jump].min() < cfg.cut_flash_keep * jump:
            continue
        out[c] = ratio
    return out


def is_flash(yuv: np.ndarray, c: int, keep: float) -> bool:
    """Whether the change at frame c is a flash of one or two frames, or a flash's end: frame
    c - 1's look returns within two frames, or frame c's look was there two or three frames before."""
    n = len(yuv)

    def dist(i: int, j: int) -> float:
        return float(np.abs(yuv[i].astype(np.int16) - yuv[j]).mean())

    change = keep * dist(c, c - 1)
    pairs = [(j, c - 1) for j in (c + 1, c + 2) if j < n] + [(c, j) for j in (c - 2, c - 3) if j >= 0]
    return any(dist(i, j) < change for i, j in pairs)


def in_motion_burst(d: np.ndarray, c: int, cfg: HybridConfig) -> bool:
    """Whether the change at frame c fails to stand out from the larger of the median frame
    differences of the `burst_frames` before and after it: a shaking camera, whose start and
    end have calm frames on one side only (a cut stands out from both of its shots)."""
    k = cfg.burst_frames
    sides = [x for x in (d[max(1, c - k) : c], d[c + 1 : c + 1 + k]) if len(x)]
    return bool(sides) and d[c] < cfg.burst_ratio * (max(float(np.median(x)) for x in sides) + cfg.diff_floor)


def no_shot_change(yuv: np.ndarray, a: int, b: int, keep: float) -> bool:
    """Whether the frames just outside [a, b] look alike (closer than `keep` times the most any
    inner frame departs from them): a flash or a passing disturbance, no transition between shots."""
    if a < 1 or b + 1 >= len(yuv):
        return False
    before, after = yuv[a - 1].astype(np.int16), yuv[b + 1].astype(np.int16)
    away = max(float(np.abs(yuv[i].astype(np.int16) - before).mean()) for i in range(a, b + 1))
    return float(np.abs(after - before).mean()) < keep * away


def cut_score(ratio: float, cfg: HybridConfig) -> float:
    """`frame_score` of a cut accepted without the model: 0.5 at `cut_ratio`, -> 1 as the spike grows."""
    return 1.0 - 0.5 * cfg.cut_ratio / max(ratio, cfg.cut_ratio)


def explained(span: tuple[int, int], cuts: Iterable[int], cfg: HybridConfig) -> bool:
    """Whether a sustained-change run lies within the reach of one hard cut (a cut alone raises
    the +-`sustained_frames // 2` mean and the +-`hist_gap` histogram change around it)."""
    reach = max(cfg.hist_gap, cfg.sustained_frames // 2)
    return any(c - reach <= span[0] and span[1] <= c + reach for c in cuts)


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
        self.cheap_cuts = 0  # hard cuts accepted without the model

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
        cfg, spans = self.cfg, self.cfg.transnet.spans
        luma = LumaStats.of(yuv, spans)
        d, hist = frame_diff(yuv), colour_histograms(yuv)
        sharp, sustained = proposals(d, cfg, hist_change(yuv, cfg.hist_gap, hist))
        near_black = luma.black.copy()
        for a, b, _ in luma_fades(luma, spans):
            near_black[a : b + 1] = True
        wipes = []
        thumbs = thumbnails(yuv[..., 0])  # (N, 18, 32)
        if cfg.wipes is not None:
            for a, b, _ in find_wipes(thumbs, [int(c) for c in sharp], cfg.wipes, near_black):
                m = span_margin(a, b, cfg.wipe_margin, cfg.wipe_grow)
                wipes.append((max(0, a - m), min(n - 1, b + m), "wipe"))
        sure: dict[int, float] = {}
        if cfg.cheap_cuts:
            near = near_black.copy()
            for a, b, _ in wipes:  # a wipe's frames are no clean cut: they go to the model
                near[a : b + 1] = True
            sure = confident_cuts(d, hist, near, sharp, cfg)
        cand = [int(c) for c in sharp if int(c) not in sure]
        cand += [(a + b) // 2 for a, b in sustained if not explained((a, b), sure, cfg)]
        single = np.zeros(n, np.float32)
        many = np.zeros(n, np.float32)
        done: set[int] = set()
        todo = initial_windows(n, np.asarray([c for c in cand if 0 < c < n], np.int64), cfg.sparse_every)
        while todo:
            ks = sorted(todo)
            s, m = self.scorer.score(yuv, ks)
            for k in ks:
                sl = slice(k * STEP, (k + 1) * STEP)
                single[sl], many[sl] = s[sl], m[sl]
            done |= todo
            todo = spill_over(many, done, spans.span_threshold)
        # the model marks a cut at c on frame c - 1: where it scored that frame, its verdict stands
        known = {c: cut_score(r, cfg) for c, r in sure.items() if (c - 1) // STEP not in done}
        self.cheap_cuts += len(known)
        scored = np.zeros(n, bool)  # frames the model saw: elsewhere the boundary score is unknown (null)
        for k in done:
            scored[k * STEP : (k + 1) * STEP] = True
        tr = build_transitions(
            pts, single, many, luma, spans, known_cuts=known, extra_spans=wipes, scored=scored
        )
        tr.cuts = [
            c
            for c in tr.cuts
            if c in known or not (is_flash(yuv, c, cfg.flash_keep) or in_motion_burst(d, c, cfg))
        ]
        # a short model span whose two sides look alike is a flash, not a transition: the shot goes on
        tr.excluded = [
            (a, b, k)
            for a, b, k in tr.excluded
            if not (k == "dissolve" and b - a < cfg.flash_span and no_shot_change(yuv, a, b, cfg.flash_keep))
        ]
        # the model's span of a dissolve next to a moving shot stops short: grow it frame by frame
        stop = near_black.copy()
        stop[[c for c in tr.cuts if c < n]] = True
        for a, b, _ in tr.excluded:
            stop[a : b + 1] = True
        flat = thumbs.reshape(n, -1)  # (N, 18, 32) -> (N, 576)
        grown = []
        for a, b, k in tr.excluded:
            if k == "dissolve":
                stop[a : b + 1] = False
                a, b = grow_dissolve(flat, a, b, cfg.dissolve_edge_levels, stop)
                a, b = max(0, a - cfg.dissolve_margin), min(n - 1, b + cfg.dissolve_margin)
                stop[a : b + 1] = True
            grown.append((a, b, k))
        tr.excluded = grown
        return tr
