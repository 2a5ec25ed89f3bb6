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

`--engine openai`: the OpenAI-compatible client against the in-actor engine, in one run, on
the same pre-decoded clips and the same smoke model (saved to a folder, served on 127.0.0.1 by
jobs/bench/openai_server.py: `transformers serve` with a key check, on the same CPUs): clips/s
and completion tokens/s of the in-actor engine, then of the client at each `--in-flight`
(requests open at once), as ratios; tokens per clip (prompt, completion) from the server's
usage fields, also for the default prompt at the default 16 frames of 448 px.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from captioner.openai_engine import OpenAIConfig
from captioner.stage import DEFAULT, FRAMES_SHAPE, SMOKE, CaptionStage, attach_frames, resolve_engine
from captioner.vlm import Sampling, build_smoke_vlm
from curate import schema as S
from curate.ids import clip_id
from curate.io.storage import write_parquet_atomic
from curate.synthetic.synth import Segment, make_video
from jobs import caption as job
from jobs.bench import openai_server


def _scored(
    root: Path, clips: int, seconds: int = 8, width: int = 320, height: int = 180
) -> list[dict[str, Any]]:
    """Clips of 1-4 s over two generated videos (320x180 by default), all kept."""
    fps = 24
    rows = []
    for v in range(2):
        path = root / f"video{v}.mp4"
        make_video(
            path,
            [Segment("shot", fps * seconds // 4, p + v) for p in range(4)],
            fps=fps,
            width=width,
            height=height,
        )
        for k in range(clips // 2):
            length = fps * (1 + k % 4)
            start = (k * 29) % (fps * seconds - length)
            rows.append(
                {
                    S.CLIP_ID: clip_id(f"v{v}", start, start + length),
                    S.VIDEO_ID: f"v{v}",
                    S.SOURCE_URI: str(path),
                    S.START_FRAME: start,
                    S.END_FRAME: start + length,
                    S.START_PTS: start / fps,
                    S.END_PTS: (start + length) / fps,
                    S.FPS: float(fps),
                    S.WIDTH: width,
                    S.HEIGHT: height,
                    S.KEPT: True,
                    S.STATUS: S.STATUS_OK,
                }
            )
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
    reqs = [
        Request(
            prompts.dense_messages(prompts.LATEST), rng.integers(0, 255, (frames, 252, 448, 3), np.uint8), 2.0
        )
        for _ in range(batch)
    ]
    sampling = Sampling(max_new_tokens=new_tokens)
    vlm.generate(reqs[:1], replace(sampling, max_new_tokens=4))  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    t = time.perf_counter()
    gens = vlm.generate(reqs, sampling)
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    toks = sum(g.new_tokens for g in gens)
    return {
        "output_tokens": toks,
        "seconds": wall,
        "output_tokens_per_s": toks / wall,
        "prompt_tokens": vlm.prompt_tokens(reqs[0]),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def _engine_run(cfg: Any, table: Any) -> dict[str, float]:
    """Caption `table` (frames attached) in batches of cfg.batch_size after a one-clip warm-up."""
    stage = CaptionStage(cfg)
    stage.load()
    stage(table.slice(0, 1))
    warm = {k: stage.stats[k] for k in ("requests", "prompt_tokens", "completion_tokens")}
    rows: list[dict[str, Any]] = []
    t = time.perf_counter()
    for b in range(0, table.num_rows, cfg.batch_size):
        rows += stage(table.slice(b, cfg.batch_size)).to_pylist()
    wall = time.perf_counter() - t
    if hasattr(stage.vlm, "close"):
        stage.vlm.close()
    got = {k: stage.stats[k] - warm[k] for k in warm}
    n = len(rows)
    return {
        "clips_per_s": n / wall,
        "requests_per_s": got["requests"] / wall,
        "completion_tokens_per_s": got["completion_tokens"] / wall,
        "seconds": wall,
        "requests": got["requests"],
        "errors": sum(r[S.STATUS] != S.STATUS_OK for r in rows),
        "prompt_tokens_per_clip": got["prompt_tokens"] / n,
        "completion_tokens_per_clip": got["completion_tokens"] / n,
        "prompt_tokens_per_request": got["prompt_tokens"] / max(1, got["requests"]),
        "error_reasons": sorted({(r[S.ERROR] or "")[:100] for r in rows if r[S.STATUS] != S.STATUS_OK})[:3],
    }


def openai_main(a: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """In-actor transformers engine vs the openai engine at each in-flight limit, same clips and model."""
    import secrets

    import torch

    key_env = "TUBELET_BENCH_CAPTION_KEY"
    in_flight = [int(x) for x in a.in_flight.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-caption-openai-") as tmp:
        root = Path(a.out) if a.out else Path(tmp)
        model_dir = build_smoke_vlm(root / "smoke-vlm")
        rows = _scored(root / "media", a.clips)
        cfg = replace(cfg, model=str(model_dir), clip_model=None)
        table = attach_frames(S.table_from_rows(rows), cfg)  # decoded once: the engines alone are measured
        torch.set_num_threads(1)  # as a 1-CPU Ray actor runs (and the server below)
        report: dict[str, Any] = {
            "model": "smoke-random:qwen2_5_vl (CPU; plumbing only), one folder for both engines",
            "clips": len(rows),
            "num_frames": cfg.num_frames,
            "max_side": cfg.max_side,
            "max_new_tokens": a.max_new_tokens,
            "server": (
                "transformers serve (jobs/bench/openai_server.py) on 127.0.0.1, same CPUs as this process"
            ),
            "note": (
                "a clip costs 2-3 requests (caption, QA retry, short caption) and the random model's "
                "text differs between engines, so requests/s and completion tokens/s are the "
                "like-for-like ratios"
            ),
        }
        report["in_actor"] = {"batch_size": a.batch_size, **_round(_engine_run(cfg, table))}
        # the key exists only in this process's environment and the server's; never printed
        os.environ[key_env] = secrets.token_hex(16)
        threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"  # the server's torch: one thread, as the in-actor engine here
        try:
            server = openai_server.start_server(model_dir, root / "serve.log", key_env)
        finally:
            os.environ.pop("OMP_NUM_THREADS") if threads is None else os.environ.update(
                OMP_NUM_THREADS=threads
            )
        try:
            ocfg = resolve_engine(
                replace(
                    cfg,
                    engine="openai",
                    openai=OpenAIConfig(base_url=server.url, api_key_env=key_env, backoff_s=0.2),
                )
            )
            report["frames_sent_as"] = ocfg.openai.frames
            base = report["in_actor"]
            for n in in_flight:
                run = _engine_run(
                    replace(
                        ocfg, batch_size=max(n, a.batch_size), openai=replace(ocfg.openai, max_in_flight=n)
                    ),
                    table,
                )
                report[f"openai_in_flight_{n}"] = {
                    **_round(run),
                    "clips_per_s_vs_in_actor": round(run["clips_per_s"] / base["clips_per_s"], 3),
                    "requests_per_s_vs_in_actor": round(run["requests_per_s"] / base["requests_per_s"], 3),
                    "tokens_per_s_vs_in_actor": round(
                        run["completion_tokens_per_s"] / max(1e-9, base["completion_tokens_per_s"]), 3
                    ),
                }
            # the default prompt at the default frames (16 x 448 px), smoke model: what a clip costs
            dcfg = replace(ocfg, num_frames=DEFAULT.num_frames, max_side=DEFAULT.max_side, batch_size=4)
            big = _scored(
                root / "media-640", max(2, a.default_clips), width=640, height=360
            )  # -> 448x252 frames
            sub = attach_frames(S.table_from_rows(big[: a.default_clips]), dcfg)
            d = _engine_run(dcfg, sub)
            report["default_prompt_16_frames"] = {
                "prompt_version": dcfg.prompt_version,
                "num_frames": dcfg.num_frames,
                "max_side": dcfg.max_side,
                "clips": sub.num_rows,
                "frame_shape": sub.column(FRAMES_SHAPE)[0].as_py(),
                "note": "smoke model: image tokens as its Qwen2.5-VL processor counts them for these frames, "
                f"text tokens from the smoke tokenizer, completions capped at {a.max_new_tokens} tokens",
                **{
                    k: round(d[k], 1)
                    for k in (
                        "prompt_tokens_per_clip",
                        "completion_tokens_per_clip",
                        "prompt_tokens_per_request",
                    )
                },
            }
        finally:
            server.stop()
            os.environ.pop(key_env, None)
    return report


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench caption", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--clips", type=int, default=32, help="clips to caption")
    p.add_argument("--batch-size", type=int, default=4, help="clips per engine batch")
    p.add_argument("--max-new-tokens", type=int, default=48, help="smoke generation length (sets model cost)")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument(
        "--gpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run on the GPU (default: when present)",
    )
    p.add_argument(
        "--engine",
        choices=("transformers", "openai"),
        default="transformers",
        help="openai: the chat-completions client against the in-actor engine (starts a local server)",
    )
    p.add_argument(
        "--in-flight", default="1,4,16", help="--engine openai: requests open at once, comma-separated"
    )
    p.add_argument(
        "--default-clips",
        type=int,
        default=4,
        help="--engine openai: clips for the tokens-per-clip figure at the default 16 frames",
    )
    a = p.parse_args(argv)
    import torch

    cfg = replace(
        SMOKE,
        batch_size=a.batch_size,
        sampling=Sampling(max_new_tokens=a.max_new_tokens),
        retry_sampling=Sampling(max_new_tokens=a.max_new_tokens, do_sample=True, seed=1),
    )
    if a.engine == "openai":
        print(json.dumps(openai_main(a, cfg), indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-caption-") as tmp:
        root = Path(a.out) if a.out else Path(tmp)
        rows = _scored(root / "media", a.clips)
        write_parquet_atomic(S.table_from_rows(rows), root / "scored" / "part-0.parquet")
        base = baseline(rows, cfg)
        jcfg = job.CaptionJobConfig(
            input=str(root / "scored"), output=str(root / f"captions-{time.time_ns()}"), caption=cfg
        )
        s = job.main(jcfg)
    report: dict[str, Any] = {
        "model": "smoke-random:qwen2_5_vl (CPU; plumbing only)",
        "clips": len(rows),
        "batch_size": a.batch_size,
        "max_new_tokens": a.max_new_tokens,
        "baseline_inline_clips_per_s": round(base["clips_per_s"], 3),
        "baseline_decode_share": round(base["decode_share"], 3),
        "ray_clips_per_s_incl_startup": round(s["clips_per_s"], 3),
        "ray_clips_per_s_steady": round(s["steady_clips_per_s"], 3),  # first batch in -> last batch out
        "model_wait_share": round(s["model_wait_share"], 3),
        "model_busy_s": round(s["model_busy_s"], 2),
        "model_wait_s": round(s["model_wait_s"], 2),
        "target_wait_share": 0.10,
    }
    report["pipeline_vs_baseline"] = round(
        report["ray_clips_per_s_steady"] / report["baseline_inline_clips_per_s"], 3
    )
    if a.gpu or (a.gpu is None and torch.cuda.is_available()):
        report["gpu"] = {
            "device": torch.cuda.get_device_name(0),
            "model": "random-init Qwen2.5-VL-7B size, bf16",
            **gpu_tokens_per_s(batch=8, frames=16, new_tokens=128),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
