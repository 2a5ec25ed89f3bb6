"""Patch n' Pack: spacetime tubelets of variable-size latents packed into fixed-length rows.

Each latent [C, T, H, W] becomes (T/p_t)*(H/p_h)*(W/p_w) tokens of C*p_t*p_h*p_w values plus
integer (t, y, x) grid positions (for 3D RoPE). Several samples share one row; a segment id per
token says which sample it belongs to, and the model masks attention with it so that no token
ever attends across samples. Each sample's valid text tokens are packed into the same row with
the same segment ids, so cross-attention stays per sample too.

Reference: Dehghani et al. 2023, "Patch n' Pack: NaViT, a Vision Transformer for any Aspect
Ratio and Resolution"; Brooks et al. 2024 (Sora report), spacetime patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Patch = tuple[int, int, int]


def check_divisible(shape: tuple[int, ...], patch: Patch) -> None:
    """Latent T, H, W must be multiples of the tubelet size."""
    _, t, h, w = shape
    if t % patch[0] or h % patch[1] or w % patch[2]:
        raise ValueError(
            f"latent (T, H, W) must be divisible by the tubelet patch (p_t, p_h, p_w): "
            f"got latent {tuple(shape)} with patch {tuple(patch)}; pick a bucket size that is a "
            f"multiple of the patch, or a smaller patch in DiTConfig"
        )


def num_tokens(shape: tuple[int, ...], patch: Patch) -> int:
    _, t, h, w = shape
    return (t // patch[0]) * (h // patch[1]) * (w // patch[2])


def patchify(latent: torch.Tensor, patch: Patch) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, T, H, W] -> tokens [N, C*pt*ph*pw] and positions [N, 3] (t, y, x grid indices)."""
    check_divisible(tuple(latent.shape), patch)
    c, t, h, w = latent.shape
    pt, ph, pw = patch
    gt, gh, gw = t // pt, h // ph, w // pw
    # (C, T, H, W) -> (C, gt, pt, gh, ph, gw, pw) -> (gt, gh, gw, C, pt, ph, pw) -> (N, C*pt*ph*pw)
    x = latent.reshape(c, gt, pt, gh, ph, gw, pw).permute(1, 3, 5, 0, 2, 4, 6)
    tokens = x.reshape(gt * gh * gw, c * pt * ph * pw)
    pos = torch.stack(
        torch.meshgrid(torch.arange(gt), torch.arange(gh), torch.arange(gw), indexing="ij"), dim=-1
    ).reshape(-1, 3)  # (gt, gh, gw, 3) -> (N, 3)
    return tokens, pos.to(latent.device)


def unpatchify(tokens: torch.Tensor, shape: tuple[int, ...], patch: Patch) -> torch.Tensor:
    """tokens [N, C*pt*ph*pw] -> latent [C, T, H, W] (inverse of `patchify`)."""
    c, t, h, w = shape
    pt, ph, pw = patch
    gt, gh, gw = t // pt, h // ph, w // pw
    # (N, C*pt*ph*pw) -> (gt, gh, gw, C, pt, ph, pw) -> (C, gt, pt, gh, ph, gw, pw) -> (C, T, H, W)
    x = tokens.reshape(gt, gh, gw, c, pt, ph, pw).permute(3, 0, 4, 1, 5, 2, 6)
    return x.reshape(c, t, h, w)


@dataclass
class Packed:
    """A batch of samples packed into rows. Segment id -1 marks padding."""

    tokens: torch.Tensor  # (R, N, C*pt*ph*pw)
    pos: torch.Tensor  # (R, N, 3) long
    seg: torch.Tensor  # (R, N) long, sample index in the batch or -1
    text: torch.Tensor  # (R, M, D) valid text tokens of the row's samples
    text_seg: torch.Tensor  # (R, M) long, sample index or -1
    places: list[tuple[int, int, int]]  # per sample: (row, start, length)
    shapes: list[tuple[int, int, int, int]]  # per sample latent [C, T, H, W]
    text_places: list[tuple[int, int, int]]  # per sample: (row, start, length) of its valid text tokens

    @property
    def num_samples(self) -> int:
        return len(self.shapes)

    @property
    def efficiency(self) -> float:
        """Real tokens / all token slots (1.0 = no padding waste)."""
        return float((self.seg >= 0).sum()) / max(1, self.seg.numel())

    def to(self, device: torch.device | str) -> Packed:
        return Packed(
            self.tokens.to(device),
            self.pos.to(device),
            self.seg.to(device),
            self.text.to(device),
            self.text_seg.to(device),
            self.places,
            self.shapes,
            self.text_places,
        )

    def gather_rows(self, values: torch.Tensor) -> torch.Tensor:
        """Per-sample values [S, ...] -> per-token [R, N, ...] (padding gets sample 0's, masked later)."""
        return values[self.seg.clamp(min=0)]


def plan_rows(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """First-fit decreasing bin packing of sample lengths into rows of `max_tokens` slots."""
    if lengths and max(lengths) > max_tokens:
        raise ValueError(
            f"a sample has more tokens than a packed row holds: longest sample {max(lengths)} tokens, "
            f"max_tokens={max_tokens}; raise max_tokens (or use a larger patch / smaller bucket)"
        )
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(max_tokens - lengths[i])
    return rows


def pack(
    latents: list[torch.Tensor],
    texts: list[torch.Tensor],
    text_masks: list[torch.Tensor],
    patch: Patch,
    max_tokens: int | None = None,
) -> Packed:
    """Pack latents [C, T, H, W] with their text [L, D] / mask [L] into rows.

    `max_tokens=None` gives one sample per row padded to the longest (the padding baseline);
    with a number, samples are bin-packed and rows are cut to the longest row's length.
    """
    pieces = [patchify(x, patch) for x in latents]
    lengths = [p[0].shape[0] for p in pieces]
    rows = [[i] for i in range(len(latents))] if max_tokens is None else plan_rows(lengths, max_tokens)
    n = max(sum(lengths[i] for i in row) for row in rows)
    # important: only valid text tokens are packed, so a dropped caption (all-False mask) has none.
    valid_text = [t[m.bool()] for t, m in zip(texts, text_masks)]
    m = max(1, max(sum(valid_text[i].shape[0] for i in row) for row in rows))
    dim, dt = pieces[0][0].shape[1], texts[0].shape[-1]
    device, dtype = latents[0].device, latents[0].dtype
    tokens = torch.zeros(len(rows), n, dim, device=device, dtype=dtype)
    pos = torch.zeros(len(rows), n, 3, device=device, dtype=torch.long)
    seg = torch.full((len(rows), n), -1, device=device, dtype=torch.long)
    text = torch.zeros(len(rows), m, dt, device=device, dtype=texts[0].dtype)
    text_seg = torch.full((len(rows), m), -1, device=device, dtype=torch.long)
    places: list[tuple[int, int, int]] = [(0, 0, 0)] * len(latents)
    text_places: list[tuple[int, int, int]] = [(0, 0, 0)] * len(latents)
    for r, row in enumerate(rows):
        at, at_text = 0, 0
        for i in sorted(row):  # sorted: a sample's place does not depend on packing order quirks
            k = lengths[i]
            tokens[r, at : at + k], pos[r, at : at + k] = pieces[i]
            seg[r, at : at + k] = i
            places[i] = (r, at, k)
            at += k
            j = valid_text[i].shape[0]
            text[r, at_text : at_text + j] = valid_text[i]
            text_seg[r, at_text : at_text + j] = i
            text_places[i] = (r, at_text, j)
            at_text += j
    return Packed(tokens, pos, seg, text, text_seg, places, [tuple(x.shape) for x in latents], text_places)


def unpack(packed: Packed, tokens: torch.Tensor, patch: Patch) -> list[torch.Tensor]:
    """Per-token outputs [R, N, C*pt*ph*pw] -> list of latents [C, T, H, W], one per sample."""
    return [
        unpatchify(tokens[r, at : at + k], shape, patch)
        for (r, at, k), shape in zip(packed.places, packed.shapes)
    ]


def padding_efficiency(lengths: list[int]) -> float:
    """Token efficiency of padding every sample to the longest one (the baseline packing beats)."""
    return sum(lengths) / max(1, len(lengths) * max(lengths))
