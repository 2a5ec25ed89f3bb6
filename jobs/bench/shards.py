"""`python -m jobs.bench shards`: latent-shard read throughput and VAE encode speed (CPU by default).

1. Read: synthetic shards (random latents/embeddings, real schema and manifest) read back by
   `LatentDataset` (shuffled, batched, text padded + mask, float32 or stored dtype) against a
   plain `pyarrow.parquet.read_table` of the same files in the same process. Reported as MB/s
   (shard bytes on disk per second), samples/s and their ratio (target >= 0.8), for the steady
   state (second epoch) and for the first epoch, which also checks every row group's digests.
2. Encode: clips/s of the smoke stage (decode + bucket + tiny Wan VAE + tiny text encoder),
   and of the full-size LTX-Video VAE config (random weights, 17 frames at 256x256) on CPU.
Speed is only ever a ratio against a baseline run in the same process, or a plain rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from curate import schema as S
from latents.dataset import LatentDataset
from latents.shards import ShardWriter, tensor_to_bytes


def make_shards(
    root: Path,
    rows: int,
    latent_shapes: list[tuple[int, ...]],
    text_tokens: int,
    text_dim: int,
    rows_per_shard: int,
) -> dict:
    """Random rows of the real schema, several latent shapes, written by the real ShardWriter."""
    rng = np.random.default_rng(0)
    meta = {
        "vae": {"vae_id": "bench-random", "frame_rule": "4k+1"},
        "text_encoder": {"text_encoder_id": "bench-random", "max_length": 2 * text_tokens, "dim": text_dim},
        "buckets": [],
        "smoke": True,
    }
    with ShardWriter(root, meta, max_rows=rows_per_shard, row_group_rows=64, run_id="bench") as w:
        for start in range(0, rows, 64):
            batch = []
            for i in range(start, min(rows, start + 64)):
                shape = latent_shapes[(i // 64) % len(latent_shapes)]
                lat = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(torch.bfloat16)
                n = int(rng.integers(text_tokens // 2, text_tokens + 1))
                emb = torch.from_numpy(rng.standard_normal((n, text_dim), dtype=np.float32)).to(
                    torch.bfloat16
                )
                lb, ls, ld = tensor_to_bytes(lat)
                tb, ts, td = tensor_to_bytes(emb)
                batch.append(
                    {
                        S.CLIP_ID: f"c{i:06d}",
                        S.VIDEO_ID: "v",
                        S.CAPTION: f"caption {i}",
                        S.KEPT: True,
                        S.STATUS: S.STATUS_OK,
                        S.AESTHETIC: float(rng.random()),
                        S.LATENT: lb,
                        S.LATENT_SHAPE: ls,
                        S.LATENT_DTYPE: ld,
                        S.TEXT_EMBEDDING: tb,
                        S.TEXT_EMBEDDING_SHAPE: ts,
                        S.TEXT_EMBEDDING_DTYPE: td,
                        S.VAE_ID: "bench-random",
                    }
                )
            w.write(S.table_from_rows(batch))
    return w.manifest()


def bench_read(
    root: Path, batch_size: int | None, repeats: int, pad_text: str = "longest", latent_dtype: str = "stored"
) -> dict:
    """Per repeat, interleaved (same page cache and machine load): read_table of every shard, a
    new LatentDataset's first epoch (every row group checked on its first read), and its second
    epoch (checks already done: the steady state of multi-epoch training)."""
    files = sorted(root.glob("shard-*.parquet"))
    nbytes = sum(f.stat().st_size for f in files)
    base, first, later = [], [], []
    n_rows = n_samples = 0
    for _ in range(repeats):
        t = time.perf_counter()
        n_rows = sum(pq.read_table(f).num_rows for f in files)
        base.append(time.perf_counter() - t)
        ds = LatentDataset(
            root,
            batch_size=batch_size,
            shuffle=True,
            seed=0,
            verify="size",
            pad_text=pad_text,
            latent_dtype=latent_dtype,
        )
        for epoch, times in ((0, first), (1, later)):
            ds.set_epoch(epoch)
            t = time.perf_counter()
            n_samples = sum(len(item["clip_id"]) if batch_size else 1 for item in ds)
            times.append(time.perf_counter() - t)
    b, f, d = (float(np.median(x)) for x in (base, first, later))
    return {
        "files": len(files),
        "mb": round(nbytes / 1e6, 1),
        "rows": n_rows,
        "read_table_mb_s": round(nbytes / 1e6 / b, 1),
        "read_table_rows_s": round(n_rows / b, 1),
        "dataset_mb_s": round(nbytes / 1e6 / d, 1),
        "dataset_samples_s": round(n_samples / d, 1),
        "ratio": round(b / d, 3),
        "first_epoch_mb_s": round(nbytes / 1e6 / f, 1),
        "first_epoch_ratio": round(b / f, 3),
        "batch_size": batch_size,
        "pad_text": pad_text,
        "latent_dtype": latent_dtype,
    }


def bench_encode_smoke(tmp: Path, clips: int) -> dict:
    from curate.synthetic.synth import Segment, make_video
    from latents.encode import SMOKE, EncodeStage, prepare_batch

    rows = []
    for i in range(clips):  # landscape, square, portrait sources in turn; 40 frames at 24 fps each
        w, h = ((160, 90), (96, 96), (90, 160))[i % 3]
        v = make_video(tmp / f"src{i}.mp4", [Segment("shot", 40, pattern=i)], fps=24, width=w, height=h)
        rows.append(
            {
                S.CLIP_ID: f"c{i}",
                S.VIDEO_ID: f"v{i}",
                S.SOURCE_URI: str(v.path),
                S.START_FRAME: 0,
                S.END_FRAME: 40,
                S.START_PTS: 0.0,
                S.END_PTS: 40 / 24,
                S.FPS: 24.0,
                S.WIDTH: w,
                S.HEIGHT: h,
                S.KEPT: True,
                S.CAPTION: f"moving pattern {i}",
                S.STATUS: S.STATUS_OK,
            }
        )
    table = S.table_from_rows(rows)
    stage = EncodeStage(SMOKE)
    stage.load()
    stage(prepare_batch(table.slice(0, 1), SMOKE))  # warm-up
    t = time.perf_counter()
    prepared = prepare_batch(table, SMOKE)
    t_prep = time.perf_counter() - t
    out = stage(prepared)
    total = time.perf_counter() - t
    n = out.num_rows - out.column(S.LATENT).null_count
    return {"clips": n, "clips_s": round(n / total, 2), "prepare_share": round(t_prep / total, 2)}


def bench_encode_ltx_full(clips: int, frames: int, size: int) -> dict:
    """The full-size LTX-Video VAE config (random weights: speed only), through VideoVAE."""
    from diffusers import AutoencoderKLLTXVideo

    from latents.vae import VAEInfo, VideoVAE, vae_constants

    model = AutoencoderKLLTXVideo().eval()
    c, s, k, mean, std, factor = vae_constants("ltx", model)
    info = VAEInfo("ltx-full-config-random", "ltx", None, c, s, k, f"{k}k+1", mean, std, factor, True)
    vae = VideoVAE(model, info, torch.device("cpu"), torch.float32)
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    t = time.perf_counter()
    for _ in range(clips):
        z = vae.encode(x)
    dt = time.perf_counter() - t
    return {
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "clip": f"{frames}x{size}x{size}",
        "latent": list(z.shape[1:]),
        "clips_s": round(clips / dt, 3),
        "seconds_per_clip": round(dt / clips, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench shards",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--rows", type=int, default=512, help="synthetic latent rows")
    p.add_argument("--rows-per-shard", type=int, default=256, help="rows per shard")
    p.add_argument("--text-tokens", type=int, default=64, help="text embedding tokens per row")
    p.add_argument("--text-dim", type=int, default=512, help="text embedding width")
    p.add_argument("--batch-size", type=int, default=8, help="loader batch size")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    p.add_argument("--smoke-clips", type=int, default=6, help="clips encoded with the smoke VAE")
    p.add_argument("--ltx-clips", type=int, default=1, help="0 skips the full-size LTX encode")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [(16, 5, 32, 32), (16, 5, 24, 40), (16, 5, 40, 24)]  # Wan latents of 17 frames at ~256^2 buckets
    result: dict = {"machine": {"torch_threads": torch.get_num_threads()}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        make_shards(tmp / "latents", args.rows, shapes, args.text_tokens, args.text_dim, args.rows_per_shard)
        root = tmp / "latents"
        bench_read(root, args.batch_size, 1)  # warm-up: first allocations, imports
        reads = {
            "read_batches": bench_read(root, args.batch_size, args.repeats),  # the defaults
            "read_samples": bench_read(root, None, args.repeats),
            "read_batches_float32": bench_read(root, args.batch_size, args.repeats, latent_dtype="float32"),
            "read_batches_float32_max_length": bench_read(
                root, args.batch_size, args.repeats, "max_length", "float32"
            ),
        }
        result.update(reads)
        if args.smoke_clips:
            result["encode_smoke"] = bench_encode_smoke(tmp, args.smoke_clips)
        if args.ltx_clips:
            result["encode_ltx_full_cpu"] = bench_encode_ltx_full(args.ltx_clips, 17, 256)
    for name in reads:
        r = result[name]
        print(
            f"{name} (text padded to {r['pad_text']}, {r['latent_dtype']}): "
            f"LatentDataset {r['dataset_mb_s']} MB/s "
            f"{r['dataset_samples_s']} samples/s vs pyarrow read_table {r['read_table_mb_s']} MB/s -> ratio "
            f"{r['ratio']} (target >= 0.8); first epoch (checks every row group) "
            f"{r['first_epoch_mb_s']} MB/s, ratio {r['first_epoch_ratio']}"
        )
    if "encode_smoke" in result:
        print(
            "encode smoke (decode+bucket+tiny Wan VAE+tiny text): "
            f"{result['encode_smoke']['clips_s']} clips/s"
        )
    if "encode_ltx_full_cpu" in result:
        r = result["encode_ltx_full_cpu"]
        print(
            f"encode LTX-Video full config on CPU ({r['clip']}): {r['clips_s']} clips/s "
            f"({r['seconds_per_clip']} s/clip)"
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
