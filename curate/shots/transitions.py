"""Turn per-frame transition scores and luma statistics into cuts and excluded spans.

Shared by the `transnetv2` and `hybrid` detectors (curate/shots/transnet.py, curate/shots/hybrid.py).

TransNetV2 (Souček & Lokoč 2020, arXiv:2008.04838) has two heads per frame:
- `single`: probability that frame i is the last frame of a shot (a spike at the middle of
  a transition). A hard cut shows as one spike with a one-frame `many` region.
- `many`: probability that frame i belongs to a transition; it covers the whole span of a
  fade or dissolve, which is how we find the frames to leave out of clips.

Black segments and fades to/from black come from luma, as ffmpeg's `blackdetect` does
(a frame is black when nearly all its pixels are darker than 16 + 10% of the range): TransNetV2 misses
slow fades (a 4 s fade-out peaks at 0.2 in `single`), but a fade is a steady luma ramp that
ends or starts at a black frame.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from curate.shots.detect import TransitionKind, Transitions


@dataclass(frozen=True)
class SpanConfig:
    cut_threshold: float = 0.5  # `single` above this starts a transition (the original's default)
    max_cut_width: int = 4  # a transition whose `many` > 0.5 region is wider is gradual
    span_threshold: float = 0.1  # `many` above this belongs to a gradual span
    span_pad: float = 0.1  # widen gradual spans by this share of their length (>= 1 frame) each side
    black_luma: int = 38  # a pixel is dark below this luma: 16 + 10% of 219, as ffmpeg blackdetect
    black_ratio: float = 0.95  # share of dark pixels in a black frame (a faint caption or logo allowed)
    fade_min_frames: int = 4  # shorter luma ramps next to black are cuts to/from black, not fades
    fade_min_step: float = 0.3  # mean-luma change per frame inside a fade
    fade_slack: int = 2  # frames in a row a fade may stall (motion, compression) and go on


@dataclass
class LumaStats:
    """Per-frame luma statistics of a video's small frames (enough to find black and fades)."""

    mean: np.ndarray  # (N,) float32 mean luma
    black: np.ndarray  # (N,) bool

    @classmethod
    def of(cls, yuv: np.ndarray, cfg: SpanConfig) -> LumaStats:
        """`yuv`: (N, h, w, 3) uint8 frames."""
        y = yuv[..., 0]
        dark = (y < cfg.black_luma).reshape(len(y), -1).mean(axis=1)  # (N, h, w) -> (N,)
        return cls(y.reshape(len(y), -1).mean(axis=1).astype(np.float32), dark >= cfg.black_ratio)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive [first, last] ranges of consecutive True values."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def _ramp(luma: np.ndarray, start: int, step: int, cfg: SpanConfig) -> int:
    """Walk from `start` away from black (direction `step`) over the frames of a fade.

    A fade frame differs from the frame before it in time: darker for a fade-out (step -1),
    brighter for a fade-in (step +1). Returns the ramp's far end (start - step when none).
    """
    last, i, stalled = start - step, start, 0
    while 0 < i < len(luma):
        change = luma[i - 1] - luma[i] if step < 0 else luma[i] - luma[i - 1]
        if change >= cfg.fade_min_step:
            last, stalled = i, 0
        else:
            stalled += 1
            if stalled > cfg.fade_slack:
                break
        i += step
    return last


def luma_fades(luma: LumaStats, cfg: SpanConfig) -> list[tuple[int, int, TransitionKind]]:
    """Black segments and the fades that lead into / out of them."""
    out: list[tuple[int, int, TransitionKind]] = []
    for a, b in runs(luma.black):
        out.append((a, b, "black"))
        first = _ramp(luma.mean, a - 1, -1, cfg)  # fade-out ends at a - 1
        if a - first >= cfg.fade_min_frames:
            out.append((first, a - 1, "fade_out"))
        last = _ramp(luma.mean, b + 1, +1, cfg)  # fade-in starts at b + 1
        if last - b >= cfg.fade_min_frames:
            out.append((b + 1, last, "fade_in"))
    return out


def _gradual_kind(a: int, b: int, luma: LumaStats) -> TransitionKind:
    n = len(luma.black)
    if luma.black[max(0, a - 3) : a + 3].any():
        return "fade_in"
    if luma.black[max(0, b - 2) : min(n, b + 4)].any():
        return "fade_out"
    return "dissolve"


def model_transitions(
    single: np.ndarray, many: np.ndarray, luma: LumaStats, cfg: SpanConfig
) -> tuple[list[int], list[tuple[int, int, TransitionKind]]]:
    """Hard cuts (first frame of the new shot) and gradual spans from TransNetV2's two heads."""
    n = len(single)
    cuts: list[int] = []
    spans: list[tuple[int, int, TransitionKind]] = []
    for a, b in runs(single > cfg.cut_threshold):
        p = a + int(np.argmax(single[a : b + 1]))
        lo, hi = p, p
        while lo > 0 and many[lo - 1] > 0.5:
            lo -= 1
        while hi < n - 1 and many[hi + 1] > 0.5:
            hi += 1
        if hi - lo + 1 <= cfg.max_cut_width:
            cuts.append(p + 1)  # `single` marks the last frame of the old shot
            continue
        while lo > 0 and many[lo - 1] > cfg.span_threshold:
            lo -= 1
        while hi < n - 1 and many[hi + 1] > cfg.span_threshold:
            hi += 1
        pad = max(1, round(cfg.span_pad * (hi - lo + 1)))
        lo, hi = max(0, lo - pad), min(n - 1, hi + pad)
        spans.append((lo, hi, _gradual_kind(lo, hi, luma)))
    # a transition's spike can span two frames: keep one cut per transition
    cuts = [c for i, c in enumerate(cuts) if i == 0 or c - cuts[i - 1] > 1]
    return [c for c in cuts if 0 < c < n], spans


_PRIORITY: dict[str, int] = {"dissolve": 1, "wipe": 1, "fade_in": 2, "fade_out": 2, "black": 3}


def merge_excluded(
    n: int, ranges: list[tuple[int, int, TransitionKind]]
) -> list[tuple[int, int, TransitionKind]]:
    """Sorted, non-overlapping ranges; black wins over fades, fades over dissolves and wipes.

    A model span that overlaps a luma fade takes the fade's kind, so one fade is one range.
    """
    fades = [r for r in ranges if r[2] in ("fade_in", "fade_out")]
    fixed: list[tuple[int, int, TransitionKind]] = []
    for a, b, kind in ranges:
        if kind == "dissolve":
            kind = next((k for fa, fb, k in fades if fa <= b and a <= fb), kind)
        fixed.append((a, b, kind))
    label = np.zeros(n, np.int8)
    names: dict[int, TransitionKind] = {}
    for a, b, kind in sorted(fixed, key=lambda r: _PRIORITY[r[2]]):
        code = {"dissolve": 1, "fade_in": 2, "fade_out": 3, "black": 4, "wipe": 5}[kind]
        names[code] = kind
        label[max(0, a) : min(n, b + 1)] = code
    out: list[tuple[int, int, TransitionKind]] = []
    for code, kind in names.items():
        out += [(a, b, kind) for a, b in runs(label == code)]
    return sorted(out)


def build_transitions(
    pts: np.ndarray,
    single: np.ndarray,
    many: np.ndarray,
    luma: LumaStats,
    cfg: SpanConfig,
    known_cuts: Mapping[int, float] | None = None,
    extra_spans: list[tuple[int, int, TransitionKind]] | None = None,
    scored: np.ndarray | None = None,
) -> Transitions:
    """Everything a detector returns, from the model heads (zeros where not evaluated) and luma.

    `scored`: (N,) bool, the frames the model evaluated (None: all). A frame whose predecessor
    was never evaluated has `frame_score` NaN (unknown; stored as null), not 0.0.

    `known_cuts`: hard cuts found without the model (first frame of the new shot -> its
    score in [0, 1], kept as `frame_score` there; the caller documents what that score is).
    They join the model's cuts as they are: the caller passes only cuts whose frames the
    model did not score.
    `extra_spans`: gradual transitions found without the model (wipes): left out of clips, and
    a model cut inside one is its middle, not a hard cut.
    """
    n = len(pts)
    cuts, spans = model_transitions(single, many, luma, cfg)
    known = {int(c): float(v) for c, v in (known_cuts or {}).items() if 0 < c < n}
    if known:
        cuts = sorted(set(cuts) | set(known))
    extra = list(extra_spans or [])
    cuts = [c for c in cuts if not any(a < c <= b for a, b, _ in extra)]
    excluded = merge_excluded(n, spans + luma_fades(luma, cfg) + extra)
    # frame_score[i]: probability that a new shot starts at frame i (`single` marks frame i - 1)
    score = np.zeros(n, np.float32)  # frame 0 starts the video: no transition there
    score[1:] = single[:-1] if scored is None else np.where(scored[:-1], single[:-1], np.nan)
    for c, v in known.items():
        score[c] = v if np.isnan(score[c]) else max(score[c], v)
    return Transitions(
        num_frames=n, pts=np.asarray(pts, np.float64), cuts=cuts, excluded=excluded, frame_score=score
    )
