"""Synthetic samples in the dataset contract, for tests, benchmarks and trying the trainer.

A sample is {"clip_id": str, "caption": str, "latent": float32 [C, T, H, W] (normalised),
"text_embedding": float32 [L, D], "text_mask": bool [L]}, as `latents.dataset` yields.
Random content: nothing trained on it means anything.
"""

from __future__ import annotations

import torch


def synthetic_samples(
    n: int,
    shapes: list[tuple[int, int, int]] | None = None,
    channels: int = 4,
    text_len: int = 6,
    text_dim: int = 16,
    seed: int = 0,
) -> list[dict]:
    """n samples cycling through latent (T, H, W) `shapes`; distinct random captions and latents."""
    g = torch.Generator().manual_seed(seed)
    shapes = shapes or [(2, 4, 4)]
    out = []
    for i in range(n):
        t, h, w = shapes[i % len(shapes)]
        length = 2 + i % (text_len - 1)  # captions of different token counts exercise the mask
        mask = torch.arange(text_len) < length
        emb = torch.randn(text_len, text_dim, generator=g) * mask[:, None]
        out.append({
            "clip_id": f"synthetic-{seed}-{i}",
            "caption": f"synthetic caption {i} (random)",
            "latent": torch.randn(channels, t, h, w, generator=g),
            "text_embedding": emb,
            "text_mask": mask,
        })
    return out
