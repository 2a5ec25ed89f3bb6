"""`python -m jobs.bench frames --input DIR`: the CPU step's frame-model scores per video.

Splits every video in DIR with the default detector, runs the score stage's CPU step on
every clip with no rules (so every scorer runs on every clip: flow + camera motion, NSFW,
OCR, with their real weights) and prints a Markdown table, one line per file: clips,
camera-motion classes, flow magnitude (median over clips), text area and boxes (max),
NSFW (max), recognised strings. No Ray; for looking at what the scores say on real footage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from curate.decisions.filters import FilterConfig
from curate.errors import UsageError
from curate.schema import (
    CAMERA_MOTION,
    FLOW_MAGNITUDE,
    NSFW,
    OCR_TEXT,
    SOURCE_URI,
    STATUS,
    STATUS_OK,
    TEXT_AREA,
    TEXT_BOXES,
    table_from_rows,
)
from curate.scores import score, score_config
from curate.scores.score_frames import prepare_batch
from curate.shots.split import SplitConfig, split_video

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


def score_folder(directory: Path) -> list[dict]:
    """One dict per video: its clips' CPU-step scores (every scorer run on every clip)."""
    cfg = dataclasses.replace(score_config.DEFAULT, filters=FilterConfig(near_dup_cosine=None))
    out = []
    for p in sorted(directory.iterdir()):
        if p.suffix.lower() not in VIDEO_SUFFIXES:
            continue
        rows = [r for r in split_video(p, SplitConfig())[1] if r[STATUS] == STATUS_OK]
        scored = prepare_batch(table_from_rows(rows), cfg).to_pylist() if rows else []
        out.append(
            {
                "file": p.name,
                "clips": [
                    {
                        k: r[k]
                        for k in (
                            SOURCE_URI,
                            STATUS,
                            CAMERA_MOTION,
                            FLOW_MAGNITUDE,
                            TEXT_AREA,
                            TEXT_BOXES,
                            NSFW,
                            OCR_TEXT,
                        )
                    }
                    for r in scored
                ],
            }
        )
    return out


def markdown(videos: list[dict]) -> str:
    lines = [
        "| file | clips | camera_motion | flow_magnitude (median) | text_area (max) | text_boxes (max) "
        "| nsfw (max) | ocr_text |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in videos:
        ok = [c for c in v["clips"] if c[STATUS] == STATUS_OK]
        if not ok:
            lines.append(f"| {v['file']} | 0 | - | - | - | - | - | - |")
            continue
        cams = ", ".join(f"{k} x{n}" for k, n in Counter(c[CAMERA_MOTION] for c in ok).most_common())
        texts = sorted({t for c in ok for t in (c[OCR_TEXT] or [])})
        shown = "; ".join(texts[:4]).replace("|", "/") + (f" (+{len(texts) - 4})" if len(texts) > 4 else "")
        lines.append(
            f"| {v['file']} | {len(ok)} | {cams} | {np.median([c[FLOW_MAGNITUDE] for c in ok]):.3f} "
            f"| {max(c[TEXT_AREA] for c in ok):.4f} | {max(c[TEXT_BOXES] for c in ok)} "
            f"| {max(c[NSFW] for c in ok):.3f} | {shown} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench frames", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="folder of videos")
    p.add_argument("--json", help="also write every clip's scores here")
    a = p.parse_args(argv)
    d = Path(a.input)
    try:
        if not d.is_dir():
            raise UsageError(f"--input must be a folder of videos, got {a.input!r}; pass a folder")
        score.check_weights(
            dataclasses.replace(score_config.DEFAULT, smoke=True)
        )  # the frame models' weights only
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    videos = score_folder(d)
    print(markdown(videos))
    if a.json:
        Path(a.json).write_text(json.dumps(videos, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
