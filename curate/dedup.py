"""Duplicate clips: exact (same video content and span) and near (cosine of `clip_embedding`).

Exact duplicates share a `clip_id`, because `video_id` hashes the file's bytes: the same
file under two names yields the same ids. They are found from metadata alone, before any
decoding. Near-duplicates are found greedily in keeper-priority order (higher aesthetic,
then lower clip_id, then lower source_uri): a clip is a duplicate when its embedding's
cosine with an already kept clip reaches the threshold, within a video and across the run.
The result depends only on the inputs, never on their order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Duplicate:
    index: int  # row that is a duplicate
    keeper: int  # row it duplicates (kept)
    cosine: float  # 1.0 for exact duplicates


def exact_duplicates(clip_ids: Sequence[str], uris: Sequence[str]) -> list[Duplicate]:
    """Rows whose clip_id repeats; the keeper is the one with the lowest source_uri."""
    first: dict[str, int] = {}
    for i in sorted(range(len(clip_ids)), key=lambda i: (clip_ids[i], uris[i] or "", i)):
        first.setdefault(clip_ids[i], i)
    return [Duplicate(i, first[c], 1.0) for i, c in enumerate(clip_ids) if first[c] != i]


def keeper_order(clip_ids: Sequence[str], uris: Sequence[str], aesthetic: Sequence[float | None]) -> list[int]:
    """Row indices, best keeper first: higher aesthetic, then lower clip_id, then lower uri."""
    def key(i: int) -> tuple[float, str, str]:
        a = aesthetic[i]
        return (-(a if a is not None and np.isfinite(a) else -np.inf), clip_ids[i], uris[i] or "")

    return sorted(range(len(clip_ids)), key=key)


def near_duplicates(
    embeddings: np.ndarray, order: Sequence[int], threshold: float, block: int = 1024
) -> list[Duplicate]:
    """Greedy near-duplicate removal over unit-norm `embeddings` (N, D), visiting rows in `order`.

    A visited row is a duplicate of the most similar kept row when that cosine >= threshold,
    else it is kept. Blocked so memory stays O(block x kept); O(N x kept) work: fine to
    ~10^5 clips, use an ANN index (FAISS) beyond that.
    """
    emb = np.asarray(embeddings, np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # (N, D)
    kept: list[int] = []
    kept_mat = np.zeros((0, emb.shape[1]), np.float32)  # (K, D)
    dups: list[Duplicate] = []
    order = list(order)
    for b in range(0, len(order), block):
        idx = order[b : b + block]
        sims_prev = emb[idx] @ kept_mat.T  # (B, D) @ (D, K) -> (B, K): against earlier blocks
        sims_in = emb[idx] @ emb[idx].T  # (B, B): within the block, resolved in order
        kept_here: list[int] = []  # positions within the block
        for j, row in enumerate(idx):
            best, best_sim = -1, -np.inf
            if sims_prev.shape[1]:
                k = int(np.argmax(sims_prev[j]))
                best, best_sim = kept[k], float(sims_prev[j, k])
            if kept_here:
                here = np.asarray(kept_here)
                k = int(np.argmax(sims_in[j, here]))
                if float(sims_in[j, here[k]]) > best_sim:
                    best, best_sim = idx[here[k]], float(sims_in[j, here[k]])
            if best >= 0 and best_sim >= threshold:
                dups.append(Duplicate(row, best, best_sim))
            else:
                kept_here.append(j)
        new = [idx[j] for j in kept_here]
        kept.extend(new)
        kept_mat = np.concatenate([kept_mat, emb[new]]) if new else kept_mat
    return dups
