"""One decode of a kept clip for caption and encode (phase 2 of `jobs.curate`).

The stage jobs decode a clip twice: `jobs.caption` for its few uniformly spaced frames,
`jobs.encode` for every frame at the target fps in the clip's bucket. Where both run in one plan,
this CPU task decodes the span once (`curate.video.decode.decode_clips`: one seek, one pass,
each selection converted at its own size) and hands the caption actors their frames and the
encode actors theirs (carried past captioning in `_ahead_*` columns). Each selection is what its
stage's own decode returns, and each failure the message it gives, so the two ways write the
same bytes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from captioner import stage as caption
from captioner.stage import CaptionConfig
from curate import schema as S
from curate.errors import one_line
from curate.video.decode import decode_clips, no_frames
from latents import encode
from latents.encode import EncodeConfig


def attach_frames_once(table: pa.Table, caption_cfg: CaptionConfig, encode_cfg: EncodeConfig) -> pa.Table:
    """Caption transport columns and encode's frames decoded ahead, from one decode per clip."""
    rows = table.to_pylist()
    cap: dict[int, tuple[np.ndarray, float]] = {}
    cap_errors: dict[int, str] = {}
    enc: dict[int, tuple[np.ndarray, float]] = {}
    enc_errors: dict[int, str] = {}
    for i in caption.todo_rows(table):
        row = rows[i]
        plan = None
        try:
            plan = encode.plan_clip(row, encode_cfg)
        except Exception as e:  # the clip is captioned, then fails at encode (as in jobs.encode)
            enc_errors[i] = one_line(e)
        selections = [caption.selection(row, caption_cfg)] + ([plan.selection] if plan else [])
        try:
            clips = decode_clips(
                caption.source_path(row[S.SOURCE_URI]), row[S.START_PTS], row[S.END_PTS], selections
            )
        except Exception as e:  # one decode failed for both (a caption error: never encoded)
            cap_errors[i] = one_line(e)
            enc_errors.setdefault(i, cap_errors[i])
            continue
        gone = no_frames(row[S.START_PTS], row[S.END_PTS])  # decode_clip's StageError reason
        if clips[0] is None:
            cap_errors[i] = gone
        else:
            cap[i] = caption.frames_of(clips[0], row)
        if plan is None:
            continue
        if clips[1] is None:
            enc_errors[i] = gone
            continue
        try:
            enc[i] = encode.finish_clip(clips[1], plan, encode_cfg)
        except Exception as e:
            enc_errors[i] = one_line(e)
    return encode.with_ahead(caption.with_frames(table, cap, cap_errors), enc, enc_errors)
