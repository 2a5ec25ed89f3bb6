"""The shot-boundary detector interface shared by every detector (content, transnetv2, hybrid).

Split decodes each video once (`curate.video.decode.iter_small_yuv`) and streams the small
frames through a detector, which returns where shots change and which frames belong to
gradual transitions or black segments (left out of clips).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from curate.video.decode import SmallFrame

TransitionKind = Literal["fade_in", "fade_out", "dissolve", "wipe", "black"]


@dataclass
class Transitions:
    """What a detector found in one video (frame numbers are 0-based decoded-frame indices)."""

    num_frames: int
    pts: np.ndarray  # (N,) float64 seconds of every decoded frame
    cuts: list[int] = field(default_factory=list)  # first frame of each new shot after a hard cut
    # inclusive [first, last] frame ranges excluded from clips, with their kind
    excluded: list[tuple[int, int, TransitionKind]] = field(default_factory=list)
    # (N,) per-frame transition score in [0, 1] (probability-like): kept at clip boundaries
    frame_score: np.ndarray | None = None


class Detector(Protocol):
    name: str
    # the decoded frame size this detector wants: exact (w, h) or None to use `target_area`
    frame_size: tuple[int, int] | None
    target_area: int

    def detect(self, frames: Iterator[SmallFrame]) -> Transitions: ...


def yuv_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 YUV (BT.601, limited range, as decoders emit) -> (h, w, 3) uint8 RGB."""
    y = 1.164 * (yuv[..., 0].astype(np.float32) - 16.0)
    u = yuv[..., 1].astype(np.float32) - 128.0
    v = yuv[..., 2].astype(np.float32) - 128.0
    rgb = np.stack([y + 1.596 * v, y - 0.392 * u - 0.813 * v, y + 2.017 * u], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)
