"""Bench: DiT training from precomputed latents vs encoding with the VAE inside each step.

    python -m jobs.bench train [--vae smoke|smoke-ltx|ltx-full-random] [--steps N] [--out bench-out]

Same process, same clips, same model, same batches: the baseline runs the VAE encoder on the
batch's pixels in every step (as facebookresearch/DiT's train.py does); the precomputed run
trains on the latents encoded once beforehand (what jobs.train does with the shards). Reports
median steps/s of both (their steps interleaved) and their ratio, the one-off encoding cost, and the token efficiency of
Patch n' Pack against padding every sample to the longest, on mixed bucket shapes.
Text embeddings are precomputed in both runs (they are not what is measured).
`ltx-full-random` is the full-size LTX-Video VAE architecture with random weights (same
compute as the real one, no download).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from latents.dit.packing import num_tokens, pack, padding_efficiency
from latents.dit.synthetic import synthetic_samples
from latents.dit.train import TrainConfig, batch_loss, batch_positions, lr_at

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
    from curate.synth import pattern_frame

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
        idx = batch_positions(self.cfg.seed, step, self.cfg.batch_size, len(self.data))
        batch = [self.data[i] for i in idx]
        if self.encoder is not None:  # the baseline: pixels -> VAE -> latents inside the step
            z = self.encoder.encode(torch.stack([self.pixels[i] for i in idx]))  # (B, 3, F, H, W) -> (B, C, T, h, w)
            batch = [{**s, "latent": z[k]} for k, s in enumerate(batch)]
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.cfg, step)
        loss, _ = batch_loss(self.model, batch, list(range(len(batch))), self.cfg, step, torch.device("cpu"))
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
    return {"samples": n, "patch": list(patch), "max_tokens": max_tokens, "rows": packed.tokens.shape[0],
            "packed_efficiency": round(packed.efficiency, 4), "padded_efficiency": round(padding_efficiency(lengths), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench train", description=__doc__.split("\n")[0])
    p.add_argument("--vae", choices=["smoke", "smoke-ltx", "ltx-full-random"], default="smoke")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--model", default="tiny", choices=["tiny", "S", "B", "L"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--out", default="bench-out")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
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
        "bench": "train", "vae": a.vae, "pixel_clip_fhw": list(fhw), "latent_shape": list(shape),
        "model": a.model, "batch_size": a.batch_size, "steps": a.steps, "threads": torch.get_num_threads(),
        "steps_per_s_vae_in_step": round(base, 3), "steps_per_s_precomputed": round(pre, 3),
        "speedup": round(pre / base, 2), "one_off_encode_s_per_clip": round(encode_s / a.clips, 3),
        # row length = a few times the longest sample: with 4096 (1.2x the longest) big samples leave gaps
        "packing": [packing_efficiency((1, 2, 2), max_tokens=m) for m in (4096, 8192)],
        "note": "random-weight models: speeds are meaningful, losses are not",
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train-{a.vae}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
