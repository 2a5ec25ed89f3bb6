"""Synthetic videos with exactly known shot boundaries (tests, benchmarks and `jobs.demo`).

Each segment is a moving pattern of its own (different content, colours and motion), so
a hard cut between segments is unambiguous; fades to/from black and a cross-dissolve can
be inserted with exact frame ranges. Encoded with PyAV's bundled libx264: no system ffmpeg.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curate.video.mp4 import write_video


@dataclass(frozen=True)
class Segment:
    kind: str  # "shot" | "black" | "fade_in" | "fade_out" | "dissolve"
    frames: int
    pattern: int = 0  # which moving pattern a shot shows
    speed: float = 1.0  # motion speed of the pattern (0 = still)


@dataclass
class SynthVideo:
    path: Path
    fps: int
    width: int
    height: int
    num_frames: int
    cuts: list[int] = field(default_factory=list)  # first frame of each new shot after a hard cut
    gradual: list[tuple[str, int, int]] = field(default_factory=list)  # (type, first, last) inclusive
    black: list[tuple[int, int]] = field(default_factory=list)  # inclusive


def pattern_frame(pattern: int, t: float, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 frame `t` of moving pattern `pattern` (deterministic)."""
    rng = np.random.default_rng(1000 + pattern)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 215, size=3)
    fx, fy = rng.uniform(0.02, 0.08, size=2)
    vx, vy = rng.uniform(-3, 3, size=2)
    kind = pattern % 4
    if kind == 0:  # moving sinusoid grating
        v = np.sin((xx + vx * t) * fx) * np.cos((yy + vy * t) * fy)
    elif kind == 1:  # moving checkerboard
        v = (((xx + 2 * t) // 24 + (yy + t) // 24) % 2) * 2 - 1
    elif kind == 2:  # radial rings drifting
        cx, cy = width / 2 + 40 * np.sin(t / 15), height / 2 + 30 * np.cos(t / 20)
        v = np.sin(np.hypot(xx - cx, yy - cy) * fx * 2 - t * 0.2)
    else:  # diagonal bars + a moving disc
        v = np.sign(np.sin((xx + yy + 3 * t) * fx))
        disc = np.hypot(xx - (t * 4) % width, yy - height / 2) < height / 6
        v = np.where(disc, 1.0, v * 0.5)
    rgb = np.stack([base[c] + 40 * v * (1 if c == pattern % 3 else 0.5) for c in range(3)], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_video(
    path: str | Path, segments: list[Segment], fps: int = 24, width: int = 320, height: int = 180
) -> SynthVideo:
    """Render segments back to back. A shot after a shot (or black) is a hard cut;
    a fade_in ramps from black into the next shot, fade_out ramps the previous shot to black,
    a dissolve blends the previous shot into the next one."""
    info = SynthVideo(Path(path), fps, width, height, 0)
    frames: list[np.ndarray] = []
    black = np.zeros((height, width, 3), np.uint8)
    # pattern of the shot adjacent to each gradual segment
    for i, seg in enumerate(segments):
        start = len(frames)
        prev_shot = next((s for s in reversed(segments[:i]) if s.kind == "shot"), Segment("shot", 0))
        next_shot = next((s for s in segments[i + 1 :] if s.kind == "shot"), Segment("shot", 0))
        prev_pat, next_pat = prev_shot.pattern, next_shot.pattern
        for j in range(seg.frames):
            t = start + j
            a = (j + 1) / (seg.frames + 1)  # strictly between 0 and 1
            tp, tn = t * prev_shot.speed, t * next_shot.speed  # pattern time of the neighbouring shots
            if seg.kind == "shot":
                frames.append(pattern_frame(seg.pattern, t * seg.speed, width, height))
            elif seg.kind == "black":
                frames.append(black)
            elif seg.kind == "fade_in":
                frames.append((pattern_frame(next_pat, tn, width, height) * a).astype(np.uint8))
            elif seg.kind == "fade_out":
                frames.append((pattern_frame(prev_pat, tp, width, height) * (1 - a)).astype(np.uint8))
            elif seg.kind == "dissolve":
                mix = (
                    pattern_frame(prev_pat, tp, width, height) * (1 - a)
                    + pattern_frame(next_pat, tn, width, height) * a
                )
                frames.append(mix.astype(np.uint8))
            else:
                raise ValueError(f"unknown segment kind {seg.kind!r}")
        if seg.kind == "shot" and i > 0 and segments[i - 1].kind in ("shot", "black"):
            info.cuts.append(start)
        if seg.kind == "black" and i > 0 and segments[i - 1].kind == "shot":
            info.cuts.append(start)
        if seg.kind in ("fade_in", "fade_out", "dissolve"):
            info.gradual.append((seg.kind, start, start + seg.frames - 1))
        if seg.kind == "black":
            info.black.append((start, start + seg.frames - 1))
    info.num_frames = len(frames)
    write_video(path, frames, fps)
    return info
