"""Resolution buckets and frame sampling: native aspect ratio and duration survive into latents.

In the spirit of NaViT (arXiv 2307.06304) and the Sora report: instead of cropping every
clip to one square size, each clip goes to the nearest of a few buckets of about equal
pixel area and different aspect ratios (minimal centre crop, never letterboxing), and keeps
its duration up to a maximum. Frames are resampled to a target fps and their count is cut
to the VAE's rule (k*m + 1). Bucketing by aspect follows SDXL's multi-aspect training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from curate.errors import UsageError


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int

    @property
    def aspect(self) -> float:
        return self.width / self.height

    @property
    def name(self) -> str:
        return f"{self.width}x{self.height}"


def make_buckets(area: int, aspects: tuple[float, ...], multiple: int) -> tuple[Bucket, ...]:
    """One bucket per aspect ratio (width / height), each of about `area` pixels, sides multiples of
    `multiple`.

    Buckets that round to the same size are merged; the result is sorted by aspect.
    """
    if area <= 0 or multiple <= 0 or not aspects:
        raise UsageError(
            f"buckets need area > 0, multiple > 0 and at least one aspect, got area={area}, "
            f"multiple={multiple}, aspects={aspects}; fix the encode config"
        )
    out = set()
    for a in aspects:
        h = math.sqrt(area / a)
        w = a * h
        out.add(
            Bucket(
                max(multiple, round(w / multiple) * multiple), max(multiple, round(h / multiple) * multiple)
            )
        )
    return tuple(sorted(out, key=lambda b: b.aspect))


def nearest_bucket(width: int, height: int, buckets: tuple[Bucket, ...]) -> Bucket:
    """The bucket whose aspect is closest to the clip's, on a log scale (2:1 and 1:2 are equally far
    from 1:1)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"clip size must be positive, got {width}x{height}")
    la = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b.aspect) - la), -b.width * b.height))


def crop_box(width: int, height: int, bucket: Bucket) -> tuple[int, int, int, int]:
    """(x0, y0, w, h): the largest centred region of the clip with the bucket's aspect (the minimal crop)."""
    if width / height > bucket.aspect:
        cw, ch = round(height * bucket.aspect), height  # clip wider than the bucket: trim the sides
    else:
        cw, ch = width, round(width / bucket.aspect)  # taller: trim top and bottom
    cw, ch = max(1, min(cw, width)), max(1, min(ch, height))
    return (width - cw) // 2, (height - ch) // 2, cw, ch


def resize_to_bucket(frames: np.ndarray, bucket: Bucket) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, bucket.height, bucket.width, 3) uint8: minimal centre crop, then resize."""
    t, h, w, _ = frames.shape
    x0, y0, cw, ch = crop_box(w, h, bucket)
    out = np.empty((t, bucket.height, bucket.width, 3), np.uint8)
    # area interpolation when shrinking (no aliasing), cubic when growing
    interp = cv2.INTER_AREA if cw >= bucket.width else cv2.INTER_CUBIC
    for i in range(t):
        out[i] = cv2.resize(
            frames[i, y0 : y0 + ch, x0 : x0 + cw], (bucket.width, bucket.height), interpolation=interp
        )
    return out


def decode_size(width: int, height: int, bucket: Bucket) -> tuple[int, int]:
    """A display (width, height) to ask the decoder for: small, but still covering the bucket after the crop.

    Decoding straight to about the bucket's scale avoids converting full-size RGB frames.
    """
    _, _, cw, ch = crop_box(width, height, bucket)
    scale = max(bucket.width / cw, bucket.height / ch)
    if scale >= 1.0:
        return width, height
    return max(2, 2 * math.ceil(width * scale / 2)), max(2, 2 * math.ceil(height * scale / 2))


def valid_frame_count(n: int, k: int) -> int:
    """Largest count <= n of the form k*m + 1 (0 when n < 1)."""
    return 0 if n < 1 else k * ((n - 1) // k) + 1


@dataclass(frozen=True)
class FramePlan:
    times: np.ndarray  # (F,) seconds of the frames to take
    sample_fps: float
    num_frames: int


def plan_frames(
    start_pts: float,
    end_pts: float,
    clip_fps: float,
    target_fps: float,
    max_frames: int,
    k: int,
    min_frames: int = 1,
) -> FramePlan:
    """Frame times of a clip resampled to `target_fps` (never above the clip's own fps: no made-up
    frames), as many as the span holds up to `max_frames`, cut to the rule k*m + 1.

    The clip keeps its own duration (up to max_frames / fps): the first frames are taken.
    Raises ValueError when fewer than `min_frames` valid frames fit.
    """
    fps = min(float(target_fps), float(clip_fps)) if clip_fps and clip_fps > 0 else float(target_fps)
    span = max(0.0, end_pts - start_pts)
    available = math.floor(span * fps + 1e-6)
    n = valid_frame_count(min(available, max_frames), k)
    if n < max(1, min_frames):
        raise ValueError(
            f"clip of {span:.3f} s holds {available} frames at {fps:g} fps; "
            f"need at least {max(1, min_frames)} of the form {k}k+1"
        )
    times = start_pts + (np.arange(n, dtype=np.float64) + 0.5) / fps  # mid-interval: robust to pts jitter
    return FramePlan(times=times, sample_fps=fps, num_frames=n)
