"""Join score rows onto clip rows by a hash shuffle on clip_id, in Ray tasks.

The score job writes score rows (score columns only) in parts keyed by the clips they hold;
the scored output is every clip row with its score group filled. Neither side is ordered
like the other, so both are bucketed by a stable hash of clip_id:

  clips part  ─▶ map task ─┐ bucket b of every part
  score part  ─▶ map task ─┴▶ reduce task b: merge, validate, write OUT/scored/part-<b>.parquet

Each reduce holds about `rows / buckets` clip rows and their score rows; the driver holds
object refs and per-part row counts only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

import curate
from curate.decisions.decide import read_columns
from curate.schema import (
    CLIP_EMBEDDING,
    CLIP_ID,
    CLIP_SCHEMA,
    CONFIG_HASH,
    ERROR,
    FAILED_STAGE,
    SCORE,
    START_FRAME,
    STATUS,
    TUBELET_VERSION,
    VIDEO_ID,
    columns_of,
    conform,
    set_columns,
    validate,
)
from jobs.runtime.adapter import row_counts

SCORE_PART_COLUMNS = [CLIP_ID, *columns_of(SCORE), STATUS, ERROR, FAILED_STAGE]  # what the score parts hold
ORDER = "_order"  # position of a score part, oldest first: a newer score row wins in the merge


def bucket_of(clip_ids: Sequence[str], buckets: int) -> np.ndarray:
    """A stable bucket per clip id (the same on every worker and every run)."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(c.encode(), digest_size=8).digest(), "little") % buckets
            for c in clip_ids
        ),
        dtype=np.int64,
        count=len(clip_ids),
    )


def split_by_bucket(table: pa.Table, buckets: int) -> list[pa.Table]:
    b = bucket_of(table.column(CLIP_ID).to_pylist(), buckets)
    return [table.take(pa.array(np.flatnonzero(b == i))) for i in range(buckets)]


def _out(tables: list[pa.Table], buckets: int) -> tuple | pa.Table:
    return tuple(tables) if buckets > 1 else tables[0]


MIN_MAP_ROWS = 20_000  # rows per map task at least: few, large shuffle objects
MIN_OBJECT_ROWS = 256  # rows per shuffle object at least, so none is small enough for Ray to
# inline into its owner (the driver): inlined objects would live in the driver's memory


def group_parts(paths: Sequence[str], counts: Sequence[int], rows: int) -> list[list[int]]:
    """Consecutive parts grouped into map tasks of at least `rows` rows (indices into paths)."""
    groups: list[list[int]] = [[]]
    total = 0
    for i, n in enumerate(counts):
        if total >= rows:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += n
    return [g for g in groups if g]


@ray.remote
def _map_clips(paths: list[str], skip: list[str], buckets: int):
    import pyarrow.parquet as pq

    from curate.io import storage

    tables = []
    for path in paths:
        fs, local = storage.filesystem(path)
        have = pq.read_schema(local, filesystem=fs).names
        # the score group comes from the score side: not read, not shuffled
        tables.append(conform(read_columns(path, [c for c in have if c not in skip]), CLIP_SCHEMA))
    return _out(split_by_bucket(pa.concat_tables(tables), buckets), buckets)


@ray.remote
def _map_scores(paths: list[str], orders: list[int], columns: list[str], buckets: int):
    tables = []
    for path, order in zip(paths, orders):
        t = read_columns(path, columns)
        tables.append(t.append_column(ORDER, pa.array(np.full(t.num_rows, order, np.int64))))
    return _out(split_by_bucket(pa.concat_tables(tables), buckets), buckets)


@ray.remote
def _reduce(
    merge: Callable[[pa.Table, pa.Table], pa.Table], dst: str, n_clips: int, *tables: pa.Table
) -> int:
    from curate.io.storage import write_parquet_atomic

    clips = pa.concat_tables(tables[:n_clips])
    scores = pa.concat_tables(tables[n_clips:]) if len(tables) > n_clips else None
    if scores is not None:
        scores = scores.sort_by([(ORDER, "ascending")]).drop_columns([ORDER])  # oldest first
    merged = merge(clips, scores)
    # a stable order inside the part: by video, then by position in the video
    merged = merged.sort_by([(VIDEO_ID, "ascending"), (START_FRAME, "ascending"), (CLIP_ID, "ascending")])
    write_parquet_atomic(merged, dst)
    return merged.num_rows


def join_scores(
    clip_parts: Sequence[str],
    score_parts: Sequence[str],
    score_columns: list[str],
    merge: Callable[[pa.Table, pa.Table | None], pa.Table],
    outputs: Sequence[str],
    clip_counts: Sequence[int] | None = None,
) -> int:
    """Write `outputs[b]` = merge(clip rows of bucket b, their score rows); returns rows written.

    `score_parts` are oldest first. `merge` runs in the reduce tasks (a module-level function).
    Parts are grouped into map tasks of enough rows that every shuffle object holds at least
    MIN_OBJECT_ROWS rows: the driver holds refs, never rows. `clip_counts`: rows per clip part
    when the caller has them.
    """
    buckets = len(outputs)
    per_map = max(MIN_MAP_ROWS, MIN_OBJECT_ROWS * buckets)
    skip = [c for c in score_columns if c not in (CLIP_ID, STATUS, ERROR, FAILED_STAGE)]
    counts = list(clip_counts) if clip_counts is not None else row_counts(clip_parts)
    clips = [
        _map_clips.options(num_returns=buckets).remote([clip_parts[i] for i in g], skip, buckets)
        for g in group_parts(clip_parts, counts, per_map)
    ]
    scores = [
        _map_scores.options(num_returns=buckets).remote(
            [score_parts[i] for i in g], g, score_columns, buckets
        )
        for g in group_parts(score_parts, row_counts(score_parts), per_map)
    ]

    def nth(refs, b):
        return refs if buckets == 1 else refs[b]

    done = [
        _reduce.remote(
            merge, outputs[b], len(clips), *[nth(r, b) for r in clips], *[nth(r, b) for r in scores]
        )
        for b in range(buckets)
    ]
    return sum(ray.get(done))


def merge_scores(clips: pa.Table, done: pa.Table | None) -> pa.Table:
    """Fill the score group (and score errors) of every clip row from its clip_id's score row.

    `done` is oldest first; a clip re-scored after a filter change: the newer row with an
    embedding wins.
    """
    if done is None:
        done = pa.schema([CLIP_SCHEMA.field(c) for c in SCORE_PART_COLUMNS]).empty_table()
    index: dict[str, int] = {}
    has_emb = done.column(CLIP_EMBEDDING).is_valid().to_pylist()
    for i, cid in enumerate(done.column(CLIP_ID).to_pylist()):
        if cid not in index or has_emb[i] or not has_emb[index[cid]]:
            index[cid] = i
    ids = clips.column(CLIP_ID).to_pylist()
    take = pa.array([index.get(c) for c in ids], pa.int64())
    picked = done.take(take)  # null rows where a clip has no score row
    has = pc.is_valid(take)
    values: dict[str, Any] = {c: picked.column(c) for c in columns_of(SCORE)}
    for c in (STATUS, ERROR, FAILED_STAGE):
        values[c] = pc.if_else(has, picked.column(c), clips.column(c))
    return set_columns(clips, values)


def scored_part(clips: pa.Table, done: pa.Table | None, cfg_hash: str) -> pa.Table:
    """Reduce step of the join: one output part, stamped and validated."""
    table = merge_scores(clips, done)
    table = set_columns(
        table,
        {CONFIG_HASH: [cfg_hash] * table.num_rows, TUBELET_VERSION: [curate.__version__] * table.num_rows},
    )
    validate(table, upto="score")
    return table
