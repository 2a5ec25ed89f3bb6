"""Bench: DiT training from precomputed latents vs encoding with the VAE inside each step.

    python -m jobs.bench train [--vae smoke|smoke-ltx|ltx-full-random] [--steps N] [--out bench-out]

Same process, same clips, same model, same batches: the baseline runs the VAE encoder on the
batch's pixels in every step (as facebookresearch/DiT's train.py does); the precomputed run
trains on the latents encoded once beforehand (what jobs.train does with the shards). Reports
median steps/s of both (their steps interleaved) and their ratio, the one-off encoding cost,
and the token efficiency of Patch n' Pack against padding every sample to the longest, on
mixed bucket shapes.
Text embeddings are precomputed in both runs (they are not what is measured).

Attention work (`attention` in the output): one per-step batch of the default preset
(batch_size samples of the default encode's latent shapes: each bucket, frame counts uniform
over the frame rule's 5..81) as self-attention FLOPs (4 * q * k * width per layer) when padded
to the longest, packed with a dense row mask (the old way), and packed per sample (varlen);
and the measured time of the same three on CPU at a reduced width and spatial size.
`ltx-full-random` is the full-size LTX-Video VAE architecture with random weights (same
compute as the real one, no download).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latents.dit.packing import num_tokens, pack, padding_efficiency
from latents.dit.synthetic import synthetic_samples
from latents.dit.train import TrainConfig, lr_at, micro_loss

# Mixed (T, H, W) latent buckets, as a Wan-VAE 256²-area set of aspects and durations gives.
MIXED_SHAPES = [(t, h, w) for t in (5, 9, 13) for h, w in ((32, 32), (24, 42), (42, 24), (28, 36), (36, 28))]


class _RandomFullLTX:
    """Full-size LTX-Video VAE (diffusers default config, random weights): the real encoder's compute."""

    def __init__(self) -> None:
        from diffusers import AutoencoderKLLTXVideo

        torch.manual_seed(0)
        self.model = AutoencoderKLLTXVideo().eval()
        self.spatial, self.temporal = 32, 8

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode(pixels).latent_dist.mode().float()


def load_encoder(kind: str):
    """(encoder with .encode(pixels [B,3,F,H,W]) -> latents, pixel (F, H, W) of the bench clips)."""
    if kind == "ltx-full-random":
        return _RandomFullLTX(), (17, 256, 256)
    from latents import vae as V

    vae = V.load_vae({"smoke": V.WAN_SMOKE, "smoke-ltx": V.LTX_SMOKE}[kind])
    return vae, ((17, 64, 64) if kind == "smoke" else (17, 128, 128))


def pixel_clips(n: int, fhw: tuple[int, int, int]) -> list[torch.Tensor]:
    """n moving-pattern clips [3, F, H, W] in [-1, 1]."""
    from curate.synthetic.synth import pattern_frame

    f, h, w = fhw
    clips = []
    for i in range(n):
        x = np.stack([pattern_frame(i, t, w, h) for t in range(f)])  # (F, H, W, 3) uint8
        clips.append(torch.from_numpy(x).float().div(127.5).sub(1).permute(3, 0, 1, 2))  # -> (3, F, H, W)
    return clips


class Trainer:
    """One model + optimizer; `step(k)` runs optimizer step k, encoding in-step when given an encoder."""

    def __init__(self, cfg: TrainConfig, data: list[dict], encoder=None, pixels=None):
        from latents.dit.model import DiT

        torch.manual_seed(0)  # same initial weights in both runs
        self.cfg, self.data, self.encoder, self.pixels = cfg, data, encoder, pixels
        self.model = DiT(cfg.model_config(data[0]["latent"].shape[0], data[0]["text_embedding"].shape[-1]))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr)

    def step(self, step: int) -> float:
        """Seconds taken by optimizer step `step`."""
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)  # same batches in both runs
        idx = torch.randperm(len(self.data), generator=g)[: self.cfg.batch_size].tolist()
        batch = [{**self.data[i], "position": step * self.cfg.batch_size + k} for k, i in enumerate(idx)]
        if self.encoder is not None:  # the baseline: pixels -> VAE -> latents inside the step
            z = self.encoder.encode(
                torch.stack([self.pixels[i] for i in idx])
            )  # (B, 3, F, H, W) -> (B, C, T, h, w)
            batch = [{**s, "latent": z[k]} for k, s in enumerate(batch)]
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.cfg, step)
        loss, *_ = micro_loss(self.model, batch, self.cfg, torch.device("cpu"), scale=1 / len(batch))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return time.perf_counter() - t0


def compare(cfg: TrainConfig, data: list[dict], steps: int, encoder, pixels) -> tuple[float, float]:
    """Median steps/s of (VAE in-step, precomputed). Steps alternate between the two runs so a
    change of machine load hits both alike; step 0 of each is a warm-up and not counted."""
    base, pre = Trainer(cfg, data, encoder, pixels), Trainer(cfg, data)
    tb, tp = [], []
    for k in range(steps + 1):
        b, p = base.step(k), pre.step(k)
        if k:
            tb.append(b)
            tp.append(p)
    return 1 / float(np.median(tb)), 1 / float(np.median(tp))


def packing_efficiency(patch: tuple[int, int, int], max_tokens: int, n: int = 256, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shapes = [MIXED_SHAPES[i] for i in rng.integers(0, len(MIXED_SHAPES), n)]
    lengths = [num_tokens((1, *s), patch) for s in shapes]
    lat = [torch.zeros(1, *s) for s in shapes]
    txt = [torch.zeros(1, 1)] * n
    packed = pack(lat, txt, [torch.ones(1, dtype=torch.bool)] * n, patch, max_tokens)
    return {
        "samples": n,
        "patch": list(patch),
        "max_tokens": max_tokens,
        "rows": packed.tokens.shape[0],
        "packed_efficiency": round(packed.efficiency, 4),
        "padded_efficiency": round(padding_efficiency(lengths), 4),
    }


def default_batch_shapes(batch: int, seed: int = 0, shrink: int = 1) -> list[tuple[int, int, int, int]]:
    """A per-step batch of default-preset latents [C, T, H, W]: bucket and frame count uniform at random.
    `shrink` divides the latent height and width (kept even, for the 2x2 patch) for CPU timing."""
    from latents.encode import DEFAULT as ENC

    rng = np.random.default_rng(seed)
    k = ENC.frame_k
    frames = [f for f in range(ENC.min_frames, ENC.max_frames + 1) if (f - 1) % k == 0]
    buckets = ENC.buckets
    out = []
    for _ in range(batch):
        b, f = buckets[rng.integers(len(buckets))], frames[rng.integers(len(frames))]
        h, w = b.height // 8, b.width // 8  # Wan 2.1 VAE: 8x spatial, 4x temporal, 16 channels
        out.append((16, (f - 1) // k + 1, max(2, h // shrink // 2 * 2), max(2, w // shrink // 2 * 2)))
    return out


def attention_flops(
    shapes: list[tuple[int, ...]], patch: tuple[int, int, int], max_tokens: int, width: int
) -> dict:
    """Self-attention FLOPs of one layer for the batch: padded, packed + dense row mask, packed per sample."""
    from latents.dit.packing import plan_rows

    lengths = [num_tokens(s, patch) for s in shapes]
    rows = plan_rows(lengths, max_tokens)
    row_len = max(sum(lengths[i] for i in r) for r in rows)  # pack() cuts every row to the longest row
    f = 4.0 * width  # QK^T and PV: 2 x (multiply + add) per (query, key, channel)
    padded = f * len(lengths) * max(lengths) ** 2
    dense = f * len(rows) * row_len**2
    varlen = f * sum(n * n for n in lengths)
    return {
        "samples": len(lengths),
        "rows": len(rows),
        "row_tokens": row_len,
        "longest_sample": max(lengths),
        "real_tokens": sum(lengths),
        "gflop_padded": round(padded / 1e9, 2),
        "gflop_packed_dense_mask": round(dense / 1e9, 2),
        "gflop_packed_per_sample": round(varlen / 1e9, 2),
        "ratio_packed_per_sample_to_padded": round(varlen / padded, 4),
        "ratio_packed_dense_mask_to_padded": round(dense / padded, 4),
    }


def time_attention(
    shapes: list[tuple[int, ...]],
    patch: tuple[int, int, int],
    max_tokens: int,
    width: int,
    heads: int,
    reps: int,
) -> dict:
    """Median seconds of one self-attention layer (forward) on the batch: padded (dense, padding keys
    masked), packed with the dense row mask, packed per sample. Runs interleaved, in this process."""
    from latents.dit.attention import DocAttention

    g = torch.Generator().manual_seed(0)
    lat = [torch.randn(1, *s[1:], generator=g) for s in shapes]  # only the token layout matters here
    txt, msk = [torch.zeros(1, 1)] * len(shapes), [torch.ones(1, dtype=torch.bool)] * len(shapes)
    runs = {}
    for name, budget, backend in (
        ("padded", None, "dense"),
        ("packed_dense_mask", max_tokens, "dense"),
        ("packed_per_sample", max_tokens, "varlen"),
    ):
        p = pack(lat, txt, msk, patch, budget)
        r, n = p.seg.shape
        qkv = torch.randn(3, r, heads, n, width // heads, generator=g)  # (3, R, h, N, hd)
        runs[name] = (DocAttention(backend, p.places, p.places, p.seg, p.seg), qkv)
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for k in range(reps + 1):
            for name, (attend, qkv) in runs.items():
                t0 = time.perf_counter()
                attend(*qkv)
                if k:  # the first round is a warm-up
                    times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {
        "width": width,
        "heads": heads,
        "reps": reps,
        **{f"s_{k}": round(v, 4) for k, v in med.items()},
        "time_ratio_packed_per_sample_to_padded": round(med["packed_per_sample"] / med["padded"], 4),
        "time_ratio_packed_dense_mask_to_padded": round(med["packed_dense_mask"] / med["padded"], 4),
    }


def attention_work(batch: int, shrink: int, width: int, heads: int, reps: int, seed: int = 0) -> dict:
    """Packed vs padded attention at the default preset's per-step batch: FLOPs at full size, and FLOPs
    and measured CPU time at 1/shrink latent height and width (same frame counts)."""
    from jobs.train import resolve_budget
    from latents.dit.train import DEFAULT

    full = default_batch_shapes(batch, seed)
    with contextlib.redirect_stdout(sys.stderr):  # its note would break the JSON on stdout
        cfg = resolve_budget(DEFAULT, full, user_set=False)  # jobs.train's rule: rows hold the longest sample
    small = default_batch_shapes(batch, seed, shrink)
    # the same row budget relative to the longest sample, at the reduced size
    longest = max(num_tokens(s, DEFAULT.patch) for s in full)
    small_budget = max(num_tokens(s, DEFAULT.patch) for s in small) * cfg.max_tokens // longest
    hidden = DEFAULT.model_config(16, 16).hidden
    return {
        "batch_size": batch,
        "max_tokens": cfg.max_tokens,
        "model_width": hidden,
        "full_size": attention_flops(full, DEFAULT.patch, cfg.max_tokens, hidden),
        f"cpu_1_over_{shrink}_hw": {
            "max_tokens": small_budget,
            **attention_flops(small, DEFAULT.patch, small_budget, width),
            **time_attention(small, DEFAULT.patch, small_budget, width, heads, reps),
        },
    }


def activation_memory(model_name: str = "B", tokens: int = 512, checkpointing: bool = False) -> dict:
    """Bytes of tensors saved for backward per token, measured on one forward at the model's real
    width (CPU, fp32; bf16 halves them) through autograd's saved-tensor hooks, deduplicated by
    storage. Activations grow linearly in tokens at a fixed row length per sample, so a short
    sequence extrapolates to the budget (attention itself is flash / varlen: no N^2 tensor kept)."""
    from latents.dit.model import DiT

    cfg = TrainConfig(model=model_name, patch=(1, 2, 2), max_tokens=tokens)
    model = DiT(cfg.model_config(16, 4096))
    model.checkpointing = checkpointing
    side = int((tokens // 4) ** 0.5)  # 4 frames of side x side tokens
    latent = torch.randn(16, 4, 2 * side, 2 * side)
    seen: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    batch = [
        {
            "latent": latent,
            "text_embedding": torch.randn(32, 4096),
            "text_mask": torch.ones(32, dtype=torch.bool),
            "position": 0,
        }
    ]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        micro_loss(model, batch, cfg, torch.device("cpu"), scale=1.0)
    saved = sum(v for k, v in seen.items() if k not in params)
    n = num_tokens(latent.shape, cfg.patch)
    return {
        "model": model_name,
        "tokens": n,
        "checkpointing": checkpointing,
        "params": sum(p.numel() for p in model.parameters()),
        "bytes_per_token_fp32": saved / n,
    }


def projected_peak(step_tokens_per_gpu: int, micro_tokens: int) -> dict:
    """The default preset's projected per-GPU peak: fp32 weights + grads + AdamW (2 moments) + EMA
    (20 bytes per parameter) plus bf16 activations of one micro-batch (with per-block
    checkpointing: the blocks' inputs plus one block recomputed in backward)."""
    kept = activation_memory("B", checkpointing=True)
    full = activation_memory("B", checkpointing=False)
    blocks = 12
    per_token_bf16 = kept["bytes_per_token_fp32"] / 2 + full["bytes_per_token_fp32"] / 2 / blocks
    states = 20 * full["params"]
    acts = per_token_bf16 * micro_tokens
    return {
        "activation_bytes_per_token_bf16_no_checkpointing": round(full["bytes_per_token_fp32"] / 2),
        "activation_bytes_per_token_bf16_checkpointing": round(per_token_bf16),
        "params": full["params"],
        "micro_tokens": micro_tokens,
        "step_tokens_per_gpu": step_tokens_per_gpu,
        "weights_optimizer_ema_gb": round(states / 1e9, 2),
        "activations_gb": round(acts / 1e9, 2),
        "projected_peak_gb": round((states + acts) / 1e9, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench train",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.split("\n")[0],
    )
    p.add_argument(
        "--vae",
        choices=["smoke", "smoke-ltx", "ltx-full-random"],
        default="smoke",
        help="VAE that makes the latents",
    )
    p.add_argument("--clips", type=int, default=4, help="synthetic clips")
    p.add_argument("--steps", type=int, default=5, help="training steps per run")
    p.add_argument("--batch-size", type=int, default=4, help="clips per step")
    p.add_argument("--model", default="tiny", choices=["tiny", "S", "B", "L"], help="DiT size")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--out", default="bench-out", help="scratch folder for the benchmark's outputs")
    p.add_argument(
        "--memory-only", action="store_true", help="only the default preset's projected GPU memory"
    )
    p.add_argument("--attention-only", action="store_true", help="only the packed-vs-padded attention work")
    p.add_argument(
        "--attention-batch", type=int, default=None, help="samples per step (default: the default preset's)"
    )
    p.add_argument(
        "--attention-shrink", type=int, default=6, help="divide latent H and W by this for CPU timing"
    )
    p.add_argument(
        "--attention-width", type=int, default=64, help="attention width for CPU timing (heads of 16)"
    )
    p.add_argument("--attention-reps", type=int, default=3, help="timed repeats of the attention figure")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from latents.dit.train import DEFAULT

    attention = attention_work(
        a.attention_batch or DEFAULT.batch_size,
        a.attention_shrink,
        a.attention_width,
        a.attention_width // 16,
        a.attention_reps,
    )
    if a.memory_only:
        print(
            json.dumps(
                {"bench": "train", "memory": projected_peak(DEFAULT.step_tokens, DEFAULT.micro_tokens)},
                indent=2,
            )
        )
        return 0
    if a.attention_only:
        print(json.dumps({"bench": "train", "attention": attention}, indent=2))
        return 0
    encoder, fhw = load_encoder(a.vae)
    pixels = pixel_clips(a.clips, fhw)
    t0 = time.perf_counter()
    latents = [encoder.encode(x[None])[0] for x in pixels]  # the one-off precompute (jobs.encode's work)
    encode_s = time.perf_counter() - t0
    shape = tuple(latents[0].shape)
    patch = (1, 2, 2) if shape[2] % 2 == 0 and shape[3] % 2 == 0 else (1, 1, 1)
    text = synthetic_samples(a.clips, shapes=[shape[1:]], channels=shape[0], seed=0)
    data = [{**s, "latent": z} for s, z in zip(text, latents)]
    cfg = TrainConfig(model=a.model, patch=patch, batch_size=a.batch_size, max_tokens=None, warmup=1)
    base, pre = compare(cfg, data, a.steps, encoder, pixels)
    result = {
        "bench": "train",
        "vae": a.vae,
        "pixel_clip_fhw": list(fhw),
        "latent_shape": list(shape),
        "model": a.model,
        "batch_size": a.batch_size,
        "steps": a.steps,
        "threads": torch.get_num_threads(),
        "steps_per_s_vae_in_step": round(base, 3),
        "steps_per_s_precomputed": round(pre, 3),
        "speedup": round(pre / base, 2),
        "one_off_encode_s_per_clip": round(encode_s / a.clips, 3),
        # row length = a few times the longest sample: with 4096 (1.2x the longest) big samples leave gaps
        "packing": [packing_efficiency((1, 2, 2), max_tokens=m) for m in (4096, 8192)],
        "attention": attention,
        "memory": projected_peak(DEFAULT.step_tokens, DEFAULT.micro_tokens),
        "note": "random-weight models: speeds are meaningful, losses are not",
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train-{a.vae}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
