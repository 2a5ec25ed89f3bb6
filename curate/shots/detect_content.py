"""Our content detector: frame-exact hard cuts, fades, dissolves and black, from tiny frames.

Built on PySceneDetect's ideas (ContentDetector's frame-difference score, AdaptiveDetector's
ratio to the neighbourhood, ThresholdDetector's black level) with three changes that
measure better on the real test videos (see README, "Shot detection"):

- the cut score is the frame difference at frame i divided by the *median* difference of
  its neighbours, so a cut is placed on the first frame of the new shot (no smoothing
  lag) and fast motion, whose neighbours move as much, is not a cut;
- fades are luma ramps anchored on black segments (walked outward from the black frames),
  so long slow fades over moving content are found at their real extent;
- dissolves are found with a linear-blend test (twin comparison, Zhang et al. 1993):
  a window whose middle frames are convex mixes of its end frames, while the end frames
  differ as much as two shots do. Pans and zooms fail the blend test;
- spatial transitions (wipes, iris, slides, pushes) are fitted as composites of the frames
  before and after them, on the same thumbnails (curate/shots/wipes.py);
- a change that returns to the previous look within two frames is a flash, not a cut.

Everything streams: per frame we keep a few scalars and a 32x18 luma thumbnail
(~600 bytes), so memory does not grow with resolution and stays ~60 MB for an hour.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np

from curate.shots.detect import TransitionKind, Transitions
from curate.shots.wipes import WipeConfig, find_wipes, shift_error
from curate.video.decode import SmallFrame

THUMB = (32, 18)  # (w, h) of the luma thumbnails used by the dissolve test


@dataclass(frozen=True)
class ContentConfig:
    target_area: int = 64 * 36
    cut_ratio: float = 2.0  # frame difference / median neighbour difference, at least
    min_cut_diff: float = 8.0  # mean abs YUV difference (0-255), at least
    neighbours: int = 4  # frames each side for the neighbourhood median
    black_luma: float = 24.0  # mean Y (limited range 16-235) at or below which a frame is black
    fade_min_span: float = 20.0  # luma change a ramp must make to count as a fade
    fade_step: float = 0.25  # per-frame luma change that continues a ramp
    fade_plateau: int = 2  # flat frames tolerated inside a ramp
    fade_min_frames: int = 4  # shorter ramps are cuts to/from black, not fades
    dissolve_windows: tuple[int, ...] = (12, 20, 30, 45)  # window lengths tried (frames)
    dissolve_min_change: float = 12.0  # end frames of a dissolve differ at least this much
    dissolve_max_residual: float = 0.22  # blend residual / end-frame difference, at most
    dissolve_edge_levels: float = (
        2.0  # a dissolve grows while the next frame holds this much of the other shot
    )
    dissolve_stand_out: float = 1.5  # end-frame change / the least of the same change just before and after
    margin: int = 2  # frames added on each side of a gradual transition (safety) ...
    dissolve_grow: float = 0.15  # ... plus this share of a dissolve's detected length (`span_margin`)
    wipe_grow: float = 0.1  # ... plus this share of a wipe's detected length
    flash_frames: int = 3  # a change whose old look returns within this many frames is a flash
    flash_keep: float = 0.5  # a blend-like span whose outside frames are closer than this share of
    # its departure from them is a flash, not a dissolve
    pan_reach: tuple[int, int] = (6, 3)  # thumbnail shifts (dx, dy) tried: a span explained by one is a pan
    wipes: WipeConfig | None = field(
        default_factory=WipeConfig
    )  # spatial transitions (curate/shots/wipes.py); None: off


@dataclass
class _Series:
    """Per-frame scalars and thumbnails gathered in one pass."""

    pts: np.ndarray
    diff: np.ndarray  # (N,) mean |f_i - f_{i-1}| over YUV; diff[0] = 0
    diff2: np.ndarray  # (N,) mean |f_i - f_{i-2}|; used to reject flashes ...
    diff3: np.ndarray  # (N,) mean |f_i - f_{i-3}|; ... of one or two frames
    luma: np.ndarray  # (N,) mean Y
    thumbs: np.ndarray  # (N, 18, 32) uint8 luma


def gather(frames: Iterator[SmallFrame]) -> _Series:
    pts: list[float] = []
    diff: list[float] = []
    diff2: list[float] = []
    diff3: list[float] = []
    luma: list[float] = []
    thumbs: list[np.ndarray] = []
    prev: np.ndarray | None = None
    prev2: np.ndarray | None = None
    prev3: np.ndarray | None = None
    for fr in frames:
        cur = fr.yuv.astype(np.int16)
        diff.append(float(np.abs(cur - prev).mean()) if prev is not None else 0.0)
        diff2.append(float(np.abs(cur - prev2).mean()) if prev2 is not None else 0.0)
        diff3.append(float(np.abs(cur - prev3).mean()) if prev3 is not None else 0.0)
        y = fr.yuv[..., 0]
        luma.append(float(y.mean()))
        thumbs.append(cv2.resize(y, THUMB, interpolation=cv2.INTER_AREA))
        pts.append(fr.pts)
        prev3, prev2, prev = prev2, prev, cur
    n = len(pts)
    return _Series(
        np.asarray(pts, np.float64),
        np.asarray(diff, np.float32),
        np.asarray(diff2, np.float32),
        np.asarray(diff3, np.float32),
        np.asarray(luma, np.float32),
        np.stack(thumbs) if n else np.zeros((0, THUMB[1], THUMB[0]), np.uint8),
    )


def cut_ratio(diff: np.ndarray, k: int) -> np.ndarray:
    """diff[i] / (the larger of the medians of diff over i-k..i-1 and over i+1..i+k, + 1).

    The larger one-sided median, not the median of both sides: a burst of fast motion (a
    shaking camera) starts and ends with calm frames on one side only, and a cut is a change
    that stands out from both of its shots."""
    n = len(diff)
    ratio = np.zeros(n, np.float32)
    for i in range(1, n):
        sides = [x for x in (diff[max(1, i - k) : i], diff[i + 1 : i + 1 + k]) if len(x)]
        ratio[i] = diff[i] / (max(float(np.median(x)) for x in sides) + 1.0) if sides else diff[i]
    return ratio


def find_cuts(s: _Series, cfg: ContentConfig) -> tuple[list[int], np.ndarray]:
    ratio = cut_ratio(s.diff, cfg.neighbours)
    # probability-like score: 0.5 at the decision threshold, saturating at twice it
    score = np.clip((ratio - 1.0) / (2.0 * (cfg.cut_ratio - 1.0)), 0.0, 1.0)
    cuts = []
    n = len(s.diff)
    for i in range(1, n):
        if ratio[i] < cfg.cut_ratio or s.diff[i] < cfg.min_cut_diff:
            continue
        if is_flash(s, i) or thumb_flash(s.thumbs, i, cfg.flash_frames):
            continue
        if cuts and i - cuts[-1] < 2:
            continue
        cuts.append(i)
    return cuts, score


def is_flash(s: _Series, i: int, keep: float = 0.5) -> bool:
    """Whether the change at frame i is a flash of one or two frames, or a flash's end: a
    frame within two after i looks like frame i - 1 again, or frame i looks like one of the
    two frames before i - 1 ("like": closer than `keep` times the change at i)."""
    n, change = len(s.diff), keep * s.diff[i]
    back = [(i + 1, s.diff2), (i + 2, s.diff3)]  # f_j vs f_{i-1}: diff2[i+1], diff3[i+2]
    if any(j < n and d[j] < change for j, d in back):
        return True
    return (i >= 2 and s.diff2[i] < change) or (i >= 3 and s.diff3[i] < change)


def thumb_flash(thumbs: np.ndarray, i: int, reach: int, keep: float = 0.5) -> bool:
    """`is_flash` for flashes of up to `reach` frames (a decaying flash, a strobe), on the luma
    thumbnails: some frame of the `reach + 1` before frame i looks like some frame of the
    `reach + 1` from i on ("like": closer than `keep` times the change at i), the pair
    (i - 1, i) itself left out. Across a cut, hard or jump, no frame after looks like one before."""
    n = len(thumbs)

    def dist(x: int, y: int) -> float:
        return float(np.abs(thumbs[x].astype(np.int16) - thumbs[y]).mean())

    change = keep * dist(i, i - 1)
    return any(
        dist(x, y) < change
        for x in range(max(0, i - reach - 1), i)
        for y in range(i, min(n, i + reach + 1))
        if (x, y) != (i - 1, i)
    )


def span_margin(first: int, last: int, base: int, share: float) -> int:
    """Frames added on each side of a detected gradual span [first, last]: `base` plus `share`
    of its length. The detected span is where the change is measurable on the small frames;
    eased (slow-in, slow-out) progress and feathered edges carry faint change further out,
    by an amount that grows with the transition's length."""
    return base + int(np.ceil(share * (last - first + 1)))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive [first, last] runs of True."""
    out = []
    start = None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i - 1))
            start = None
    if start is not None:
        out.append((start, len(mask) - 1))
    return out


def _ramp(luma: np.ndarray, start: int, step: int, cfg: ContentConfig) -> int:
    """Walk from `start` in direction `step` while luma keeps rising away from black.

    Returns the last frame of the ramp (== start - step when there is none)."""
    n = len(luma)
    i = start
    last = start - step
    flat = 0
    while 0 <= i < n:
        ref = luma[i - step] if 0 <= i - step < n else cfg.black_luma
        if luma[i] > ref + cfg.fade_step:
            last = i
            flat = 0
        elif flat < cfg.fade_plateau and luma[i] >= ref - cfg.fade_step:
            flat += 1
        else:
            break
        i += step
    return last


def find_black_and_fades(s: _Series, cfg: ContentConfig) -> list[tuple[int, int, TransitionKind]]:
    n = len(s.luma)
    out: list[tuple[int, int, TransitionKind]] = []
    for a, b in _runs(s.luma <= cfg.black_luma):
        out.append((a, b, "black"))
        # fade-in after the black run: luma rises frame after frame
        end = _ramp(s.luma, b + 1, +1, cfg)
        if end - b >= cfg.fade_min_frames and s.luma[end] - s.luma[b] >= cfg.fade_min_span:
            out.append((b + 1, min(n - 1, end), "fade_in"))
        # fade-out before it: walking backwards, luma rises
        first = _ramp(s.luma, a - 1, -1, cfg)
        if a - first >= cfg.fade_min_frames and s.luma[first] - s.luma[a] >= cfg.fade_min_span:
            out.append((max(0, first), a - 1, "fade_out"))
    return out


def find_dissolves(s: _Series, cfg: ContentConfig, cuts: list[int]) -> list[tuple[int, int]]:
    """Windows [a, b] whose inner frames are convex blends of frames a and b."""
    n = len(s.thumbs)
    flat = s.thumbs.reshape(n, -1)  # (N, 18, 32) -> (N, 576) uint8
    hits: list[tuple[int, int]] = []
    cut_set = set(cuts)
    for w in cfg.dissolve_windows:
        if n <= w:
            continue
        a = np.arange(0, n - w, 2)
        # end-frame differences in chunks, so an hour of video never needs a big float copy
        ends = np.concatenate(
            [
                np.abs(flat[a[k : k + 4096] + w].astype(np.int16) - flat[a[k : k + 4096]]).mean(axis=1)
                for k in range(0, len(a), 4096)
            ]
        )  # (M,)
        # the same change over the windows just before and after (stride 2: w // 2 positions away);
        # a steady drift (a slow pan, a moving pattern) changes as much there, a dissolve does not
        half = w // 2
        before, after = np.full(len(ends), np.inf), np.full(len(ends), np.inf)
        if half < len(ends):
            before[half:], after[: len(ends) - half] = ends[: len(ends) - half], ends[half:]
        calm = np.fmin(before, after)  # (M,) inf only where neither window exists
        stands_out = ends >= cfg.dissolve_stand_out * np.where(np.isinf(calm), 0.0, calm)
        for j in np.nonzero((ends >= cfg.dissolve_min_change) & stands_out)[0]:
            ai, bi = int(a[j]), int(a[j]) + w
            if any(c in cut_set for c in range(ai + 1, bi + 1)):
                continue  # a hard cut inside explains the change
            win = flat[ai : bi + 1].astype(np.float32)  # (w+1, 576)
            fa, fb = win[0], win[-1]
            delta = fb - fa
            denom = float(delta @ delta) + 1e-6
            inner = win[1:-1]  # (w-1, 576)
            alpha = np.clip((inner - fa) @ delta / denom, 0.0, 1.0)  # (w-1,) least-squares mix
            resid = np.abs(inner - (fa + alpha[:, None] * delta)).mean(axis=1)
            mono = np.all(np.diff(alpha) >= -0.05)
            if mono and resid.max() <= cfg.dissolve_max_residual * ends[j] and alpha[-1] - alpha[0] > 0.5:
                # tighten to the frames where the mix actually moves: a slowly drifting shot
                # next to the dissolve also nudges alpha, but by far less per frame
                step = np.diff(np.concatenate([[0.0], alpha, [1.0]]))  # (w,) per-frame alpha change
                busy = np.nonzero(step >= max(0.3 * float(step.max()), 1e-3))[0]
                if len(busy):
                    # step k is the change from frame ai+k to ai+k+1
                    hits.append((ai + int(busy[0]) + 1, ai + int(busy[-1])))
    out = []
    for x, y in _merge(hits):
        if not _no_dissolve(flat, x, y, cfg):
            out.append((x, y))
        else:  # a flash or pan merged with a dissolve next to it: judge the window hits one by one
            out += _merge(
                [h for h in set(hits) if x <= h[0] and h[1] <= y and not _no_dissolve(flat, *h, cfg)]
            )
    return sorted(out)


def _no_dissolve(flat: np.ndarray, first: int, last: int, cfg: ContentConfig) -> bool:
    """Whether a blend-like span [first, last] is no change of shot: the frames just outside it
    look alike (a flash of a few frames: a blend with white and back), or its middle frame is
    one end frame moved (a camera pan: thumbnails of shifted frames look like blends)."""
    n = len(flat)
    if last < first:
        return False
    a, b = max(0, first - 1), min(n - 1, last + 1)
    fa, fb = flat[a].astype(np.float32), flat[b].astype(np.float32)
    # a flash's rise or decay may be all the blend test saw: look `flash_frames` further out
    r = cfg.flash_frames
    pre, post = range(max(0, a - r), a + 1), range(b, min(n, b + r + 1))
    ref = flat[pre[0]].astype(np.float32)
    away = max(float(np.abs(flat[i].astype(np.float32) - ref).mean()) for i in range(pre[0], post[-1] + 1))
    alike = min(float(np.abs(flat[x].astype(np.float32) - flat[y]).mean()) for x in pre for y in post)
    if alike < cfg.flash_keep * away:
        return True
    mid = flat[(first + last) // 2].astype(np.float32)
    delta = fb - fa
    alpha = float(np.clip((mid - fa) @ delta / (float(delta @ delta) + 1e-6), 0.0, 1.0))
    blend = float(np.abs(mid - (fa + alpha * delta)).mean())
    hw = THUMB[::-1]
    moved = min(shift_error(mid.reshape(hw), f.reshape(hw), cfg.pan_reach) for f in (fa, fb))
    return moved < blend


def grow_dissolve(
    flat: np.ndarray, first: int, last: int, levels: float, stop: np.ndarray
) -> tuple[int, int]:
    """Grow a dissolve [first, last] of (N, 576) luma thumbnails `flat` frame by frame while the
    frame just outside it still holds the other shot: past its end, frame j is fitted as a mix of
    the frame before the dissolve and frame j + 2 (the incoming shot as it plays on) and holds at
    least `levels` (mean luma, 0-255) of the outgoing one; before its start, the same mirrored. At
    most the span's length each way; `stop`: (N,) bool, frames no dissolve grows into (cuts, other
    spans).

    The blend test sees a dissolve where both shots are steady over its window; a moving
    shot on one side hides the faint start or end of the mix from it, but not from this
    frame-by-frame fit."""
    n, span = len(flat), last - first + 1

    def other_share(frame: int, keep: int, toward: int) -> float:
        fk, ft = flat[keep].astype(np.float32), flat[toward].astype(np.float32)
        delta = ft - fk
        d2 = float(delta @ delta)
        if d2 <= 0:
            return 0.0
        alpha = float((flat[frame].astype(np.float32) - fk) @ delta) / d2  # share of `toward`
        return (1.0 - alpha) * float(np.abs(delta).mean())  # levels of `keep` left in the frame

    lo, hi, g = first, last, 2
    if first >= 1:
        while hi + 1 + g < n and hi + 1 - last <= span and not stop[hi + 1 : hi + 2 + g].any():
            if other_share(hi + 1, first - 1, hi + 1 + g) < levels:
                break
            hi += 1
    if last + 1 < n:
        while lo - 1 - g >= 0 and first - (lo - 1) <= span and not stop[lo - 1 - g : lo].any():
            if other_share(lo - 1, last + 1, lo - 1 - g) < levels:
                break
            lo -= 1
    return lo, hi


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class ContentDetector:
    """`--detector content`: see the module docstring."""

    name = "content"
    frame_size = None

    def __init__(self, cfg: ContentConfig | None = None):
        self.cfg = cfg or ContentConfig()
        self.target_area = self.cfg.target_area

    def detect(self, frames: Iterator[SmallFrame]) -> Transitions:
        s = gather(frames)
        return self.detect_series(s)

    def detect_series(self, s: _Series) -> Transitions:
        cfg = self.cfg
        n = len(s.pts)
        cuts, score = find_cuts(s, cfg)
        excluded: list[tuple[int, int, TransitionKind]] = []
        for a, b, kind in find_black_and_fades(s, cfg):
            m = 0 if kind == "black" else cfg.margin
            excluded.append((max(0, a - m), min(n - 1, b + m), kind))
        black_or_fade = np.zeros(n, bool)
        for a, b, _ in excluded:
            black_or_fade[a : b + 1] = True
        stop = black_or_fade.copy()
        stop[[c for c in cuts if c < n]] = True
        flat = s.thumbs.reshape(n, -1)  # (N, 18, 32) -> (N, 576)
        for a, b in find_dissolves(s, cfg, cuts):
            if b >= a and black_or_fade[a : b + 1].mean() < 0.5:  # fades already cover blends with black
                a, b = grow_dissolve(flat, a, b, cfg.dissolve_edge_levels, stop)
                m = span_margin(a, b, cfg.margin, cfg.dissolve_grow)
                excluded.append((max(0, a - m), min(n - 1, b + m), "dissolve"))
        if cfg.wipes is not None:
            skip = np.zeros(n, bool)
            for a, b, _ in excluded:
                skip[a : b + 1] = True
            for a, b, _ in find_wipes(s.thumbs, cuts, cfg.wipes, skip):
                m = span_margin(a, b, cfg.margin, cfg.wipe_grow)
                excluded.append((max(0, a - m), min(n - 1, b + m), "wipe"))
        for a, b, _ in excluded:
            score[a : b + 1] = np.maximum(score[a : b + 1], 0.5)
        # a "cut" inside a gradual transition is its first frame: not a hard cut
        cuts = [c for c in cuts if not any(a < c <= b for a, b, k in excluded if k != "black")]
        return Transitions(n, s.pts, cuts, sorted(excluded), score.astype(np.float32))
