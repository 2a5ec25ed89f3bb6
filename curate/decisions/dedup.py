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


def keeper_order(
    clip_ids: Sequence[str], uris: Sequence[str], aesthetic: Sequence[float | None]
) -> list[int]:
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


def near_duplicates_between(
    embeddings: np.ndarray, order: Sequence[int], groups: Sequence[int], threshold: float, block: int = 1024
) -> list[Duplicate]:
    """The greedy rule of `near_duplicates`, comparing only rows of different `groups`.

    For rows already deduplicated within each group (every pair inside a group is known
    not to be a duplicate pair): visiting rows in `order`, a row is a duplicate of the most
    similar row of another group kept before it when that cosine >= threshold (ties: the
    earlier keeper). With every row in its own group this is `near_duplicates`. Only the
    rows outside the largest group are compared with all rows, and only the pairs above the
    threshold are held: O(N x (N - largest group) x D) work, O(block x N + pairs) memory.
    """
    emb = np.asarray(embeddings, np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)  # (N, D)
    n = len(emb)
    if not n:
        return []
    rank = np.empty(n, np.int64)
    rank[np.asarray(list(order), np.int64)] = np.arange(n)
    grp = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    big = int(np.argmax(np.bincount(grp)))  # its pairs are all within-group: never compared
    outside = np.flatnonzero(grp != big)
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for b in range(0, len(outside), block):
        ii = outside[b : b + block]
        s = emb[ii] @ emb.T  # (B, D) @ (D, N) -> (B, N)
        i, j = np.nonzero(s >= threshold)
        a = ii[i]
        ok = (grp[a] != grp[j]) & ((grp[j] == big) | (a < j))  # another group; a pair of outside rows once
        pairs.append((a[ok], j[ok], s[i[ok], j[ok]]))
    a, j, sim = (np.concatenate(x) for x in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 3
    later = rank[a] > rank[j]
    row, keeper = np.where(later, a, j), np.where(later, j, a)  # each pair: (visited later, earlier)
    # visit each row's candidates in row order, most similar first, then the earlier keeper
    by = np.lexsort((rank[keeper], -sim, rank[row]))
    kept = np.ones(n, bool)
    dups: list[Duplicate] = []
    for e in by:
        r, k = int(row[e]), int(keeper[e])
        if kept[r] and kept[k]:  # k's fate is final: it comes earlier in the order
            kept[r] = False
            dups.append(Duplicate(r, k, float(sim[e])))
    return sorted(dups, key=lambda d: rank[d.index])
