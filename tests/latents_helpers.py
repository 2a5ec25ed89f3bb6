"""Helpers for the latents tests: tiny generated clips as captioned CLIP_SCHEMA rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from curate import schema as S
from curate.ids import clip_id
from curate.synthetic.synth import Segment, make_video

# (width, height) of the generated sources: landscape, square, portrait
SIZES = ((160, 90), (96, 96), (90, 160))


def captioned_rows(
    tmp: Path,
    sizes: tuple[tuple[int, int], ...] = SIZES,
    fps: int = 24,
    frames: int = 40,
    clips_per_video: int = 2,
) -> pa.Table:
    """One synth video per size, `clips_per_video` kept+captioned clips each, plus one dropped clip."""
    rows = []
    for v, (w, h) in enumerate(sizes):
        info = make_video(
            tmp / f"src-{w}x{h}.mp4",
            [Segment("shot", frames * clips_per_video, pattern=v)],
            fps=fps,
            width=w,
            height=h,
        )
        vid = f"vid{v:02d}"
        for c in range(clips_per_video):
            s, e = c * frames, (c + 1) * frames
            rows.append(
                {
                    S.CLIP_ID: clip_id(vid, s, e),
                    S.VIDEO_ID: vid,
                    S.SOURCE_URI: str(info.path),
                    S.START_FRAME: s,
                    S.END_FRAME: e,
                    S.START_PTS: s / fps,
                    S.END_PTS: e / fps,
                    S.FPS: float(fps),
                    S.WIDTH: w,
                    S.HEIGHT: h,
                    S.SHOT_INDEX: 0,
                    S.SPLIT_METHOD: "synth",
                    S.TRANSITION_BEFORE: "start",
                    S.MOTION: 1.0,
                    S.SHARPNESS: 2.0,
                    S.BRIGHTNESS: 0.5,
                    S.AESTHETIC: 5.0 + v,
                    S.KEPT: True,
                    S.CAPTION: f"pattern {v} clip {c}: a moving gradient, {w}x{h}",
                    S.CAPTION_SHORT: f"pattern {v}",
                    S.CAPTION_MODEL: "smoke",
                    S.PROMPT_VERSION: "test",
                    S.STATUS: S.STATUS_OK,
                    S.CONFIG_HASH: "test",
                    S.TUBELET_VERSION: "0.1.0",
                }
            )
    dropped = dict(rows[0], **{S.CLIP_ID: "dropped", S.KEPT: False, S.DROP_REASON: "test", S.CAPTION: None})
    rows.append(dropped)
    return S.table_from_rows(rows)
