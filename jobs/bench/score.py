"""Benchmark of the score stage: `python -m jobs.bench score [--clips N] [--model smoke|vit-l-14]`.

Measures, in one process and on the same clips:
- stage: each clip decoded once (curate/scores/score_frames.py) -> cheap scores -> CLIP + aesthetic;
- baseline: the same scores, but every scorer decodes the clip itself (CLIP frames, motion
  pairs, sharpness frames, brightness/black frames, flow, NSFW, OCR: 7 decodes per clip).
Reports clips/s of both and their ratio (the decode-once gain), and the cost per clip of
each frame model of the CPU step (optical flow + camera motion, NSFW, OCR; real weights) as
a ratio to the decode of that clip, timed on the same clips in the same run
(`--real-videos DIR` times them on clips split from real videos instead). With `--model vit-l-14` on
a CUDA machine it also measures images/s per GPU of a real-size, random-initialised open_clip
ViT-L/14 (+ a random 768-d aesthetic head): throughput only, no weights needed.
No Ray: the numbers are the stage's own work, not scheduling overhead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.decisions.filters import FilterConfig
from curate.schema import (
    END_FRAME,
    END_PTS,
    HEIGHT,
    SOURCE_URI,
    START_FRAME,
    START_PTS,
    STATUS,
    STATUS_OK,
    WIDTH,
    table_from_rows,
)
from curate.scores import cheap_scores as cs
from curate.scores import clip_models, flow, nsfw, ocr, score, score_config
from curate.scores.score_frames import (
    analysis_size,
    center_crop_square,
    decode_frames,
    prepare_batch,
    sample_offsets,
)
from curate.shots.clip_rows import window_rows
from curate.synthetic.synth import Segment, make_video
from curate.video.decode import DECODE_STATS, decode_clip


def synth_clips(
    directory: Path, videos: int, seconds: int, clip_s: int, size: tuple[int, int], fps: int
) -> pa.Table:
    """Synthetic videos cut into fixed windows: clip rows with exact frame/pts spans (CFR)."""
    rows = []
    for v in range(videos):
        n = seconds * fps
        path = make_video(directory / f"bench-{v}.mp4", [Segment("shot", n, pattern=v)], fps, *size).path
        rows += window_rows(path, n, fps, size, clip_s * fps)
    return table_from_rows(rows)


def run_stage(
    clips: pa.Table, stage: score.ClipScoreStage, cfg: score_config.ScoreConfig, batch: int
) -> float:
    t0 = time.perf_counter()
    for i in range(0, clips.num_rows, batch):
        stage(prepare_batch(clips.slice(i, batch), cfg))
    return time.perf_counter() - t0


def run_baseline(
    clips: pa.Table, stage: score.ClipScoreStage, cfg: score_config.ScoreConfig, batch: int
) -> float:
    """Every scorer decodes for itself; same frames, sizes and model work as the stage."""
    t0 = time.perf_counter()
    rows = clips.to_pylist()
    for i in range(0, len(rows), batch):
        crops = []
        for r in rows[i : i + batch]:
            n = r[END_FRAME] - r[START_FRAME]
            clip_off, _ = sample_offsets(n, cfg)
            pairs = cs.pair_offsets(n, cfg.motion_pairs, cfg.frame_margin)
            size = analysis_size(r[WIDTH], r[HEIGHT], max(cfg.analysis_short_side, cfg.image_size))
            span = (r[SOURCE_URI], r[START_PTS], r[END_PTS])
            crops.append(
                center_crop_square(decode_clip(*span, offsets=clip_off, size=size).frames, cfg.image_size)
            )
            m = decode_clip(*span, offsets=pairs, size=size)
            cs.motion(m.frames, m.pts, cfg.cheap.motion_short_side, indices=m.indices)
            cs.sharpness(decode_clip(*span, offsets=np.union1d(clip_off, pairs), size=size).frames)
            f = decode_clip(*span, offsets=np.union1d(clip_off, pairs), size=size).frames
            cs.brightness(f), cs.black_fraction(f, cfg.cheap.black_level)
            # the frame models, each with its own decode (the stage runs them on its one decode)
            fp = decode_clip(*span, offsets=np.union1d(clip_off, pairs), size=size)
            flow.flow_scores(fp.frames, fp.pts, cfg.flow, indices=fp.indices)
            nsfw.detector(cfg.nsfw).scores(decode_clip(*span, offsets=clip_off, size=size).frames)
            ocr.reader(cfg.ocr).scores(decode_clip(*span, offsets=clip_off, size=size).frames)
        stage.embed(np.concatenate(crops))
    return time.perf_counter() - t0


def scorer_costs(clips: pa.Table, cfg: score_config.ScoreConfig, repeats: int) -> dict[str, Any]:
    """Milliseconds per clip of the decode and of each CPU-step scorer, on the same frames (best of
    `repeats` per clip), and each scorer's cost as a ratio to the decode."""
    fl, det, rd = cfg.flow, nsfw.detector(cfg.nsfw), ocr.reader(cfg.ocr)
    steps = {
        "cheap": lambda cf, pick: cs.cheap_scores(cf.frames, cf.pts, cfg.cheap, indices=cf.indices),
        "flow": lambda cf, pick: flow.flow_scores(cf.frames, cf.pts, fl, indices=cf.indices),
        "nsfw": lambda cf, pick: det.scores(cf.frames[pick]),
        "ocr": lambda cf, pick: rd.scores(cf.frames[pick]),
    }
    totals = dict.fromkeys(["decode", *steps], 0.0)
    for row in clips.to_pylist():
        best = dict.fromkeys(totals, float("inf"))
        for _ in range(repeats):
            t0 = time.perf_counter()
            cf, pick = decode_frames(row, cfg)
            best["decode"] = min(best["decode"], time.perf_counter() - t0)
            for name, fn in steps.items():
                t0 = time.perf_counter()
                fn(cf, pick)
                best[name] = min(best[name], time.perf_counter() - t0)
        for k in totals:
            totals[k] += best[k]
    ms = {k: 1000 * v / clips.num_rows for k, v in totals.items()}
    return {
        "ms_per_clip": ms,
        "ratio_to_decode": {k: ms[k] / ms["decode"] for k in steps},
        "frames_per_clip": {"flow_pairs": cfg.motion_pairs, "ocr_nsfw": cfg.clip_frames},
        "analysis_short_side": max(cfg.analysis_short_side, cfg.image_size),
        "onnx_threads": cfg.ocr.threads,
    }


def real_clips(directory: Path, limit: int) -> pa.Table:
    """Clips of the real videos in `directory`, split with the default detector (ok rows only)."""
    from curate.shots.split import SplitConfig, split_video

    rows = []
    for p in sorted(directory.iterdir()):
        if p.suffix.lower() in (".mp4", ".mkv", ".webm", ".mov"):
            rows += [r for r in split_video(p, SplitConfig())[1] if r[STATUS] == STATUS_OK]
    return table_from_rows(rows[:limit])


def vit_l_config(tmp: Path) -> score_config.ScoreConfig:
    """Real-size ViT-L/14, random init (no weights), and a random 768-d aesthetic head."""
    from safetensors.torch import save_file

    head = clip_models.make_head((768, 1024, 128, 64, 16, 1))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / "random-head.safetensors"))
    return dataclasses.replace(
        score_config.DEFAULT,
        clip_pretrained=None,
        aesthetic_head=str(tmp / "random-head.safetensors"),
        device="cuda",
        precision="fp16",
        filters=FilterConfig(near_dup_cosine=None),
    )


def images_per_second(stage: score.ClipScoreStage, size: int, batch: int, iters: int) -> float:
    import torch

    imgs = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    stage.embed(imgs)  # warm-up (cudnn autotune, allocator)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        stage.embed(imgs)
    torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench score",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.splitlines()[0],
    )
    p.add_argument(
        "--model", choices=["smoke", "vit-l-14"], default="smoke", help="CLIP model (smoke: random, offline)"
    )
    p.add_argument("--videos", type=int, default=3, help="number of synthetic videos")
    p.add_argument("--seconds", type=int, default=8, help="length of each synthetic video")
    p.add_argument("--clip-seconds", type=int, default=2, help="seconds per clip")
    p.add_argument("--size", default="640x360", help="synthetic video size WxH")
    p.add_argument("--batch", type=int, default=8, help="clips per batch")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each path (the best is kept)")
    p.add_argument(
        "--real-videos", help="time the frame models on clips split from the videos in this folder"
    )
    p.add_argument("--cost-clips", type=int, default=24, help="clips timed for the per-scorer costs")
    p.add_argument("--json", help="also write the report here")
    a = p.parse_args(argv)
    w, h = (int(x) for x in a.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp_s:
        tmp = Path(tmp_s)
        if a.model == "smoke":
            cfg = dataclasses.replace(
                score_config.SMOKE, clip_model=str(clip_models.build_smoke_clip(tmp / "smoke"))
            )
        else:
            cfg = vit_l_config(tmp)
        stage = score.ClipScoreStage(cfg)
        stage.load()
        t0 = time.perf_counter()
        clips = synth_clips(tmp, a.videos, a.seconds, a.clip_seconds, (w, h), fps=24)
        print(f"made {clips.num_rows} clips ({a.videos} videos {w}x{h}) in {time.perf_counter() - t0:.1f}s")
        run_stage(clips.slice(0, 2), stage, cfg, a.batch)  # warm-up: imports, model first call
        DECODE_STATS.clear()
        t_stage = min(run_stage(clips, stage, cfg, a.batch) for _ in range(a.repeats))
        opens_stage = DECODE_STATS["opens"] / a.repeats
        DECODE_STATS.clear()
        t_base = min(run_baseline(clips, stage, cfg, a.batch) for _ in range(a.repeats))
        opens_base = DECODE_STATS["opens"] / a.repeats
        report: dict[str, Any] = {
            "model": score.model_label(cfg)
            if a.model == "smoke"
            else "open_clip ViT-L-14, RANDOM init (throughput only)",
            "device": stage.device,
            "clips": clips.num_rows,
            "video_size": f"{w}x{h}",
            "stage_clips_per_s": clips.num_rows / t_stage,
            "baseline_clips_per_s": clips.num_rows / t_base,
            "speedup_vs_decode_per_scorer": t_base / t_stage,
            "decoder_opens_per_clip": {
                "stage": opens_stage / clips.num_rows,
                "baseline": opens_base / clips.num_rows,
            },
            "cpu_threads": os.cpu_count(),
        }
        cost_clips = real_clips(Path(a.real_videos), a.cost_clips) if a.real_videos else clips
        cost_cfg = dataclasses.replace(score_config.DEFAULT, filters=FilterConfig(near_dup_cosine=None))
        report["frame_model_costs"] = {
            "clips": cost_clips.num_rows,
            "source": a.real_videos or f"synthetic {w}x{h}",
            **scorer_costs(cost_clips, cost_cfg, a.repeats),
        }
        if stage.device.startswith("cuda"):
            report["model_images_per_s_per_gpu"] = images_per_second(stage, cfg.image_size, 64, 10)
    print(json.dumps(report, indent=2))
    print(
        f"score stage: {report['stage_clips_per_s']:.2f} clips/s, "
        f"baseline {report['baseline_clips_per_s']:.2f} clips/s "
        f"-> {report['speedup_vs_decode_per_scorer']:.2f}x (target >= 2x)"
    )
    fc = report["frame_model_costs"]
    print(
        f"per clip ({fc['clips']} clips, {fc['source']}): decode {fc['ms_per_clip']['decode']:.1f} ms; "
        + ", ".join(
            f"{k} {fc['ms_per_clip'][k]:.1f} ms ({fc['ratio_to_decode'][k]:.2f}x decode)"
            for k in fc["ratio_to_decode"]
        )
    )
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
