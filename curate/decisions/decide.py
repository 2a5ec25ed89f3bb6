"""Run-level decisions in passes over parts: the cascade of `filters`, at any number of clips.

`filters.apply_cascade` decides a whole run held in one table. This module decides the same
cascade (same steps, same order, same reasons, same keepers) when the run is many Parquet
parts that no single process holds. Each function here touches one part or one bucket of
rows; `jobs/runtime/decide.py` runs them as Ray tasks and the driver only sees counts, a sample of
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
  k-means (faiss) trained on a sample of the embeddings (rows chosen by a hash of
  (clip_id, source_uri), so the centroids do not depend on how rows fall into parts); every
  row goes to its nearest centroid, and the greedy keeper rule of `dedup.near_duplicates`
  runs within each cluster, in keeper order (pass 1). One cluster is the exact greedy.
  With more, a duplicate pair split by a cluster border would be missed; a border pass
  follows (pass 2). A row kept by pass 1 whose second-nearest centroid c2 is nearly as close
  as its nearest c1 is also sent to c2's cluster: it is a border row when its gap
  (ip(c1) - ip(c2)) is at most `border_margin` x sqrt((1 - t)(1 - c1.c2)), the bound that
  the closer of the two rows of any pair split between c1 and c2 (cosine >= t) meets
  (`border_clusters` derives it). There it meets that cluster's kept rows and the other
  border rows sent there; in each such group the greedy keeper rule runs again over the
  pairs of rows from different clusters (`dedup.near_duplicates_between`; pairs within a
  cluster were settled by pass 1), and a row found a duplicate of a row before it in keeper
  order is dropped, with the same reason and `duplicate_of` as the greedy gives. A row
  found in both of its groups keeps its most similar keeper, as the greedy does.
  Why a margin and not every kept row (`border_margin=inf`, also supported): on the scale
  benchmark's data at 10^5 the bound admits 49-65% of the kept rows and pass 2 costs
  0.3-0.5x pass 1 (every kept row: 0.9-1.4x), for the same recall and precision. Why not each
  row in its top-2 clusters from the start (some SemDeDup variants): doubled clusters cost ~4x
  the pass-1 compute, and a row would be decided in two clusters at once with no rule to
  reconcile them.
  Residual error against the exact greedy (measured by `python -m jobs.bench scale
  [--spread]`): (1) a pair is missed when the closer row's second-nearest centroid is not
  the other row's (a third cluster is closer) and the other row is outside the margin or
  also looks elsewhere; (2) greedy chains across a border: a row dropped by pass 2 may
  already have dropped, in pass 1, a row the exact greedy keeps (it stays dropped, naming a
  keeper that is itself dropped, where the exact greedy may drop it too but name another
  keeper), and a row dropped in one group of pass 2 may still drop a later row in its other
  group; (2) needs three near rows around a border. On the
  benchmark's `--spread` data at 10^5 (groups between topics) pass 1 alone misses 3.7% of
  the exact greedy's drops (recall 0.963); with pass 2 recall is 1.000 and precision 0.9993,
  every false drop being (2).
  Cost: pass 1 O(N x cluster_rows x D); pass 2 O(B x cluster_rows x D) for B border rows.
  The shuffle of pass 2 moves only the border rows; the rows kept in a bucket stay in the
  object store between the two passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from curate.decisions import dedup
from curate.decisions.filters import EXACT_DUP, NEAR_DUP, FilterConfig, Rule, reason, rule_of
from curate.io import storage
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
CLUSTER = "_cluster"  # nearest centroid
BORDER = "_border"  # second-nearest centroid: the cluster of the border pass (-1: none)
EMB = "_embedding"  # fixed-size list<float16> in bucket tables


@dataclass(frozen=True)
class NearDupConfig:
    """How the clustered near-duplicate step scales. Defaults measured in `jobs.bench scale`."""

    cluster_rows: int = 2000  # target rows per k-means cluster; one cluster (exact greedy) below it
    sample_rows: int = 50_000  # k-means training sample (faiss wants >= 39 per centroid)
    niter: int = 20
    seed: int = 0
    # the border pass (module docstring): a kept row goes to its second-nearest cluster when its
    # gap (ip with nearest - ip with second) is at most border_margin x the pair bound
    # sqrt((1 - t)(1 - c1.c2)); inf: every kept row; None: no border pass
    border_margin: float | None = 1.0


def read_columns(uri: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet part (local path or URI, through `curate.io.storage`), only `columns`."""
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


def _set(
    state: pa.Table, drop_idx: np.ndarray, reasons: list[str], dup_of: list[str | None] | None = None
) -> pa.Table:
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
    state = state.set_column(
        state.schema.get_field_index(DROP_REASON), DROP_REASON, pa.array(drop, pa.string())
    )
    return state.set_column(
        state.schema.get_field_index(DUPLICATE_OF), DUPLICATE_OF, pa.array(dups, pa.string())
    )


def _alive_idx(state: pa.Table) -> np.ndarray:
    return np.flatnonzero(np.asarray(state.column(KEPT).to_numpy(zero_copy_only=False), bool))


def _values(state: pa.Table, column: str) -> np.ndarray:
    """A rule column as float64 (bools as 0/1), missing values as NaN."""
    col = state.column(column)
    if pa.types.is_boolean(col.type):
        col = col.cast(pa.int8())
    return np.asarray(
        pc.fill_null(col.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False), np.float64
    )


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
    return np.fromiter(
        (xxhash.xxh64_intdigest((c or "").encode()) % buckets for c in ids), np.int64, len(ids)
    )


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
    t = t.sort_by(
        [(CLIP_ID, "ascending"), (SOURCE_URI, "ascending"), (PART, "ascending"), (ROW, "ascending")]
    )
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
    return pa.table(
        {
            ROW: pa.array(rows, pa.int32()),
            DUPLICATE_OF: pa.array(keepers, pa.string()),
            KEEPER_URI: pa.array(uris, pa.string()),
            COSINE: pa.array(cos, pa.float64()),
        }
    )


def apply_duplicates(
    state: pa.Table, dups: list[pa.Table], kind: str, threshold: float | None = None
) -> pa.Table:
    """Drop the rows the reduce step found duplicate, with `filters`' reasons."""
    d = pa.concat_tables(dups) if dups else _dup_table([], [], [], [])
    if not d.num_rows:
        return state
    # a row found a duplicate twice (in its cluster's and its border cluster's group of the
    # border pass) keeps its most similar keeper, as the greedy does; ties: the lower keeper id
    d = d.sort_by([(ROW, "ascending"), (COSINE, "descending"), (DUPLICATE_OF, "ascending")])
    rows = d.column(ROW).to_numpy().astype(np.int64)
    first = np.r_[True, rows[1:] != rows[:-1]]
    d, rows = d.filter(pa.array(first)), rows[first]
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
    key = -v if rule.op == ">=" else v
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
    return below, pa.table(
        {
            "missing": pa.array(np.isnan(v)),
            "key": pa.array(key[(key >= lo) & (key <= hi)]),
            CLIP_ID: sel.column(CLIP_ID),
            PART: sel.column(PART),
            ROW: sel.column(ROW),
            "value": sel.column(rule.column),
        }
    )


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
    t = inside.sort_by(
        [
            ("missing", "ascending"),
            ("key", "ascending"),
            (CLIP_ID, "ascending"),
            (PART, "ascending"),
            (ROW, "ascending"),
        ]
    )
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


# --- near duplicates: clustered greedy, then the border pass --------------------------------


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
    emb = np.asarray(sub.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(
        len(rows), -1
    )  # (R*D,) -> (R, D)
    return rows, emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _row_hash(ids: list[str | None], uris: list[str | None], seed: int) -> np.ndarray:
    return np.fromiter(
        (xxhash.xxh64_intdigest(f"{c or ''}\0{u or ''}".encode(), seed) for c, u in zip(ids, uris)),
        np.uint64,
        len(ids),
    )


def sample_embeddings(path: str, state: pa.Table, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A sample of the candidate rows' embeddings for k-means: the rows whose hash of
    (clip_id, source_uri) falls in the lowest `share` of the hash range. Chosen by content, so
    the sample (and the centroids) do not depend on how rows are split into parts.
    Returns (row hashes (S,), embeddings (S, D))."""
    rows, emb = alive_embeddings(path, state)
    sel = state.take(pa.array(rows, pa.int64()))
    h = _row_hash(sel.column(CLIP_ID).to_pylist(), sel.column(SOURCE_URI).to_pylist(), seed)
    if share < 1:
        pick = h < np.uint64(int(share * 2**64))
        h, emb = h[pick], emb[pick]
    return h, emb


def train_centroids(samples: list[tuple[np.ndarray, np.ndarray]], k: int, cfg: NearDupConfig) -> np.ndarray:
    """Spherical k-means centroids (k, D), unit norm, of the sampled embeddings (faiss).

    The sample is put in a content order first (row hash, then a hash of the embedding), so
    the centroids depend only on the rows sampled, never on the order of the parts.
    """
    import faiss

    samples = [s for s in samples if len(s[1])]
    if not samples:  # no embeddings at all: one cluster
        return np.zeros((1, 1), np.float32)
    h = np.concatenate([s[0] for s in samples])
    x = np.concatenate([s[1] for s in samples])  # (S, D)
    h2 = np.fromiter((xxhash.xxh64_intdigest(r.tobytes()) for r in x), np.uint64, len(x))
    x = np.ascontiguousarray(x[np.lexsort((h2, h))], np.float32)
    k = min(k, len(x))
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=cfg.niter,
        seed=cfg.seed,
        spherical=True,
        verbose=False,
        max_points_per_centroid=max(256, len(x) // max(k, 1) + 1),
    )
    km.train(x)
    return np.asarray(km.centroids, np.float32)


def assign(emb: np.ndarray, centroids: np.ndarray, top: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The `top` nearest centroids (max inner product) of each row, nearest first, and those
    inner products: (R, top) each. Where there are fewer centroids than `top`: -1."""
    if len(centroids) == 1:  # one cluster; its centroid may be a placeholder, not a direction
        nn = np.full((len(emb), top), -1, np.int64)
        nn[:, 0] = 0
        return nn, np.where(nn == 0, 1.0, -np.inf).astype(np.float32)
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids))
    ip, nn = index.search(np.ascontiguousarray(emb, np.float32), top)  # (R, top) each
    return nn.astype(np.int64), ip


def border_clusters(
    nn: np.ndarray, ip: np.ndarray, centroids: np.ndarray, threshold: float, margin: float
) -> np.ndarray:
    """Each row's border cluster: its second-nearest centroid when the row is within `margin`
    x sqrt((1 - t)(1 - c1.c2)) of that border, else -1 (`nn`, `ip`: `assign`'s, top 2).

    Why that bound: a pair (a, b) with cosine >= t, a nearest c1 and b nearest c2 (unit
    vectors, as spherical k-means leaves them), has
    gap_a + gap_b = (a - b).(c1 - c2) <= |a - b| |c1 - c2| <= 2 sqrt((1 - t)(1 - c1.c2)),
    where gap_a = a.c1 - a.c2 and gap_b = b.c2 - b.c1 are both >= 0: the closer of the two
    to the border is within the bound.
    """
    c1, c2 = nn[:, 0], nn[:, 1]
    ok = c2 >= 0
    cos = np.einsum("rd,rd->r", centroids[c1], centroids[np.where(ok, c2, 0)])  # c1.c2 per row
    bound = np.sqrt(np.maximum(0.0, (1 - threshold) * (1 - cos)))
    limit = np.inf if math.isinf(margin) else margin * bound  # inf x 0 (equal centroids) is nan
    near = ok & (ip[:, 0] - ip[:, 1] <= limit)
    return np.where(near, c2, -1)


def near_keys(
    path: str,
    state: pa.Table,
    centroids: np.ndarray,
    buckets: int,
    threshold: float,
    border_margin: float | None,
) -> list[pa.Table]:
    """Map: candidate rows with cluster (nearest centroid), border cluster (`border_clusters`;
    -1 without the border pass), keeper keys and fp16 embedding, split into buckets by cluster."""
    cand, emb = alive_embeddings(path, state)  # (R,), (R, D)
    border = border_margin is not None and len(centroids) > 1
    if len(cand):
        nn, ip = assign(emb, centroids, 2 if border else 1)
    else:
        nn, ip = np.zeros((0, 2), np.int64), np.zeros((0, 2), np.float32)
    cl = nn[:, 0]
    cl2 = (
        border_clusters(nn, ip, centroids, threshold, border_margin)
        if border
        else np.full(len(cand), -1, np.int64)
    )
    sel = state.take(pa.array(cand, pa.int64()))
    d = emb.shape[1] if len(cand) else 1
    flat = pa.array(emb.astype(np.float16).reshape(-1))  # (R, D) -> (R*D,)
    t = pa.table(
        {
            PART: sel.column(PART),
            ROW: sel.column(ROW),
            CLIP_ID: sel.column(CLIP_ID),
            SOURCE_URI: sel.column(SOURCE_URI),
            AESTHETIC: sel.column(AESTHETIC).cast(pa.float64()),
            CLUSTER: pa.array(cl, pa.int64()),
            BORDER: pa.array(cl2, pa.int64()),
            EMB: pa.FixedSizeListArray.from_arrays(flat, d),
        }
    )
    b = cl % buckets
    return [t.filter(pa.array(b == k)) for k in range(buckets)]


def _groups(t: pa.Table, group: np.ndarray) -> tuple[pa.Table, list[tuple[int, int]]]:
    """`t` sorted by (group, part, row), and the (start, end) rows of each group in it."""
    t = t.append_column("_group", pa.array(group, pa.int64()))
    t = t.sort_by([("_group", "ascending"), (PART, "ascending"), (ROW, "ascending")])
    g = t.column("_group").to_numpy()
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(g) else np.zeros(0, np.int64)
    return t, list(zip(starts, np.r_[starts[1:], len(g)]))


def _embeddings(t: pa.Table, a: int, b: int) -> np.ndarray:
    d = t.schema.field(EMB).type.list_size
    return np.asarray(
        t.column(EMB).slice(a, b - a).combine_chunks().flatten().to_numpy(), np.float32
    ).reshape(b - a, d)  # (m, D)


def near_decide(
    tables: list[pa.Table], parts: int, threshold: float, border_buckets: int = 0
) -> tuple[list[pa.Table], pa.Table, list[pa.Table]]:
    """Reduce, pass 1: the greedy keeper rule within each cluster of this bucket.

    Returns (one duplicates table per part, the rows kept here (for the border pass of this
    bucket), the kept rows split into `border_buckets` by bucket of their border cluster).
    Without a border pass (`border_buckets` 0) the last two are empty.
    """
    tables = [t for t in tables if t.num_rows]
    out: list[list[list]] = [[[], [], [], []] for _ in range(parts)]
    if not tables:
        return [_dup_table(*o) for o in out], pa.table({}), [pa.table({}) for _ in range(border_buckets)]
    t = pa.concat_tables(tables)
    t, groups = _groups(t, t.column(CLUSTER).to_numpy())
    kept = np.ones(t.num_rows, bool)
    ids, uris = t.column(CLIP_ID).to_pylist(), t.column(SOURCE_URI).to_pylist()
    aes = t.column(AESTHETIC).to_pylist()
    prt, row = t.column(PART).to_numpy(), t.column(ROW).to_numpy()
    for a, b in groups:
        order = dedup.keeper_order(ids[a:b], uris[a:b], aes[a:b])
        for dup in dedup.near_duplicates(_embeddings(t, a, b), order, threshold):
            i, k = a + dup.index, a + dup.keeper
            kept[i] = False
            o = out[int(prt[i])]
            o[0].append(int(row[i]))
            o[1].append(ids[k])
            o[2].append(uris[k])
            o[3].append(dup.cosine)
    dups = [_dup_table(*o) for o in out]
    if not border_buckets:
        return dups, pa.table({}), []
    home = t.drop_columns(["_group"]).filter(pa.array(kept))
    cl2 = home.column(BORDER).to_numpy()
    to = np.where(cl2 >= 0, cl2 % border_buckets, -1)
    return dups, home, [home.filter(pa.array(to == k)) for k in range(border_buckets)]


def border_decide(home: pa.Table, guests: list[pa.Table], parts: int, threshold: float) -> list[pa.Table]:
    """Reduce, the border pass: the rows kept by pass 1 in this bucket's clusters (`home`) and
    the kept rows whose border cluster is one of them (`guests`), grouped by that cluster.

    In each group the greedy keeper rule runs again over pairs of rows from different
    clusters (pairs within a cluster were decided by pass 1); a row found a duplicate of a
    row before it in keeper order is dropped. One duplicates table per part.
    """
    out: list[list[list]] = [[[], [], [], []] for _ in range(parts)]
    guests = [g for g in guests if g.num_rows]
    if guests:
        t = pa.concat_tables([h for h in (home, *guests) if h.num_rows])
        cl, cl2 = t.column(CLUSTER).to_numpy(), t.column(BORDER).to_numpy()
        group = np.r_[
            cl[: home.num_rows], cl2[home.num_rows :]
        ]  # home rows by cluster, guests by border cluster
        t, groups = _groups(t, group)
        cl = t.column(CLUSTER).to_numpy()
        ids, uris = t.column(CLIP_ID).to_pylist(), t.column(SOURCE_URI).to_pylist()
        aes = t.column(AESTHETIC).to_pylist()
        prt, row = t.column(PART).to_numpy(), t.column(ROW).to_numpy()
        for a, b in groups:
            if (cl[a:b] == cl[a]).all():  # no guest (or only guests from one cluster): nothing to compare
                continue
            order = dedup.keeper_order(ids[a:b], uris[a:b], aes[a:b])
            for dup in dedup.near_duplicates_between(_embeddings(t, a, b), order, cl[a:b], threshold):
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
    from curate.schema import DROP_RULE, set_columns

    rules = [rule_of(r) for r in state.column(DROP_REASON).to_pylist()]
    return set_columns(
        table,
        {
            KEPT: state.column(KEPT),
            DROP_REASON: state.column(DROP_REASON),
            DROP_RULE: rules,
            DUPLICATE_OF: state.column(DUPLICATE_OF),
        },
    )
