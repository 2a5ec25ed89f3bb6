"""Cheap technical scores of a clip, no model: motion, sharpness, brightness, black frames, static flag.

Pure numpy/OpenCV functions on (T, H, W, 3) uint8 RGB frames that the score stage decoded
once (curate/scores/score_frames.py). Every score is normalised so that clips of different size
and frame rate compare:
- motion: dense optical flow (Farneback) between *adjacent* decoded frames at a fixed low
  resolution, in short-sides per second (a value of 0.5 means content crosses half the
  frame's short side in one second), using the frames' presentation timestamps (VFR-safe);
- sharpness: variance of the Laplacian of the luma at a fixed short side (the caller
  resizes; `resize_short_side`);
- brightness: mean luma in [0, 1]; black_fraction: share of frames whose mean luma is
  below a level; is_static: motion below a threshold.

Reference: variance of the Laplacian as a focus measure, Pech-Pacheco et al., ICPR 2000.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from curate.errors import StageError
from curate.schema import BLACK_FRACTION, BRIGHTNESS, IS_STATIC, MOTION, SHARPNESS

# ITU-R BT.601 luma weights (what video codecs use for SD; close enough for HD scoring)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class CheapConfig:
    motion_short_side: int = 64  # flow is computed at this short side: fast, and size-independent
    black_level: float = 0.06  # a frame is near-black when its mean luma (0..1) is below this
    static_motion: float = 0.005  # motion (short sides / s) below this flags a static clip (stills: ~0.002)


def luma(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, H, W) float32 luma in 0..255."""
    return frames.astype(np.float32) @ _LUMA  # (T, H, W, 3) @ (3,) -> (T, H, W)


def resize_short_side(frames: np.ndarray, short_side: int) -> np.ndarray:
    """Resize (T, H, W, C) frames so min(H, W) == short_side, keeping the aspect (area filter)."""
    h, w = frames.shape[1:3]
    s = short_side / min(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if size == (w, h):
        return frames
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])


def brightness(frames: np.ndarray) -> float:
    """Mean luma over all frames and pixels, in [0, 1]."""
    return float(luma(frames).mean() / 255.0)


def black_fraction(frames: np.ndarray, black_level: float = 0.06) -> float:
    """Share of frames whose mean luma (0..1) is below `black_level`."""
    per_frame = luma(frames).mean(axis=(1, 2)) / 255.0  # (T,)
    return float((per_frame < black_level).mean())


def sharpness(frames: np.ndarray) -> float:
    """Mean over frames of the variance of the Laplacian of the luma (higher = sharper).

    important: the value depends on resolution; callers pass frames at a fixed short side.
    """
    y = luma(frames)
    return float(np.mean([cv2.Laplacian(f, cv2.CV_32F, ksize=3).var() for f in y]))


def motion(
    frames: np.ndarray,
    pts: np.ndarray,
    short_side: int = 64,
    max_gap_s: float = 0.25,
    indices: np.ndarray | None = None,
) -> float:
    """Mean optical-flow magnitude between adjacent decoded frames, in short sides per second.

    With `indices` (decoded-frame numbers of `frames`), a pair is two entries whose numbers
    differ by exactly one, at any frame rate; without them, consecutive entries at most
    `max_gap_s` apart. So flow is never measured across a whole clip.
    Raises StageError when there is no pair: motion is unknown then, not 0.0 (which would
    flag the clip static); the score stage records the clip as an error row.
    """
    small = luma(resize_short_side(frames, short_side)).astype(np.uint8)  # (T, h, w)
    side = float(min(small.shape[1:3]))
    rates = []
    for i in range(len(small) - 1):
        dt = float(pts[i + 1] - pts[i])
        adjacent = indices[i + 1] - indices[i] == 1 if indices is not None else dt <= max_gap_s
        if not (adjacent and dt > 0):
            continue
        flow = cv2.calcOpticalFlowFarneback(small[i], small[i + 1], None, 0.5, 2, 9, 3, 5, 1.1, 0)
        mag = np.sqrt((flow**2).sum(axis=-1))  # (h, w, 2) -> (h, w)
        rates.append(float(mag.mean()) / side / dt)
    if not rates:
        rule = "frame numbers 1 apart" if indices is not None else f"at most {max_gap_s:g} s apart"
        raise StageError(
            "score",
            f"motion needs two adjacent decoded frames ({rule}), got {len(frames)} frame(s) "
            "and no such pair; the clip is too short or its frames could not be decoded",
        )
    return float(np.mean(rates))


def pair_offsets(num_frames_in_span: int, n_pairs: int, margin: float = 0.1) -> np.ndarray:
    """Offsets of `n_pairs` adjacent-frame pairs (o, o+1) spread over a span: the motion samples."""
    if num_frames_in_span < 2 or n_pairs <= 0:
        return np.zeros(0, np.int64)
    lo = margin * (num_frames_in_span - 2)
    hi = (1.0 - margin) * (num_frames_in_span - 2)
    starts = np.unique(np.round(np.linspace(lo, hi, n_pairs)).astype(np.int64))
    return np.unique(np.concatenate([starts, starts + 1]))


def cheap_scores(
    frames: np.ndarray, pts: np.ndarray, cfg: CheapConfig, indices: np.ndarray | None = None
) -> dict[str, float | bool]:
    """All cheap scores of one clip from its decoded frames (sorted by pts; `indices`: their frame numbers).

    important: sharpness depends on resolution; the score stage passes frames at a fixed short side.
    """
    m = motion(frames, pts, short_side=cfg.motion_short_side, indices=indices)
    return {
        MOTION: m,
        SHARPNESS: sharpness(frames),
        BRIGHTNESS: brightness(frames),
        BLACK_FRACTION: black_fraction(frames, cfg.black_level),
        IS_STATIC: m < cfg.static_motion,
    }
