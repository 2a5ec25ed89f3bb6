"""`python -m jobs.bench caption`: captioning throughput and how long the model waits for frames.

On CPU with the smoke VLM (random, tiny: only the plumbing is measured):
  1. baseline, in this process without Ray: decode then caption, batch after batch, as a
     naive loop would; reports clips/s and the share of time spent decoding (= what the
     model would wait for without decode tasks running ahead);
  2. the Ray plan of jobs.caption (decode tasks ahead of the model actor): clips/s, and the
     share of the actor's time spent waiting between batches (target < 10%).
With a CUDA GPU (`--gpu`, default when one is present), also output tokens/s of a
random-initialised Qwen2.5-VL-7B-sized model in bf16 on batches of video clips.
Speeds are reported as ratios against the baseline run in the same process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from captioner.stage import SMOKE, CaptionStage, attach_frames
from captioner.vlm import Sampling
from curate import schema as S
from curate.ids import clip_id
from curate.storage import write_parquet_atomic
from curate.synth import Segment, make_video
from jobs import caption as job


def _scored(root: Path, clips: int, seconds: int = 8) -> list[dict[str, Any]]:
    """Clips of 1-4 s over two generated 320x180 videos, all kept."""
    fps = 24
    rows = []
    for v in range(2):
        path = root / f"video{v}.mp4"
        make_video(path, [Segment("shot", fps * seconds // 4, p + v) for p in range(4)], fps=fps, width=320,
                   height=180)
        for k in range(clips // 2):
            length = fps * (1 + k % 4)
            start = (k * 29) % (fps * seconds - length)
            rows.append({S.CLIP_ID: clip_id(f"v{v}", start, start + length), S.VIDEO_ID: f"v{v}",
                         S.SOURCE_URI: str(path), S.START_FRAME: start, S.END_FRAME: start + length,
                         S.START_PTS: start / fps, S.END_PTS: (start + length) / fps, S.FPS: float(fps),
                         S.WIDTH: 320, S.HEIGHT: 180, S.KEPT: True, S.STATUS: S.STATUS_OK})
    return rows


def baseline(rows: list[dict[str, Any]], cfg: Any) -> dict[str, float]:
    """Decode and caption inline, one batch after another (no overlap), in this process."""
    import torch

    torch.set_num_threads(1)  # as a 1-CPU Ray actor runs
    stage = CaptionStage(cfg)
    stage.load()
    stage(S.table_from_rows(rows[:1]))  # warm-up
    decode_s = model_s = 0.0
    for b in range(0, len(rows), cfg.batch_size):
        batch = S.table_from_rows(rows[b : b + cfg.batch_size])
        t = time.perf_counter()
        batch = attach_frames(batch, cfg)
        decode_s += time.perf_counter() - t
        t = time.perf_counter()
        stage(batch)
        model_s += time.perf_counter() - t
    return {"clips_per_s": len(rows) / (decode_s + model_s), "decode_share": decode_s / (decode_s + model_s)}


def gpu_tokens_per_s(batch: int, frames: int, new_tokens: int) -> dict[str, float]:
    """Output tokens/s of a random 7B-sized Qwen2.5-VL on `batch` clips of `frames` 448px frames."""
    import torch

    from captioner import prompts
    from captioner.vlm import Request, build_random_vlm_7b

    vlm = build_random_vlm_7b("cuda")
    rng = np.random.default_rng(0)
    reqs = [Request(prompts.dense_messages(prompts.LATEST), rng.integers(0, 255, (frames, 252, 448, 3), np.uint8),
                    2.0) for _ in range(batch)]
    sampling = Sampling(max_new_tokens=new_tokens)
    vlm.generate(reqs[:1], replace(sampling, max_new_tokens=4))  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    t = time.perf_counter()
    gens = vlm.generate(reqs, sampling)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    toks = sum(g.new_tokens for g in gens)
    return {"output_tokens": toks, "seconds": wall, "output_tokens_per_s": toks / wall,
            "prompt_tokens": vlm.prompt_tokens(reqs[0]), "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench caption", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clips", type=int, default=32, help="clips to caption")
    p.add_argument("--batch-size", type=int, default=4, help="clips per engine batch")
    p.add_argument("--max-new-tokens", type=int, default=48, help="smoke generation length (sets model cost)")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None, help="run on the GPU (default: when present)")
    a = p.parse_args(argv)
    import torch

    cfg = replace(SMOKE, batch_size=a.batch_size, sampling=Sampling(max_new_tokens=a.max_new_tokens),
                  retry_sampling=Sampling(max_new_tokens=a.max_new_tokens, do_sample=True, seed=1))
    with tempfile.TemporaryDirectory(prefix="bench-caption-") as tmp:
        root = Path(a.out) if a.out else Path(tmp)
        rows = _scored(root / "media", a.clips)
        write_parquet_atomic(S.table_from_rows(rows), root / "scored" / "part-0.parquet")
        base = baseline(rows, cfg)
        jcfg = job.CaptionJobConfig(input=str(root / "scored"), output=str(root / f"captions-{time.time_ns()}"),
                                    caption=cfg)
        s = job.main(jcfg)
    report: dict[str, Any] = {
        "model": "smoke-random:qwen2_5_vl (CPU; plumbing only)", "clips": len(rows), "batch_size": a.batch_size,
        "max_new_tokens": a.max_new_tokens,
        "baseline_inline_clips_per_s": round(base["clips_per_s"], 3),
        "baseline_decode_share": round(base["decode_share"], 3),
        "ray_clips_per_s_incl_startup": round(s["clips_per_s"], 3),
        "ray_clips_per_s_steady": round(s["steady_clips_per_s"], 3),  # first batch in -> last batch out
        "model_wait_share": round(s["model_wait_share"], 3), "model_busy_s": round(s["model_busy_s"], 2),
        "model_wait_s": round(s["model_wait_s"], 2), "target_wait_share": 0.10,
    }
    report["pipeline_vs_baseline"] = round(report["ray_clips_per_s_steady"] / report["baseline_inline_clips_per_s"], 3)
    if a.gpu or (a.gpu is None and torch.cuda.is_available()):
        report["gpu"] = {"device": torch.cuda.get_device_name(0), "model": "random-init Qwen2.5-VL-7B size, bf16",
                         **gpu_tokens_per_s(batch=8, frames=16, new_tokens=128)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
