"""Run-level decisions in passes over parts: the cascade of `filters`, at any number of clips.

`filters.apply_cascade` decides a whole run held in one table. This module decides the same
cascade (same steps, same order, same reasons, same keepers) when the run is many Parquet
parts that no single process holds. Each function here touches one part or one bucket of
rows; `jobs/decide.py` runs them as Ray tasks and the driver only sees counts, a sample of
one score column and the rows around a cut-off.

A part's *state* is a small table (no embeddings): its rows' ids, uris, rule values and the
decision so far (`kept`, `drop_reason`, `duplicate_of`), one row per row of the part, in
order. The steps:

- status, absolute rules: per row, on the state.
- exact duplicates: rows are bucketed by a hash of `clip_id`, so every copy of a clip meets
  in one bucket; the keeper is the lowest `source_uri` (then part, row), as in `dedup`.
- percentile rules: exact selection, not a sketch. The k-th best value (k = ceil(share x n))
  is bracketed by a random sample of the column, then the rows inside the bracket (a few %
  of the run) are ranked exactly; ties are broken by clip_id as `filters.keep_share` does.
- near-duplicates (SemDeDup, Abbas et al. 2023; NeMo Curator's semantic dedup): spherical
  k-means (faiss) trained on a sample of the embeddings; every row goes to its nearest
  centroid, and the greedy keeper rule of `dedup.near_duplicates` runs within each cluster,
  in keeper order. One cluster is the exact greedy; with more, a duplicate pair split by a
  cluster border is missed (the scale benchmark measures recall against the exact greedy).
  Cost: O(N x cluster_rows x D) instead of O(N x kept x D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from curate import dedup, storage
from curate.filters import EXACT_DUP, NEAR_DUP, FilterConfig, Rule, reason
from curate.schema import (
    AESTHETIC,
    CLIP_EMBEDDING,
    CLIP_ID,
    DROP_REASON,
    DUPLICATE_OF,
    FAILED_STAGE,
    KEPT,
    SOURCE_URI,
    STATUS,
    STATUS_OK,
)

PART = "_part"  # index of the part a row comes from
ROW = "_row"  # row index within its part
KEEPER_URI = "_keeper_uri"
COSINE = "_cosine"
CLUSTER = "_cluster"
EMB = "_embedding"  # fixed-size list<float16> in bucket tables


@dataclass(frozen=True)
class NearDupConfig:
    """How the clustered near-duplicate step scales. Defaults measured in `jobs.bench scale`."""

    cluster_rows: int = 2000  # target rows per k-means cluster; one cluster (exact greedy) below it
    sample_rows: int = 50_000  # k-means training sample (faiss wants >= 39 per centroid)
    niter: int = 20
    seed: int = 0


def read_columns(uri: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet part (local path or URI, through `curate.storage`), only `columns`."""
    fs, path = storage.filesystem(uri)
    return pq.read_table(path, columns=columns, filesystem=fs)


def rule_columns(cfg: FilterConfig) -> list[str]:
    return list(dict.fromkeys(r.column for r in cfg.rules))


def state_columns(cfg: FilterConfig) -> list[str]:
    """The columns of a scored part that decisions read (embeddings are read later, per pass)."""
    cols = [CLIP_ID, SOURCE_URI, STATUS, FAILED_STAGE, AESTHETIC, *rule_columns(cfg)]
    return list(dict.fromkeys(cols))


def part_state(table: pa.Table, part: int) -> pa.Table:
    """A part's decision state, with the status step applied: error rows are dropped."""
    n = table.num_rows
    status = table.column(STATUS)
    ok = pc.fill_null(pc.equal(status, STATUS_OK), False)
    stage = table.column(FAILED_STAGE).to_pylist()
    okl = ok.to_pylist()
    drop = [None if okl[i] else f"status=error (failed_stage={stage[i]})" for i in range(n)]
    cols = {PART: pa.array(np.full(n, part, np.int32)), ROW: pa.array(np.arange(n, dtype=np.int32))}
    for c in table.column_names:
        if c not in (STATUS, FAILED_STAGE):
            cols[c] = table.column(c)
    cols[KEPT] = ok
    cols[DROP_REASON] = pa.array(drop, pa.string())
    cols[DUPLICATE_OF] = pa.nulls(n, pa.string())
    return pa.table(cols)


def read_state(path: str, part: int, cfg: FilterConfig) -> pa.Table:
    """Read a scored part's decision columns (embeddings are read only by the near-dup passes)."""
    return part_state(read_columns(path, state_columns(cfg)), part)


def alive_count(state: pa.Table) -> int:
    return int(pc.sum(state.column(KEPT).cast(pa.int64())).as_py() or 0)


def _set(state: pa.Table, drop_idx: np.ndarray, reasons: list[str], dup_of: list[str | None] | None = None) -> pa.Table:
    """Drop rows `drop_idx` (positions in the state) with their reasons (and keepers)."""
    if not len(drop_idx):
        return state
    kept = np.asarray(state.column(KEPT).to_numpy(zero_copy_only=False), bool).copy()
    kept[drop_idx] = False
    drop = state.column(DROP_REASON).to_pylist()
    dups = state.column(DUPLICATE_OF).to_pylist()
    for j, i in enumerate(drop_idx):
        drop[i] = reasons[j]
        if dup_of is not None:
            dups[i] = dup_of[j]
    state = state.set_column(state.schema.get_field_index(KEPT), KEPT, pa.array(kept))
    state = state.set_column(state.schema.get_field_index(DROP_REASON), DROP_REASON, pa.array(drop, pa.string()))
    return state.set_column(state.schema.get_field_index(DUPLICATE_OF), DUPLICATE_OF, pa.array(dups, pa.string()))


def _alive_idx(state: pa.Table) -> np.ndarray:
    return np.flatnonzero(np.asarray(state.column(KEPT).to_numpy(zero_copy_only=False), bool))


def _values(state: pa.Table, column: str) -> np.ndarray:
    """A rule column as float64 (bools as 0/1), missing values as NaN."""
    col = state.column(column)
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    return np.asarray(pc.fill_null(col.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False), np.float64)


# --- absolute rules ------------------------------------------------------------------------

def apply_absolute(state: pa.Table, rule: Rule) -> pa.Table:
    live = _alive_idx(state)
    v = _values(state, rule.column)[live]
    t = float(rule.threshold)
    ok = (v >= t) if rule.op == ">=" else (v <= t)  # NaN compares False: a missing value fails
    bad = live[~ok]
    raw = state.column(rule.column).take(pa.array(bad, pa.int64())).to_pylist()
    return _set(state, bad, [reason(rule, x) for x in raw])


# --- exact duplicates ----------------------------------------------------------------------

def _bucket_of(ids: list[str], buckets: int) -> np.ndarray:
    return np.fromiter((xxhash.xxh64_intdigest((c or "").encode()) % buckets for c in ids), np.int64, len(ids))


def exact_keys(state: pa.Table, buckets: int) -> list[pa.Table]:
    """Map: the alive rows' (part, row, clip_id, uri), split into `buckets` by hash of clip_id."""
    live = state.take(pa.array(_alive_idx(state), pa.int64())).select([PART, ROW, CLIP_ID, SOURCE_URI])
    b = _bucket_of(live.column(CLIP_ID).to_pylist(), buckets)
    return [live.filter(pa.array(b == k)) for k in range(buckets)]


def exact_decide(tables: list[pa.Table], parts: int) -> list[pa.Table]:
    """Reduce: within one bucket, every copy of a clip_id but the keeper is a duplicate.

    Keeper: the lowest (source_uri, part, row), as `dedup.exact_duplicates` picks the lowest
    uri. Returns one table per part: (row, duplicate_of, keeper uri).
    """
    t = pa.concat_tables(tables)
    if not t.num_rows:
        return [_dup_table([], [], [], []) for _ in range(parts)]
    uri = pc.fill_null(t.column(SOURCE_URI), "")
    t = t.set_column(t.schema.get_field_index(SOURCE_URI), SOURCE_URI, uri)
    t = t.sort_by([(CLIP_ID, "ascending"), (SOURCE_URI, "ascending"), (PART, "ascending"), (ROW, "ascending")])
    ids = t.column(CLIP_ID).to_pylist()
    uris = t.column(SOURCE_URI).to_pylist()
    prt = t.column(PART).to_numpy()
    row = t.column(ROW).to_numpy()
    out: list[list[list]] = [[[], [], [], []] for _ in range(parts)]
    keeper = -1
    for i, c in enumerate(ids):
        if i == 0 or c != ids[i - 1]:
            keeper = i
            continue
        o = out[int(prt[i])]
        o[0].append(int(row[i]))
        o[1].append(ids[keeper])
        o[2].append(uris[keeper])
        o[3].append(1.0)
    return [_dup_table(*o) for o in out]


def _dup_table(rows: list[int], keepers: list[str], uris: list[str], cos: list[float]) -> pa.Table:
    return pa.table({ROW: pa.array(rows, pa.int32()), DUPLICATE_OF: pa.array(keepers, pa.string()),
                     KEEPER_URI: pa.array(uris, pa.string()), COSINE: pa.array(cos, pa.float64())})


def apply_duplicates(state: pa.Table, dups: list[pa.Table], kind: str, threshold: float | None = None) -> pa.Table:
    """Drop the rows the reduce step found duplicate, with `filters`' reasons."""
    d = pa.concat_tables(dups) if dups else _dup_table([], [], [], [])
    if not d.num_rows:
        return state
    d = d.sort_by([(ROW, "ascending")])
    rows = d.column(ROW).to_numpy().astype(np.int64)
    keep_ids = d.column(DUPLICATE_OF).to_pylist()
    if kind == EXACT_DUP:
        reasons = [f"{EXACT_DUP}: same content and span as {u}" for u in d.column(KEEPER_URI).to_pylist()]
    else:
        cos = d.column(COSINE).to_pylist()
        reasons = [f"{NEAR_DUP}: cosine={c:.4f} >= {threshold:g} with {k}" for c, k in zip(cos, keep_ids)]
    return _set(state, rows, reasons, keep_ids)


# --- percentile rules: exact selection -----------------------------------------------------

def _rank_primary(state: pa.Table, rule: Rule) -> tuple[np.ndarray, np.ndarray]:
    """Alive positions and their primary rank key: sign x value, best first; missing last (+inf)."""
    live = _alive_idx(state)
    v = _values(state, rule.column)[live]
    key = (-v if rule.op == ">=" else v)
    return live, np.where(np.isnan(key), np.inf, key)


def sample_keys(state: pa.Table, rule: Rule, rows: int, seed: int) -> np.ndarray:
    """A uniform random sample (without replacement) of `rows` primary keys of the alive rows."""
    _, key = _rank_primary(state, rule)
    if rows >= len(key):
        return key
    return np.random.default_rng(seed).choice(key, rows, replace=False)


def bracket(state: pa.Table, rule: Rule, lo: float, hi: float) -> tuple[int, pa.Table]:
    """(alive rows with key < lo, the alive rows with lo <= key <= hi as a small table)."""
    live, key = _rank_primary(state, rule)
    below = int((key < lo).sum())
    inside = live[(key >= lo) & (key <= hi)]
    v = _values(state, rule.column)[inside]
    sel = state.take(pa.array(inside, pa.int64()))
    return below, pa.table({"missing": pa.array(np.isnan(v)), "key": pa.array(key[(key >= lo) & (key <= hi)]),
                            CLIP_ID: sel.column(CLIP_ID), PART: sel.column(PART), ROW: sel.column(ROW),
                            "value": sel.column(rule.column)})


@dataclass(frozen=True)
class Cut:
    """The k-th best row: rows ranking at or before it are kept."""

    missing: bool
    key: float
    clip_id: str
    part: int
    row: int
    value: object  # the raw column value, for the reason string


def choose_bounds(sample: np.ndarray, n: int, k: int) -> tuple[float, float]:
    """A key range that holds the k-th smallest of n keys with high probability, from a sample.

    The k-th key's rank in a sample of m is ~ Binomial; +-4 sigma (>= 4 sqrt(m)/2 rows)
    misses with probability < 1e-4, and a miss costs one more (wider) pass, never a wrong cut.
    """
    s = np.sort(sample)
    m = len(s)
    if m == 0:
        return -np.inf, np.inf
    q = k / n * m
    margin = 4 * math.sqrt(m) + 2
    i_lo, i_hi = math.floor(q - margin), math.ceil(q + margin)
    lo = -np.inf if i_lo < 0 else float(s[i_lo])
    hi = np.inf if i_hi >= m else float(s[i_hi])
    return lo, hi


def pick_cut(below: int, inside: pa.Table, k: int) -> Cut | None:
    """The k-th (1-based) row overall, when the bracket holds it; None when it does not."""
    j = k - 1 - below
    if j < 0 or j >= inside.num_rows:
        return None
    t = inside.sort_by([("missing", "ascending"), ("key", "ascending"), (CLIP_ID, "ascending"),
                        (PART, "ascending"), (ROW, "ascending")])
    r = t.slice(j, 1).to_pylist()[0]
    return Cut(r["missing"], r["key"], r[CLIP_ID] or "", r[PART], r[ROW], r["value"])


def apply_share(state: pa.Table, rule: Rule, cut: Cut | None) -> pa.Table:
    """Keep alive rows ranking at or before `cut` (None: k = 0, drop every alive row)."""
    live, key = _rank_primary(state, rule)
    if cut is None:
        keep = np.zeros(len(live), bool)
        cutoff = None
    else:
        v = _values(state, rule.column)[live]
        missing = np.isnan(v)
        ids = np.asarray(state.column(CLIP_ID).take(pa.array(live, pa.int64())).to_pylist(), dtype=object)
        ids = np.where(ids == None, "", ids)  # noqa: E711 (elementwise)
        prt = state.column(PART).to_numpy()[live]
        row = state.column(ROW).to_numpy()[live]
        # lexicographic (missing, key, clip_id, part, row) <= cut
        pos_le = (prt < cut.part) | ((prt == cut.part) & (row <= cut.row))
        id_le = (ids < cut.clip_id) | ((ids == cut.clip_id) & pos_le)
        key_le = (key < cut.key) | ((key == cut.key) & id_le)
        keep = (missing < cut.missing) | ((missing == cut.missing) & key_le)
        keep = keep.astype(bool)
        cutoff = None if cut.value is None else float(cut.value)
        if cutoff is not None and math.isnan(cutoff):
            cutoff = None
    bad = live[~keep]
    raw = state.column(rule.column).take(pa.array(bad, pa.int64())).to_pylist()
    return _set(state, bad, [reason(rule, x, cutoff) for x in raw])


def share_k(share: float, n: int) -> int:
    return math.ceil(share * n - 1e-9)


# --- near duplicates: clustered greedy -----------------------------------------------------

def alive_embeddings(path: str, state: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The rows the near-duplicate step looks at (alive, with an embedding) and their
    unit-norm float32 embeddings (R, D), read from the part in one pass over the column."""
    live = _alive_idx(state)
    col = read_columns(path, [CLIP_EMBEDDING]).column(CLIP_EMBEDDING).combine_chunks()
    valid = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), bool)
    rows = live[valid[live]]
    if not len(rows):
        return rows, np.zeros((0, 0), np.float32)
    sub = col.take(pa.array(rows, pa.int64()))
    emb = np.asarray(sub.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(rows), -1)  # (R*D,) -> (R, D)
    return rows, emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def sample_embeddings(path: str, state: pa.Table, rows: int, seed: int) -> np.ndarray:
    _, emb = alive_embeddings(path, state)
    if rows < len(emb):
        emb = emb[np.sort(np.random.default_rng(seed).choice(len(emb), rows, replace=False))]
    return emb


def train_centroids(samples: list[np.ndarray], k: int, cfg: NearDupConfig) -> np.ndarray:
    """Spherical k-means centroids (k, D) of the sampled embeddings (faiss)."""
    import faiss

    samples = [s for s in samples if len(s)]
    if not samples:  # no embeddings at all: one cluster
        return np.zeros((1, 1), np.float32)
    x = np.ascontiguousarray(np.concatenate(samples), np.float32)  # (S, D)
    k = min(k, len(x))
    km = faiss.Kmeans(x.shape[1], k, niter=cfg.niter, seed=cfg.seed, spherical=True, verbose=False,
                      max_points_per_centroid=max(256, len(x) // max(k, 1) + 1))
    km.train(x)
    return np.asarray(km.centroids, np.float32)


def assign(emb: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid (max inner product) of each row."""
    if len(centroids) == 1:
        return np.zeros(len(emb), np.int64)
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids))
    _, nn = index.search(np.ascontiguousarray(emb, np.float32), 1)
    return nn[:, 0].astype(np.int64)


def near_keys(path: str, state: pa.Table, centroids: np.ndarray, buckets: int) -> list[pa.Table]:
    """Map: candidate rows with cluster, keeper keys and fp16 embedding, split into buckets by cluster."""
    cand, emb = alive_embeddings(path, state)  # (R,), (R, D)
    cl = assign(emb, centroids) if len(cand) else np.zeros(0, np.int64)
    sel = state.take(pa.array(cand, pa.int64()))
    d = emb.shape[1] if len(cand) else 1
    flat = pa.array(emb.astype(np.float16).reshape(-1))  # (R, D) -> (R*D,)
    t = pa.table({PART: sel.column(PART), ROW: sel.column(ROW), CLIP_ID: sel.column(CLIP_ID),
                  SOURCE_URI: sel.column(SOURCE_URI), AESTHETIC: sel.column(AESTHETIC).cast(pa.float64()),
                  CLUSTER: pa.array(cl), EMB: pa.FixedSizeListArray.from_arrays(flat, d)})
    b = cl % buckets
    return [t.filter(pa.array(b == k)) for k in range(buckets)]


def near_decide(tables: list[pa.Table], parts: int, threshold: float) -> list[pa.Table]:
    """Reduce: the greedy keeper rule within each cluster of this bucket; one table per part."""
    tables = [t for t in tables if t.num_rows]
    out: list[list[list]] = [[[], [], [], []] for _ in range(parts)]
    if tables:
        t = pa.concat_tables(tables).sort_by([(CLUSTER, "ascending"), (PART, "ascending"), (ROW, "ascending")])
        cl = t.column(CLUSTER).to_numpy()
        starts = np.flatnonzero(np.r_[True, cl[1:] != cl[:-1]])
        ends = np.r_[starts[1:], len(cl)]
        d = t.schema.field(EMB).type.list_size
        ids, uris = t.column(CLIP_ID).to_pylist(), t.column(SOURCE_URI).to_pylist()
        aes = t.column(AESTHETIC).to_pylist()
        prt, row = t.column(PART).to_numpy(), t.column(ROW).to_numpy()
        emb_col = t.column(EMB).combine_chunks()
        for a, b in zip(starts, ends):
            emb = np.asarray(emb_col.slice(a, b - a).flatten().to_numpy(), np.float32).reshape(b - a, d)  # (m, D)
            order = dedup.keeper_order(ids[a:b], uris[a:b], aes[a:b])
            for dup in dedup.near_duplicates(emb, order, threshold):
                i, k = a + dup.index, a + dup.keeper
                o = out[int(prt[i])]
                o[0].append(int(row[i]))
                o[1].append(ids[k])
                o[2].append(uris[k])
                o[3].append(dup.cosine)
    return [_dup_table(*o) for o in out]


def clusters_for(n: int, cfg: NearDupConfig) -> int:
    return max(1, math.ceil(n / cfg.cluster_rows))


# --- output --------------------------------------------------------------------------------

def decided(table: pa.Table, state: pa.Table) -> pa.Table:
    """The scored part with its decision columns replaced by the state's."""
    from curate.schema import set_columns

    return set_columns(table, {KEPT: state.column(KEPT), DROP_REASON: state.column(DROP_REASON),
                               DUPLICATE_OF: state.column(DUPLICATE_OF)})
