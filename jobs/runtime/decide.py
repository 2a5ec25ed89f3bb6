"""Run-level decisions as Ray tasks (`curate/decisions/decide.py` holds the steps): the one code path
that `jobs.score`, `jobs.curate` and `jobs.filter` decide with.

Workers read the scored parts, keep each part's decision state (no embeddings, ~150 B per
clip) in the object store, shuffle rows by clip_id (exact duplicates) and by k-means cluster
(near duplicates) between tasks, and write the decided parts. The driver holds object refs,
per-part counts, a sample of one score column and the rows around a percentile cut-off:
O(parts + sample), never O(clips).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

from curate.decisions import decide as D
from curate.decisions import filters
from curate.decisions.filters import EXACT_DUP, NEAR_DUP, FilterConfig

PCT_SAMPLE = 50_000  # keys sampled to bracket a percentile cut-off (the cut itself is exact)


@dataclass(frozen=True)
class Written:
    path: str
    rows: int
    kept: int


def _refs(x: Any, n: int) -> list:
    return list(x) if n > 1 else [x]


@ray.remote(num_returns=2)
def _read_state(path: str, part: int, cfg: FilterConfig):
    s = D.read_state(path, part, cfg)
    return s, (s.num_rows, D.alive_count(s))


@ray.remote(num_returns=2)
def _absolute(state, rule):
    s = D.apply_absolute(state, rule)
    return s, D.alive_count(s)


@ray.remote
def _exact_keys(state, buckets: int):
    out = D.exact_keys(state, buckets)
    return tuple(out) if buckets > 1 else out[0]


@ray.remote
def _exact_decide(parts: int, *tables):
    out = D.exact_decide(list(tables), parts)
    return tuple(out) if parts > 1 else out[0]


@ray.remote(num_returns=2)
def _apply_dups(state, kind: str, threshold, *dups):
    s = D.apply_duplicates(state, list(dups), kind, threshold)
    return s, D.alive_count(s)


@ray.remote
def _sample_keys(state, rule, rows: int, seed: int):
    return D.sample_keys(state, rule, rows, seed)


@ray.remote
def _bracket(state, rule, lo: float, hi: float):
    return D.bracket(state, rule, lo, hi)


@ray.remote(num_returns=2)
def _apply_share(state, rule, cut):
    s = D.apply_share(state, rule, cut)
    return s, D.alive_count(s)


@ray.remote
def _alive(state):
    return D.alive_count(state)


@ray.remote
def _sample_embeddings(path: str, state, share: float, seed: int):
    return D.sample_embeddings(path, state, share, seed)


@ray.remote
def _train(k: int, cfg: D.NearDupConfig, *samples):
    return D.train_centroids(list(samples), k, cfg)


@ray.remote
def _near_keys(path: str, state, centroids, buckets: int, threshold: float, border_margin: float | None):
    out = D.near_keys(path, state, centroids, buckets, threshold, border_margin)
    return tuple(out) if buckets > 1 else out[0]


@ray.remote
def _near_decide(parts: int, threshold: float, border_buckets: int, *tables):
    """Returns parts duplicate tables, then (with a border pass) the kept rows and the guests
    for each border bucket."""
    dups, home, guests = D.near_decide(list(tables), parts, threshold, border_buckets)
    out = (*dups, home, *guests) if border_buckets else tuple(dups)
    return out if len(out) > 1 else out[0]


@ray.remote
def _border_decide(parts: int, threshold: float, home, *guests):
    out = D.border_decide(home, list(guests), parts, threshold)
    return tuple(out) if parts > 1 else out[0]


@ray.remote
def _write(src: str, state, dst: str, marker: tuple | None) -> Written:
    from curate.io.storage import mark_done, write_parquet_atomic
    from curate.schema import conform

    table = D.decided(conform(D.read_columns(src)), state)
    write_parquet_atomic(table, dst)
    kept = D.alive_count(state)
    if marker is not None:
        root, stage, key, h = marker
        mark_done(root, stage, key, h, rows=table.num_rows, kept=kept)  # important: after the part
    return Written(dst, table.num_rows, kept)


def _shuffle(map_refs: list[list], buckets: int, parts: int, reduce_fn, *args) -> list[list]:
    """Bucket b's reduce gets every part's b-th map output; returns refs [part][bucket]."""
    by_bucket = []
    for b in range(buckets):
        r = reduce_fn.options(num_returns=parts).remote(parts, *args, *[m[b] for m in map_refs])
        by_bucket.append(_refs(r, parts))
    return [[by_bucket[b][p] for b in range(buckets)] for p in range(parts)]


def _percentile(states: list, rule: filters.Rule, n: int) -> D.Cut | None:
    """The exact k-th best alive row for a share rule: sample to bracket, then rank the bracket."""
    k = D.share_k(rule.share, n)
    if k == 0 or n == 0:
        return None
    per = max(1, -(-PCT_SAMPLE // max(len(states), 1)))
    sample = ray.get([_sample_keys.remote(s, rule, per, i) for i, s in enumerate(states)])
    import numpy as np

    lo, hi = D.choose_bounds(np.concatenate(sample) if sample else np.zeros(0), n, k)
    while True:
        got = ray.get([_bracket.remote(s, rule, lo, hi) for s in states])
        below = sum(g[0] for g in got)
        import pyarrow as pa

        cut = D.pick_cut(below, pa.concat_tables([g[1] for g in got]), k)
        if cut is not None:
            return cut
        # the sample missed (rare): widen on the side that missed and rank again
        lo, hi = (-np.inf, hi) if k <= below else (lo, np.inf)


def decide_parts(
    inputs: Sequence[str],
    outputs: Sequence[str],
    cfg: FilterConfig,
    near: D.NearDupConfig | None = None,
    markers: Sequence[tuple | None] | None = None,
    buckets: int | None = None,
) -> tuple[list[dict[str, Any]], list[Written]]:
    """Decide every row of the scored parts `inputs`; write each decided part to `outputs[i]`.

    Returns the funnel ({"step", "in", "dropped", "out"} per step, as `apply_cascade`) and
    the parts written. Ray must be initialised. Work per step: O(N) spread over tasks;
    near-duplicates O(N x cluster_rows x D).
    """
    filters.check_config(cfg)
    near = near or D.NearDupConfig()
    p = len(inputs)
    if buckets is None:
        buckets = max(2, min(16, int(ray.cluster_resources().get("CPU", 2)) * 2))
    pairs = [_read_state.remote(path, i, cfg) for i, path in enumerate(inputs)]
    states = [s for s, _ in pairs]
    counts = ray.get([c for _, c in pairs])
    total, alive = sum(c[0] for c in counts), sum(c[1] for c in counts)
    funnel: list[dict[str, Any]] = []
    for name, rule in filters.cascade_steps(cfg):
        before = total if name == "status" else alive
        if name == EXACT_DUP and p:
            keys = [
                _refs(_exact_keys.options(num_returns=buckets).remote(s, buckets), buckets) for s in states
            ]
            dups = _shuffle(keys, buckets, p, _exact_decide)
            pairs = [_apply_dups.remote(s, EXACT_DUP, None, *dups[i]) for i, s in enumerate(states)]
        elif name == NEAR_DUP and p:
            pairs = _near_dups(inputs, states, cfg, near, buckets)
        elif rule is not None and rule.share is not None and p:
            cut = _percentile(states, rule, alive)
            pairs = [_apply_share.remote(s, rule, cut) for s in states]
        elif rule is not None and p:
            pairs = [_absolute.remote(s, rule) for s in states]
        else:  # status: applied when the states were read
            pairs = [(s, None) for s in states]
        if pairs and pairs[0][1] is not None:
            states = [s for s, _ in pairs]
            alive = sum(ray.get([c for _, c in pairs]))
        funnel.append({"step": name, "in": before, "dropped": before - alive, "out": alive})
    markers = list(markers) if markers is not None else [None] * p
    written = ray.get(
        [_write.remote(src, s, dst, m) for src, s, dst, m in zip(inputs, states, outputs, markers)]
    )
    return funnel, written


def _near_dups(
    inputs: Sequence[str], states: list, cfg: FilterConfig, near: D.NearDupConfig, buckets: int
) -> list:
    """Near-duplicates: k-means on a content-chosen sample, the greedy within clusters (pass 1),
    then the border pass over the kept rows near a border (pass 2); every shuffle is by cluster."""
    counts = ray.get([_alive.remote(s) for s in states])  # clips with an embedding are at most these
    n = sum(counts)
    k = D.clusters_for(n, near)
    p = len(states)
    threshold = float(cfg.near_dup_cosine)
    if k == 1:
        import numpy as np

        centroids = ray.put(np.zeros((1, 1), np.float32))
        buckets = 1
    else:
        share = min(1.0, near.sample_rows / max(n, 1))
        samples = [
            _sample_embeddings.remote(path, s, share, near.seed)
            for path, s, c in zip(inputs, states, counts)
            if c
        ]
        centroids = _train.remote(k, near, *samples)
        buckets = min(buckets, k)
    margin = near.border_margin if k > 1 else None
    border = margin is not None
    keys = [
        _refs(
            _near_keys.options(num_returns=buckets).remote(path, s, centroids, buckets, threshold, margin),
            buckets,
        )
        for path, s in zip(inputs, states)
    ]
    if not border:
        dups = _shuffle(keys, buckets, p, _near_decide, threshold, 0)
    else:
        # pass 1 in bucket b returns [p duplicate tables, kept rows, guests for each bucket]
        first = [
            _refs(
                _near_decide.options(num_returns=p + 1 + buckets).remote(
                    p, threshold, buckets, *[m[b] for m in keys]
                ),
                p + 1 + buckets,
            )
            for b in range(buckets)
        ]
        del keys  # important: the map outputs (every row's embedding) can go once pass 1 holds them
        second = [
            _refs(
                _border_decide.options(num_returns=p).remote(
                    p, threshold, first[b][p], *[first[a][p + 1 + b] for a in range(buckets)]
                ),
                p,
            )
            for b in range(buckets)
        ]
        dups = [
            [first[b][i] for b in range(buckets)] + [second[b][i] for b in range(buckets)] for i in range(p)
        ]
    return [_apply_dups.remote(s, NEAR_DUP, cfg.near_dup_cosine, *dups[i]) for i, s in enumerate(states)]
