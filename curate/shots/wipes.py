"""Spatial transitions (wipes, iris, slides, pushes) found on the small frames already decoded.

A spatial transition from shot A to shot B shows, on every frame, part of A and part of B
separated by an edge that sweeps across the frame; the B part grows from nothing to the
whole frame, each region changes once. We test that directly on 32x18 luma thumbnails: for a
window [a, b] (a: a frame before, b: a frame after), every inner frame is compared with a
bank of composites of frame a and frame b:
- wipes: B where a fixed field (x, y, diagonals, barn doors, distance from the centre)
  lies below a level; A elsewhere;
- slides (B moves in over a still A), pushes (B pushes A out), uncovers (A moves out over
  a still B), in four directions, at every offset.
An inner frame is explained when the best composite fits it far better than frame a, frame b
or any blend of the two (a dissolve), and each of its two regions is fitted by its own shot far
better than by the other one: a camera pan is a push of one frame width at most in
appearance, but its "new" strip does not match the next shot, so it fails there. A window is
a spatial transition when its changing frames are explained, the B share grows
monotonically through them and the sweep keeps one direction. Objects crossing the frame and
flashes leave frame b like frame a (no change to explain); fast motion is no composite of
two fixed frames.

Cost: candidate windows are those whose end frames differ like two shots while the path
of frame differences between them is short (each pixel changes about once: transitions,
not motion), and which no hard cut explains; each costs ~1 ms per inner frame tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

THUMB = (32, 18)  # (w, h) luma thumbnails, as the content detector's dissolve test


@dataclass(frozen=True)
class WipeConfig:
    windows: tuple[int, ...] = (8, 14, 22, 30)  # end-frame distances tried (frames)
    min_change: float = 12.0  # end frames differ at least this much (mean |luma|, 0-255)
    cell_change: float = 8.0  # a cell (1/48 of the frame) whose mean luma moves this much changed ...
    changed_share: float = 0.7  # ... and this share of cells must change between the window's ends
    stand_out: float = 1.5  # end-frame change / the same change in the windows before and after, at least
    sharp_cut: float = 3.0  # a found cut whose change is this many times its neighbours' is a hard cut
    transitional: float = (
        0.2  # an inner frame this far from both ends (share of the end change) is mid-transition
    )
    fit_ratio: float = 0.6  # best composite error / best of (frame a, frame b, blend), at most
    edge_ratio: float = 0.9  # the sweep's first/last frames: composite error / nearer end frame's, at most
    region_ratio: float = 0.5  # each region's error / its error under the other shot, at most
    min_region: float = 0.08  # regions smaller than this share of the frame are not checked
    min_frames: int = 2  # explained mid-transition frames, at least (fewer: a hard cut)
    explained_share: float = 0.75  # share of mid-transition frames that must be explained
    same_direction: float = 0.6  # share of explained frames sweeping in the main direction
    min_progress_span: float = 0.3  # B share grows by at least this through the explained frames
    progress_slack: float = 0.12  # the B share may fall back this much between explained frames
    grow_pads: tuple[int, ...] = (2, 5, 9)  # a hit is re-measured between frames this far outside it
    max_window: int = 48  # ... in windows up to this length
    pan_reach: tuple[int, int] = (10, 6)  # thumbnail shifts (dx, dy) tried between a window's end frames ...
    pan_ratio: float = 0.5  # ... a window whose frame b is frame a shifted (error below this share of
    # their difference) is a pan
    # a found span then grows while the frame outside it changes some cell more than its shot does:
    edge_ratio_stat: float = 2.0  # ... more than this times the shot's median largest cell change ...
    edge_floor: float = 2.0  # ... plus this (luma levels) ...
    edge_stat_frames: int = 10  # ... measured over this many frames of that shot


@dataclass(frozen=True)
class _Bank:
    index: np.ndarray  # (M, h*w) int: pixel source, into concat(frame a, frame b) flattened
    progress: np.ndarray  # (M,) share of pixels taken from frame b
    direction: np.ndarray  # (M,) int: sweep direction group


_WIPE_FIELDS = (
    "right",
    "left",
    "down",
    "up",
    "down_right",
    "up_left",
    "down_left",
    "up_right",
    "iris_out",
    "iris_in",
    "h_open",
    "v_open",
)
_SLIDE_DIRS = ("right", "left", "down", "up")
DIRECTIONS = _WIPE_FIELDS  # group names; slides and pushes share the linear wipes' groups


def _wipe_field(name: str, h: int, w: int) -> np.ndarray:
    """(h, w) in [0, 1]: the share of the wipe after which each pixel shows the new shot."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = (xx + 0.5) / w, (yy + 0.5) / h
    r = np.hypot(x - 0.5, (y - 0.5) * h / w)
    f = {
        "right": x,
        "left": 1 - x,
        "down": y,
        "up": 1 - y,
        "down_right": x + y,
        "up_left": -(x + y),
        "down_left": (1 - x) + y,
        "up_right": x - y,
        "iris_out": r,
        "iris_in": -r,
        "h_open": np.abs(x - 0.5),
        "v_open": np.abs(y - 0.5),
    }[name]
    return (f - f.min()) / (f.max() - f.min())


def _orient(img: np.ndarray, d: str) -> np.ndarray:
    """Turn an (h, w) array so that direction `d` points along +x."""
    return {"right": img, "left": img[:, ::-1], "down": img.T, "up": img[::-1].T}[d]


def _unorient(img: np.ndarray, d: str) -> np.ndarray:
    return {"right": img, "left": img[:, ::-1], "down": img.T, "up": img.T[::-1]}[d]


@lru_cache(maxsize=4)
def bank(h: int, w: int, levels: int = 24) -> _Bank:
    """Every composite of two (h, w) frames the detector tries (plus pure a and pure b)."""
    hw = h * w
    src_a = np.arange(hw).reshape(h, w)
    src_b = src_a + hw
    index, progress, direction = [src_a.ravel(), src_b.ravel()], [0.0, 1.0], [-1, -1]
    for g, name in enumerate(_WIPE_FIELDS):
        f = _wipe_field(name, h, w)
        for t in np.linspace(0, 1, levels + 1)[1:-1]:
            m = f < t
            if 0 < m.sum() < hw:
                index.append(np.where(m, src_b, src_a).ravel())
                progress.append(float(m.mean()))
                direction.append(g)
    for name in _SLIDE_DIRS:
        g = _WIPE_FIELDS.index(name)
        a2, b2 = _orient(src_a, name), _orient(src_b, name)
        width = a2.shape[1]
        for s in range(1, width):
            for mode in ("slide", "push", "uncover"):
                out = a2.copy()
                if mode != "slide":  # A moves on with the edge
                    out[:, s:] = a2[:, : width - s]
                # B: enters moving with the edge, or still under A as A leaves
                out[:, :s] = b2[:, width - s :] if mode != "uncover" else b2[:, :s]
                index.append(_unorient(out, name).ravel())
                progress.append(s / width)
                direction.append(g)
    return _Bank(np.stack(index), np.asarray(progress, np.float32), np.asarray(direction, np.int16))


def thumbnails(luma: np.ndarray) -> np.ndarray:
    """(N, 18, 32) uint8 thumbnails of (N, h, w) uint8 luma frames."""
    return (
        np.stack([cv2.resize(y, THUMB, interpolation=cv2.INTER_AREA) for y in luma])
        if len(luma)
        else (np.zeros((0, THUMB[1], THUMB[0]), np.uint8))
    )


@dataclass(frozen=True)
class _Fit:
    transitional: bool  # far from both end frames
    explained: bool  # mid-transition and fitted by a composite (region checks passed)
    partial: bool  # a composite fits it better than either end frame (the sweep's first/last frames)
    progress: float
    direction: int


def fit_frames(frames: np.ndarray, a: np.ndarray, b: np.ndarray, cfg: WipeConfig) -> list[_Fit]:
    """How each inner frame is explained by composites of end frames `a` and `b`.

    `frames`: (F, h*w) float32; `a`, `b`: (h*w,) float32."""
    bk = bank(*THUMB[::-1])
    hw = len(a)
    change = float(np.abs(b - a).mean())
    ab = np.concatenate([a, b])
    pred = ab[bk.index]  # (M, hw): every composite of a and b
    alphas = np.linspace(0.1, 0.9, 9, dtype=np.float32)[:, None]
    mixes = a + alphas * (b - a)  # (9, hw) dissolve frames
    out = []
    for k in frames:
        ea_px, eb_px = np.abs(k - a), np.abs(k - b)  # (hw,)
        e0, e1 = float(ea_px.mean()), float(eb_px.mean())
        err = np.abs(pred - k).mean(axis=1)  # (M, hw) -> (M,)
        err[:2] = np.inf  # pure a and pure b are e0 and e1
        m = int(np.argmin(err))
        partial = bool(err[m] <= cfg.edge_ratio * min(e0, e1))
        if min(e0, e1) < cfg.transitional * change:
            out.append(_Fit(False, False, partial, float(bk.progress[m]) if partial else float(e0 > e1), -1))
            continue
        blend = float(np.abs(k - mixes).mean(axis=1).min())
        ok = bool(err[m] <= cfg.fit_ratio * min(e0, e1, blend))
        if ok:
            from_b = bk.index[m] >= hw  # (hw,) pixels the composite takes from b
            model_px = np.abs(pred[m] - k)
            for region, other in ((from_b, ea_px), (~from_b, eb_px)):
                if region.mean() >= cfg.min_region:
                    ok &= bool(model_px[region].mean() <= cfg.region_ratio * other[region].mean())
        out.append(_Fit(True, ok, partial, float(bk.progress[m]), int(bk.direction[m])))
    return out


def shift_error(k: np.ndarray, ref: np.ndarray, reach: tuple[int, int]) -> float:
    """Least mean |k - ref shifted| over shifts up to `reach` (dx, dy) pixels, on the overlap."""
    h, w = k.shape
    best = np.inf
    for dy in range(-reach[1], reach[1] + 1):
        for dx in range(-reach[0], reach[0] + 1):
            a = k[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)]
            b = ref[max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)]
            best = min(best, float(np.abs(a - b).mean()))
    return best


def window_transition(thumbs: np.ndarray, a: int, b: int, cfg: WipeConfig) -> tuple[int, int, str] | None:
    """The span [first, last] and direction of a spatial transition between frames a and b, if any."""
    cells = (
        np.abs(thumbs[b].astype(np.float32) - thumbs[a]).reshape(6, 3, 8, 4).mean(axis=(1, 3))
    )  # (18, 32) -> (6, 8)
    if (cells >= cfg.cell_change).mean() < cfg.changed_share:
        return None  # part of the frame stays: an object crossing or a local change, not a new shot
    fa, fb = thumbs[a].astype(np.float32).ravel(), thumbs[b].astype(np.float32).ravel()
    ta, tb = thumbs[a].astype(np.float32), thumbs[b].astype(np.float32)
    if shift_error(tb, ta, cfg.pan_reach) < cfg.pan_ratio * float(np.abs(tb - ta).mean()):
        return None  # frame b is frame a moved: a camera pan (a push's composites fit it), not a new shot
    inner = thumbs[a + 1 : b].reshape(b - a - 1, -1).astype(np.float32)  # (F, 18, 32) -> (F, 576)
    mid = fit_frames(inner[len(inner) // 2 : len(inner) // 2 + 1], fa, fb, cfg)[0]
    if not mid.explained:
        # the window's middle frame is not mid-sweep: either no spatial transition, or one off
        # centre, which a window nearer to it (they are tried every 2 frames) centres
        return None
    fits = list(enumerate(fit_frames(inner, fa, fb, cfg), start=a + 1))
    trans = [(i, f) for i, f in fits if f.transitional]
    good = [(i, f) for i, f in trans if f.explained]
    if len(good) < cfg.min_frames or len(good) < cfg.explained_share * len(trans):
        return None
    dirs = np.bincount([f.direction for _, f in good])
    main = int(np.argmax(dirs))
    if dirs[main] < cfg.same_direction * len(good):
        return None
    # frames before the sweep look like a, after it like b
    first, last = trans[0][0], trans[-1][0]
    if any(f.progress > 0.5 for i, f in fits if i < first) or any(
        f.progress < 0.5 for i, f in fits if i > last
    ):
        return None
    # the sweep's first and last frames change a small part of the frame: fitted, but near an end
    by_frame = dict(fits)
    while first - 1 in by_frame and by_frame[first - 1].partial:
        first -= 1
    while last + 1 in by_frame and by_frame[last + 1].partial:
        last += 1
    prog = np.asarray(
        [by_frame[i].progress for i in range(first, last + 1) if by_frame[i].explained or by_frame[i].partial]
    )
    if prog.max() - prog.min() < cfg.min_progress_span or np.any(np.diff(prog) < -cfg.progress_slack):
        return None
    return first, last, DIRECTIONS[main]


def _grown(thumbs: np.ndarray, hit: tuple[int, int, str], cfg: WipeConfig) -> tuple[int, int, str]:
    """Re-measure a hit between frames just outside it, until it stops growing: a window that
    starts or ends inside a transition sees only part of it."""
    n = len(thumbs)
    best, grew = hit, True
    while grew:
        grew, base = False, best
        for pad in cfg.grow_pads:
            a, b = max(0, base[0] - pad), min(n - 1, base[1] + pad)
            if b - a > cfg.max_window:
                break
            wider = window_transition(thumbs, a, b, cfg)
            if wider is not None and wider[1] - wider[0] > best[1] - best[0]:
                best, grew = wider, True
    return best


def _cell_steps(flat: np.ndarray) -> np.ndarray:
    """(N,) the largest change of a cell's mean luma (6 x 8 cells) from frame i - 1 to i; 0 at 0."""
    n = len(flat)
    cells = flat.reshape(n, 6, 3, 8, 4).astype(np.float32).mean(axis=(2, 4))  # (N, 576) -> (N, 6, 8)
    out = np.zeros(n, np.float32)
    out[1:] = np.abs(cells[1:] - cells[:-1]).reshape(n - 1, -1).max(axis=1)
    return out


def grow_edges(
    steps: np.ndarray, first: int, last: int, taken: np.ndarray, cfg: WipeConfig
) -> tuple[int, int]:
    """Grow a spatial transition [first, last] frame by frame while the frame just outside it
    still changes locally more than the shot on that side does (the sweep's first or last
    cells: a corner, a thin ring), by at most the span's length each way.

    `steps`: `_cell_steps`; the side's level is the median over `edge_stat_frames` frames
    beyond the span's length (inside that shot); `taken`: frames other spans hold."""
    n, k, span = len(steps), cfg.edge_stat_frames, last - first + 1

    def level(lo: int, hi: int) -> float:
        lo, hi = max(1, lo), min(n, hi)
        return float(np.median(steps[lo:hi])) if hi > lo else np.inf

    before = cfg.edge_ratio_stat * level(first - 2 * span - k, first - 2 * span) + cfg.edge_floor
    after = cfg.edge_ratio_stat * level(last + 2 * span + 1, last + 2 * span + 1 + k) + cfg.edge_floor
    lo, hi = first, last
    # steps[i] is the change into frame i: frame lo - 1 changes when steps[lo - 1] does
    # (it differs from lo - 2)
    while lo - 1 > 0 and first - lo < span and not taken[lo - 1] and steps[lo - 1] > before:
        lo -= 1
    while hi + 1 < n and hi - last < span and not taken[hi + 1] and steps[hi + 1] > after:
        hi += 1
    return lo, hi


def find_wipes(
    thumbs: np.ndarray, cuts: list[int], cfg: WipeConfig, skip: np.ndarray | None = None
) -> list[tuple[int, int, str]]:
    """Spatial transitions [first, last] (inclusive, no margin) in (N, 18, 32) uint8 thumbnails.

    `cuts`: hard cuts already found (a window they explain is not tested); `skip`: (N,) bool,
    frames already excluded (black, fades, dissolves): windows touching them are not tested.
    """
    n = len(thumbs)
    if n < 3:
        return []
    flat = thumbs.reshape(n, -1)  # (N, 18, 32) -> (N, 576)
    step = np.zeros(n, np.float32)
    step[1:] = np.abs(flat[1:].astype(np.int16) - flat[:-1]).mean(axis=1)  # (N,) frame-to-frame change
    # a hard cut is one isolated step; inside a sweep every frame changes about as much
    sharp = [
        c
        for c in cuts
        if 0 < c < n and step[c] >= cfg.sharp_cut * (max(step[c - 1], step[min(c + 1, n - 1)]) + 1)
    ]
    found: list[tuple[int, int, str]] = []
    taken = np.zeros(n, bool) if skip is None else skip.copy()
    for c in sharp:
        taken[c] = True  # no window holds a hard cut
    cells = _cell_steps(flat)
    for w in cfg.windows:
        if n <= w:
            continue
        a = np.arange(0, n - w)
        ends = np.concatenate(
            [
                np.abs(flat[a[k : k + 4096] + w].astype(np.int16) - flat[a[k : k + 4096]]).mean(axis=1)
                for k in range(0, len(a), 4096)
            ]
        )  # (M,)
        # the same change over the windows just before and just after: each inside one shot
        before, after = np.full(len(ends), np.nan), np.full(len(ends), np.nan)
        if w < len(ends):
            before[w:], after[: len(ends) - w] = ends[: len(ends) - w], ends[w:]
        base = np.fmax(before, after)  # (M,) nan only where neither window exists
        cand = (ends >= cfg.min_change) & ~(ends < cfg.stand_out * base)
        # one window per run of candidates, the middle one: it centres the change
        for r0, r1 in _runs(cand):
            ai = (r0 + r1) // 2
            bi = ai + w
            if taken[ai + 1 : bi].any():
                continue
            hit = window_transition(thumbs, ai, bi, cfg)
            if hit is not None:
                hit = _grown(thumbs, hit, cfg)
                hit = (*grow_edges(cells, hit[0], hit[1], taken, cfg), hit[2])
                found.append(hit)
                taken[hit[0] : hit[1] + 1] = True
    return sorted(found)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive [first, last] ranges of consecutive True values."""
    m = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(x), int(y) - 1) for x, y in zip(edges[::2], edges[1::2])]
