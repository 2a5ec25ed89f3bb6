"""`python -m jobs.bench decode_once --input DIR`: phase 2's CPU step, one decode per clip vs two.

`jobs.curate` decodes a kept clip once for its caption frames and its encode frames
(jobs/runtime/clip_frames.py); the stage jobs decode it twice (`jobs.caption`, then
`jobs.encode`). Both are run here, in this process, on 2 s clips of every video in DIR at the
`default` preset's frame policies (caption: 16 frames, longer side 448; encode: 16 fps in the
480p buckets), and the ratio of their wall times is printed with a check that both give the
same bytes. No models and no Ray: the decode and resize only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pyarrow as pa

from captioner.stage import DEFAULT as CAPTION
from captioner.stage import FRAMES, attach_frames
from curate import schema as S
from curate.errors import UsageError
from curate.shots.clip_rows import clip_rows, frame_pts
from jobs.runtime.clip_frames import attach_frames_once
from jobs.runtime.inputs import VIDEO_EXTENSIONS
from latents.encode import DEFAULT as ENCODE
from latents.encode import PIXELS, prepare_batch


def _rows(folder: Path, seconds: float, per_video: int) -> pa.Table:
    rows = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS):
        pts, _ = frame_pts(path)
        if len(pts) < 2:
            continue
        n = max(2, round(seconds * (len(pts) - 1) / max(1e-3, float(pts[-1] - pts[0]))))
        spans = [(a, a + n) for a in range(0, len(pts) - n, n)][:per_video]
        rows += clip_rows(path, spans)
    if not rows:
        raise UsageError(f"--input must hold videos of at least {seconds:g} s, got none in {folder}")
    table = S.table_from_rows(rows)
    return S.set_columns(table, {S.KEPT: [True] * table.num_rows, S.CAPTION: ["a clip"] * table.num_rows})


def _timed(fn, *args) -> tuple[pa.Table, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench decode_once", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, help="a folder of videos")
    p.add_argument("--seconds", type=float, default=2.0, help="clip length in seconds (default: %(default)s)")
    p.add_argument("--per-video", type=int, default=3, help="clips per video at most (default: %(default)s)")
    p.add_argument(
        "--repeats", type=int, default=2, help="runs of each way, best kept (default: %(default)s)"
    )
    a = p.parse_args(argv)
    table = _rows(Path(a.input), a.seconds, a.per_video)
    twice = once = float("inf")
    for _ in range(max(1, a.repeats)):
        caption_frames, t_cap = _timed(attach_frames, table, CAPTION)
        two, t_enc = _timed(prepare_batch, caption_frames, ENCODE)
        twice = min(twice, t_cap + t_enc)
        ahead, t_once = _timed(attach_frames_once, table, CAPTION, ENCODE)
        one, t_prep = _timed(prepare_batch, ahead, ENCODE)
        once = min(once, t_once + t_prep)
    same = one.column(PIXELS).equals(two.column(PIXELS)) and ahead.column(FRAMES).equals(
        caption_frames.column(FRAMES)
    )
    print(f"decode_once: {table.num_rows} clips of {a.seconds:g} s from {a.input}")
    print(f"  two decodes (jobs.caption + jobs.encode): {twice:.2f} s")
    print(f"  one decode (jobs.curate phase 2):        {once:.2f} s   ratio {once / twice:.2f}")
    print(f"  same caption frames and encode pixels: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
