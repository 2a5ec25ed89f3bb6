"""Attention over packed rows whose cost follows the samples, not the row length.

A packed row holds several samples (documents); a token may only attend to its own sample.
A dense boolean mask over the row still computes every N x N score, so at long rows packing
would do more attention work than padding. Here attention runs per sample:

- `varlen` (default, CPU and GPU): samples of equal token count are gathered into one batch
  (G, h, k, hd) and attended with `scaled_dot_product_attention` without a mask (cross-attention
  pads the text of a group to its longest caption and masks only that). With bucketed latents
  there are few distinct lengths, so a step makes few calls and the work is sum_i k_i^2.
- `flex`: FlexAttention with a document block mask (Dong et al. 2024, "Flex Attention"; the
  "document masking" example of pytorch-labs/attention-gym): blocks of 128 x 128 that are
  fully masked are skipped. Compiled on CUDA; eager elsewhere (eager materialises the scores
  and has no backward on CPU: for checking only). Opt in with `DiT.attention = "flex"`.
- `dense`: the boolean (R, N, N) mask; the fallback and the reference in tests.

Every backend gives the same result for real tokens; padding tokens' outputs are undefined
(they are never read).
"""

from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Backend = Literal["varlen", "flex", "dense"]
BACKENDS: tuple[str, ...] = ("varlen", "flex", "dense")


@dataclass
class _Group:
    q_index: torch.Tensor  # (G, k) positions in the flattened (R*N) query axis
    kv_index: torch.Tensor  # (G, L) positions in the flattened key axis
    kv_mask: torch.Tensor | None  # (G, 1, 1, L) bool, None when every key is valid


class DocAttention:
    """Per-sample attention for one packed batch: built once per forward, used by every block.

    `q_places` / `kv_places`: per sample (row, start, length) of its queries and its keys in
    their packed rows (the same list for self-attention). A sample with no keys gets zeros.
    """

    def __init__(
        self,
        backend: Backend,
        q_places: list[tuple[int, int, int]],
        kv_places: list[tuple[int, int, int]],
        q_seg: torch.Tensor,
        kv_seg: torch.Tensor,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}: got {backend!r}")
        self.backend = backend
        self.n, self.m = q_seg.shape[1], kv_seg.shape[1]
        device = q_seg.device
        if backend == "varlen":
            self.groups = _groups(q_places, kv_places, self.n, self.m, device)
        elif backend == "dense":
            # padding queries attend to padding keys (never NaN; their outputs are discarded), and a
            # query with no key at all (a sample without text) is opened and zeroed by the caller.
            allowed = q_seg[:, :, None] == kv_seg[:, None, :]  # (R, N, M)
            self.mask = (allowed | ~allowed.any(-1, keepdim=True)).unsqueeze(1)  # -> (R, 1, N, M)
        else:
            from torch.nn.attention.flex_attention import create_block_mask

            def document(b, h, q, kv):
                return q_seg[b, q] == kv_seg[b, kv]

            # _compile on CUDA: the eager builder evaluates the mask at every (q, kv) pair of every row
            self.block_mask = create_block_mask(
                document, q_seg.shape[0], None, self.n, self.m, device=device, _compile=device.type == "cuda"
            )

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (R, h, N, hd), k / v (R, h, M, hd) -> (R, h, N, hd)."""
        if self.backend == "dense":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        if self.backend == "flex":
            return _flex(q, k, v, self.block_mask)
        r, h, n, hd = q.shape
        qf = q.transpose(1, 2).reshape(r * n, h, hd)  # (R, h, N, hd) -> (R*N, h, hd)
        kf = k.transpose(1, 2).reshape(-1, h, hd)  # (R, h, M, hd) -> (R*M, h, hd)
        vf = v.transpose(1, 2).reshape(-1, h, hd)
        out = None
        for g in self.groups:
            qg = qf[g.q_index].transpose(1, 2)  # (G, k, h, hd) -> (G, h, k, hd)
            kg, vg = kf[g.kv_index].transpose(1, 2), vf[g.kv_index].transpose(1, 2)  # (G, h, L, hd)
            og = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=g.kv_mask)
            if out is None:  # SDPA's dtype (autocast may lower it)
                out = og.new_zeros((r * n, h, hd))
            out = out.index_copy(
                0, g.q_index.flatten(), og.transpose(1, 2).reshape(-1, h, hd)
            )  # (G*k, h, hd)
        if out is None:  # no sample has keys (e.g. every caption of the batch dropped)
            # important: keep q/k/v in the graph (zero gradient), as the dense mask does; DDP needs
            # every worker to produce a gradient for every parameter, or its all-reduce breaks.
            out = qf * 0 + (kf.sum() + vf.sum()) * 0
        return out.view(r, n, h, hd).transpose(1, 2)  # (R*N, h, hd) -> (R, h, N, hd)


def _groups(
    q_places: list[tuple[int, int, int]],
    kv_places: list[tuple[int, int, int]],
    n: int,
    m: int,
    device: torch.device,
) -> list[_Group]:
    """Samples grouped by query length; keys padded to the group's longest (masked) where they differ."""
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, (_, _, k) in enumerate(q_places):
        if k and kv_places[i][2]:  # no queries or no keys: nothing to attend (output stays zero)
            by_len[k].append(i)
    groups = []
    for k, members in sorted(by_len.items()):
        q_index = torch.stack([r * n + s + torch.arange(k) for r, s, _ in (q_places[i] for i in members)])
        lens = [kv_places[i][2] for i in members]
        width = max(lens)
        ar = torch.arange(width)
        kv_index = torch.stack(
            [r * m + s + ar.clamp(max=ln - 1) for r, s, ln in (kv_places[i] for i in members)]
        )
        mask = None
        if min(lens) != width:
            mask = (ar[None] < torch.tensor(lens)[:, None])[:, None, None, :]  # (G, L) -> (G, 1, 1, L)
            mask = mask.to(device)
        groups.append(_Group(q_index.to(device), kv_index.to(device), mask))
    return groups


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    """FlexAttention: compiled once on CUDA (a fused kernel that skips masked blocks), eager elsewhere."""
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cuda":
        return _compiled_flex()(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():  # eager off CUDA is deliberate (a reference), not a mistake to warn about
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(q, k, v, block_mask=block_mask)


def attention_flops(q_lengths: list[int], kv_lengths: list[int], head_dim_total: int) -> float:
    """Multiply-adds x2 of QK^T and PV for the given (query, key) lengths: 4 * sum q*kv * D."""
    return float(sum(4 * a * b * head_dim_total for a, b in zip(q_lengths, kv_lengths)))
