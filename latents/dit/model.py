"""A DiT over spacetime latent tubelets, text-conditioned, for packed variable-size batches.

Per block: adaLN-Zero modulated self-attention (3D RoPE, per packed sample: `attention.py`),
cross-attention to the sample's own text tokens (keys/values from text, as in LDM/PixArt-α),
adaLN-Zero modulated MLP. The conditioning vector is timestep embedding + pooled text; each
block's modulation (shift, scale, gate) is computed once per sample (S, 6D) and broadcast to
that sample's tokens, as in DiT (one conditioning vector per image), not a D -> 6D matmul per token.
A final adaLN layer maps tokens back to tubelet values (unpatchified by `packing.unpack`).

Positions: RoPE (relative) in self-attention, plus a fixed factorised sin-cos absolute embedding
of each token's *fractional* position (t, y, x) in its own sample's grid, added to the tubelet
embedding. RoPE alone is translation-equivariant: it cannot tell where in the frame a token
is, and a model with RoPE only learns "which colour" but not "which track" of a moving square
(the learning test in tests/test_dit_learning.py). Fractional positions ((i + 0.5) / grid, scaled
to a reference grid of `POS_SCALE`) make the embedding resolution- and duration-agnostic:
any latent size maps onto the same range, so no table is interpolated.

References: Peebles & Xie 2023, "Scalable Diffusion Models with Transformers" (facebookresearch/DiT
models.py: adaLN-Zero, TimestepEmbedder, FinalLayer, get_2d_sincos_pos_embed); Dehghani et al.
2023, "Patch n' Pack: NaViT" (fractional positional embeddings); Chen et al. 2023, PixArt-α
(sin-cos positions scaled to a base grid size); Rombach et al. 2022 (LDM cross-attention);
Su et al. 2021 (RoPE), factorised per axis as in Lumina/Open-Sora for (t, y, x).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from latents.dit.attention import Backend, DocAttention
from latents.dit.packing import Packed, pack, unpack

# Test-only switches that remove one mechanism, to show the learning test fails without it
# (tests/test_dit_learning.py): "pos_embed" (no absolute position embedding), "leak" (attention
# across the samples packed into a row), "timestep" (the model sees t = 0), "text" (no text at all).
# Each makes it fail: "timestep" on its timestep-use check (sampling alone still composes: on its zero
# background the input shows its own noise level).
Ablation = Literal["pos_embed", "leak", "timestep", "text"]
ABLATIONS: tuple[str, ...] = ("pos_embed", "leak", "timestep", "text")
# fractional positions in [0, 1) are scaled to this reference grid before the sin-cos embedding
POS_SCALE = 32.0


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 4  # latent channels C
    text_dim: int = 16  # text embedding width D
    patch: tuple[int, int, int] = (1, 2, 2)  # tubelet (p_t, p_h, p_w)
    hidden: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    rope_theta: float = 10000.0
    pooled_text: bool = True  # add pooled text to the adaLN conditioning
    # micro-conditioning on the sample's size: its tubelet grid (frames, height, width), i.e. duration
    # and resolution, added to the adaLN conditioning (as PixArt-α's size / Open-Sora's hw + frames
    # embedders). RoPE is relative, so without it the model cannot tell a crop from a whole clip.
    size_cond: bool = False
    # fixed sin-cos embedding of each token's fractional (t, y, x) added to the tubelet embedding
    pos_embed: bool = True
    ablate: tuple[Ablation, ...] = ()  # test-only (see ABLATIONS); empty in every real run

    def __post_init__(self) -> None:
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ValueError(
                f"hidden must split into heads of even width: hidden={self.hidden}, heads={self.heads}; "
                f"choose hidden = heads * an even number"
            )
        bad = [a for a in self.ablate if a not in ABLATIONS]
        if bad:
            raise ValueError(
                f"ablate must name parts of {ABLATIONS}: got {bad}; leave it empty outside tests"
            )

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch[0] * self.patch[1] * self.patch[2]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        # a run saved before the position embedding existed was trained without it: keep it off
        return cls(
            **{"pos_embed": False, **d, "patch": tuple(d["patch"]), "ablate": tuple(d.get("ablate", ()))}
        )

    def sized(self, in_channels: int, text_dim: int) -> DiTConfig:
        """The same architecture for a given latent channel count and text width."""
        return DiTConfig.from_dict({**self.to_dict(), "in_channels": in_channels, "text_dim": text_dim})


# Named sizes (DiT-S/B/L widths and depths); in_channels/text_dim are set from the data via `sized`.
PRESETS: dict[str, DiTConfig] = {
    "tiny": DiTConfig(hidden=64, depth=2, heads=4),
    "S": DiTConfig(hidden=384, depth=12, heads=6),
    "B": DiTConfig(hidden=768, depth=12, heads=12),
    "L": DiTConfig(hidden=1024, depth=24, heads=16),
}


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split a head's width over (t, y, x); each part even. y and x get 3/8 each, t the rest."""
    hw = 2 * ((head_dim * 3 // 8) // 2)
    return head_dim - 2 * hw, hw, hw


def rope_angles(pos: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer positions (R, N, 3) -> cos, sin (R, 1, N, head_dim/2) for factorised 3D RoPE."""
    parts = []
    for axis, d in enumerate(rope_axes(head_dim)):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, device=pos.device, dtype=torch.float32) / d)
        parts.append(pos[..., axis, None].float() * freqs)  # (R, N, d/2)
    ang = torch.cat(parts, dim=-1).unsqueeze(1)  # (R, N, hd/2) -> (R, 1, N, hd/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (R, h, N, hd) by the angles."""
    x1, x2 = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (R, h, N, hd/2, 2)
    return out.flatten(-2).to(x.dtype)  # (R, h, N, hd/2, 2) -> (R, h, N, hd)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of float timesteps (S,) in [0, 1000) -> (S, dim) (as in DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def fractional_pos_embedding(pos: torch.Tensor, grid: torch.Tensor, dim: int) -> torch.Tensor:
    """Integer positions (..., 3) in grids (..., 3) of (t, y, x) -> fixed sin-cos embedding (..., dim).

    Each axis gets its part of `dim` (split as `rope_axes`: y and x 3/8 each, t the rest), half
    cos, half sin of the fractional position (i + 0.5) / grid * POS_SCALE at DiT's frequencies.
    """
    parts = []
    for axis, d in enumerate(rope_axes(dim)):
        frac = (
            (pos[..., axis].float() + 0.5) / grid[..., axis].float() * POS_SCALE
        )  # (...,) in (0, POS_SCALE)
        # max_period 100: over positions in (0, 32) the slowest wave still turns ~0.3 rad
        parts.append(
            timestep_embedding(frac.reshape(-1), d, 100.0).view(*frac.shape, d)
        )  # (...,) -> (..., d)
    return torch.cat(parts, dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention; self (with RoPE) or cross (keys/values from `ctx`), per packed sample."""

    def __init__(self, dim: int, heads: int, ctx_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(ctx_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        hd = dim // heads
        # qk-norm keeps attention logits bounded under bf16 (as in SD3 / Lumina).
        self.q_norm, self.k_norm = nn.RMSNorm(hd, eps=1e-6), nn.RMSNorm(hd, eps=1e-6)

    def forward(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor,
        attend: DocAttention,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        r, n, d = x.shape
        h = self.heads
        q = self.q(x).view(r, n, h, d // h).transpose(1, 2)  # (R, N, D) -> (R, h, N, hd)
        k, v = self.kv(ctx).view(r, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)  # -> 2 x (R, h, M, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attend(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(r, n, d))  # (R, h, N, hd) -> (R, N, D)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, cfg.heads)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.cross = Attention(d, cfg.heads, ctx_dim=cfg.text_dim)
        self.norm3 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, ctx: Context) -> torch.Tensor:
        """x (R, N, D); mod (R, N, 6D): this block's adaLN output for each token's sample."""
        sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, dim=-1)  # (R, N, D) each
        h = modulate(self.norm1(x), sh1, sc1)
        x = x + g1 * self.attn(h, h, ctx.self_attend, ctx.rope)
        # a token whose sample has no text (dropped caption) gets no cross-attention update.
        x = x + self.cross(self.norm2(x), ctx.text, ctx.cross_attend) * ctx.has_text
        return x + g2 * self.mlp(modulate(self.norm3(x), sh2, sc2))


@dataclass
class Context:
    """What every block of one forward shares: per-sample conditioning and the attention plans."""

    x: torch.Tensor  # (R, N, D) embedded tokens (tubelet + position embedding)
    c: torch.Tensor  # (S, D) per-sample conditioning (timestep + pooled text [+ size])
    text: torch.Tensor  # (R, M, text_dim)
    has_text: torch.Tensor  # (R, N, 1) 1.0 where the token's sample has text
    self_attend: DocAttention
    cross_attend: DocAttention
    rope: tuple[torch.Tensor, torch.Tensor]
    packed: Packed

    def per_token(self, per_sample: torch.Tensor) -> torch.Tensor:
        """(S, K) -> (R, N, K): each token gets its sample's row (an index, no matmul per token)."""
        return self.packed.gather_rows(per_sample)


class DiT(nn.Module):
    # How attention is split per packed sample (attention.py); not part of the weights or config.
    attention: Backend = "varlen"
    # Recompute each block in backward instead of keeping its activations (the trainer sets it).
    checkpointing: bool = False

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.x_embed = nn.Linear(cfg.patch_dim, d)  # tubelet embedding (a linear map of p_t*p_h*p_w*C values)
        self.t_embed = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.text_pool = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.size_cond:
            self.size_embed = nn.Sequential(nn.Linear(3 * 256, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.final = nn.Linear(d, cfg.patch_dim)
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity, and the output starts at zero.
        for blk in self.blocks:
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
            nn.init.zeros_(blk.cross.proj.weight)  # cross-attention also starts as a no-op
        for layer in (self.final_ada[-1], self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.cfg.size_cond:  # starts as a no-op: training decides how much the size matters
            nn.init.zeros_(self.size_embed[-1].weight)

    def forward(self, packed: Packed, t: torch.Tensor) -> torch.Tensor:
        """Packed tokens and per-sample timesteps t (S,) in [0, 1000) -> per-token prediction
        (R, N, patch_dim)."""
        ctx = self.context(packed, t)
        x = ctx.x
        for blk in self.blocks:
            # adaLN per sample: (S, D) -> (S, 6D), broadcast to the sample's tokens (R, N, 6D)
            if self.checkpointing and torch.is_grad_enabled():  # keeps x per block, recomputes the rest
                x = checkpoint(
                    lambda x, c, blk=blk: blk(x, ctx.per_token(blk.ada(c)), ctx),
                    x,
                    ctx.c,
                    use_reentrant=False,
                )
            else:
                x = blk(x, ctx.per_token(blk.ada(ctx.c)), ctx)
        shift, scale = ctx.per_token(self.final_ada(ctx.c)).chunk(2, dim=-1)  # (R, N, D) each
        return self.final(modulate(self.final_norm(x), shift, scale))

    def context(self, packed: Packed, t: torch.Tensor) -> Context:
        """Embeddings, per-sample conditioning and attention plans of one packed batch."""
        ablate = self.cfg.ablate
        s = packed.num_samples
        if "timestep" in ablate:
            t = torch.zeros_like(t)
        c = self.t_embed(timestep_embedding(t, 256).to(self.x_embed.weight.dtype))  # (S, D)
        if self.cfg.size_cond:
            c = c + self.size_embed(self.size_features(packed.shapes, t.device))
        valid = packed.text_seg >= 0  # (R, M)
        if "text" in ablate:
            valid = torch.zeros_like(valid)
        owner = packed.text_seg.clamp(min=0)
        counts = torch.zeros(s, device=t.device).index_add_(
            0, owner[valid], torch.ones_like(owner[valid], dtype=torch.float)
        )
        if self.cfg.pooled_text:
            sums = torch.zeros(s, packed.text.shape[-1], device=t.device, dtype=packed.text.dtype)
            sums.index_add_(0, owner[valid], packed.text[valid])
            c = c + self.text_pool(sums / counts.clamp(min=1)[:, None]) * (counts > 0)[:, None]
        seg = packed.seg
        if "leak" in ablate:  # every real token of a row attends to the whole row and all its text
            leak = lambda ids: torch.where(ids >= 0, 0, -1)  # noqa: E731
            self_attend = DocAttention("dense", packed.places, packed.places, leak(seg), leak(seg))
            cross_attend = DocAttention(
                "dense", packed.places, packed.text_places, leak(seg), leak(packed.text_seg)
            )
        else:
            # attention never crosses samples: self over the sample's tokens, cross over its own text
            self_attend = DocAttention(self.attention, packed.places, packed.places, seg, seg)
            cross_attend = DocAttention(
                self.attention, packed.places, packed.text_places, seg, packed.text_seg
            )
        # important: a token of a sample without text (or padding) takes no cross-attention update.
        has_text = (
            (packed.gather_rows(counts > 0) & (seg >= 0)).unsqueeze(-1).to(c.dtype)
        )  # (R, N) -> (R, N, 1)
        rope = rope_angles(packed.pos, self.cfg.hidden // self.cfg.heads, self.cfg.rope_theta)
        x = self.x_embed(packed.tokens)
        if self.cfg.pos_embed and "pos_embed" not in ablate:
            x = x + self.pos_features(packed).to(x.dtype)
        return Context(x, c, packed.text.to(x.dtype), has_text, self_attend, cross_attend, rope, packed)

    def pos_features(self, packed: Packed) -> torch.Tensor:
        """Fixed fractional (t, y, x) sin-cos embedding of every packed token in its own sample's grid:
        (R, N, D)."""
        p = self.cfg.patch
        grids = torch.tensor(
            [[sh[1] // p[0], sh[2] // p[1], sh[3] // p[2]] for sh in packed.shapes], device=packed.pos.device
        )  # (S, 3) tubelet grid per sample
        return fractional_pos_embedding(packed.pos, packed.gather_rows(grids), self.cfg.hidden)

    def size_features(self, shapes: list[tuple[int, int, int, int]], device: torch.device) -> torch.Tensor:
        """Per sample latent [C, T, H, W] -> sinusoidal embeddings of its tubelet grid (gt, gh, gw):
        (S, 768)."""
        p = self.cfg.patch
        grid = torch.tensor(
            [[s[1] // p[0], s[2] // p[1], s[3] // p[2]] for s in shapes], device=device
        )  # (S, 3)
        # (S, 3) -> 3 x (S, 256) -> (S, 768); max_period 1000: grids are at most a few hundred wide
        return torch.cat([timestep_embedding(grid[:, i], 256, 1000.0) for i in range(3)], dim=-1).to(
            self.x_embed.weight.dtype
        )

    def forward_latents(
        self,
        latents: list[torch.Tensor] | torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        max_tokens: int | None = None,
    ) -> list[torch.Tensor]:
        """Convenience: latents [C, T, H, W] each, t (S,), text (S, L, D), mask (S, L) -> predictions
        like latents."""
        p = self.cfg.patch
        packed = pack(list(latents), list(text), list(text_mask), p, max_tokens)
        return unpack(packed, self(packed, t), p)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
