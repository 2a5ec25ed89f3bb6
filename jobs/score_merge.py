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
from curate.decide import read_columns
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

SCORE_PART_COLUMNS = [CLIP_ID, *columns_of(SCORE), STATUS, ERROR, FAILED_STAGE]  # what the score parts hold
ORDER = "_order"  # position of a score part, oldest first: a newer score row wins in the merge


def bucket_of(clip_ids: Sequence[str], buckets: int) -> np.ndarray:
    """A stable bucket per clip id (the same on every worker and every run)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(c.encode(), digest_size=8).digest(), "little") % buckets
                        for c in clip_ids), dtype=np.int64, count=len(clip_ids))


def split_by_bucket(table: pa.Table, buckets: int) -> list[pa.Table]:
    b = bucket_of(table.column(CLIP_ID).to_pylist(), buckets)
    return [table.take(pa.array(np.flatnonzero(b == i))) for i in range(buckets)]


def _out(tables: list[pa.Table], buckets: int) -> tuple | pa.Table:
    return tuple(tables) if buckets > 1 else tables[0]


@ray.remote
def _map_clips(path: str, skip: list[str], buckets: int):
    import pyarrow.parquet as pq

    from curate import storage

    fs, local = storage.filesystem(path)
    have = pq.read_schema(local, filesystem=fs).names
    # the score group comes from the score side: not read, not shuffled
    table = conform(read_columns(path, [c for c in have if c not in skip]), CLIP_SCHEMA)
    return _out(split_by_bucket(table, buckets), buckets)


@ray.remote
def _map_scores(path: str, order: int, columns: list[str], buckets: int):
    t = read_columns(path, columns)
    t = t.append_column(ORDER, pa.array(np.full(t.num_rows, order, np.int64)))
    return _out(split_by_bucket(t, buckets), buckets)


@ray.remote
def _reduce(merge: Callable[[pa.Table, pa.Table], pa.Table], dst: str, n_clips: int, *tables: pa.Table) -> int:
    from curate.storage import write_parquet_atomic

    clips = pa.concat_tables(tables[:n_clips])
    scores = pa.concat_tables(tables[n_clips:]) if len(tables) > n_clips else None
    if scores is not None:
        scores = scores.sort_by([(ORDER, "ascending")]).drop_columns([ORDER])  # oldest first
    merged = merge(clips, scores)
    # a stable order inside the part: by video, then by position in the video
    merged = merged.sort_by([(VIDEO_ID, "ascending"), (START_FRAME, "ascending"), (CLIP_ID, "ascending")])
    write_parquet_atomic(merged, dst)
    return merged.num_rows


def join_scores(clip_parts: Sequence[str], score_parts: Sequence[str], score_columns: list[str],
                merge: Callable[[pa.Table, pa.Table | None], pa.Table], outputs: Sequence[str]) -> int:
    """Write `outputs[b]` = merge(clip rows of bucket b, their score rows); returns rows written.

    `score_parts` are oldest first. `merge` runs in the reduce tasks (a module-level function).
    """
    buckets = len(outputs)
    skip = [c for c in score_columns if c not in (CLIP_ID, STATUS, ERROR, FAILED_STAGE)]
    clips = [_map_clips.options(num_returns=buckets).remote(p, skip, buckets) for p in clip_parts]
    scores = [_map_scores.options(num_returns=buckets).remote(p, i, score_columns, buckets)
              for i, p in enumerate(score_parts)]

    def nth(refs, b):
        return refs if buckets == 1 else refs[b]

    done = [_reduce.remote(merge, outputs[b], len(clips), *[nth(r, b) for r in clips],
                           *[nth(r, b) for r in scores]) for b in range(buckets)]
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
    table = set_columns(table, {CONFIG_HASH: [cfg_hash] * table.num_rows,
                                TUBELET_VERSION: [curate.__version__] * table.num_rows})
    validate(table, upto="score")
    return table
