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

import numpy as np
import pyarrow as pa
import ray

from curate.decide import read_columns
from curate.schema import CLIP_ID, CLIP_SCHEMA, START_FRAME, VIDEO_ID, conform

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
def _map_clips(path: str, buckets: int):
    return _out(split_by_bucket(conform(read_columns(path), CLIP_SCHEMA), buckets), buckets)


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
    clips = [_map_clips.options(num_returns=buckets).remote(p, buckets) for p in clip_parts]
    scores = [_map_scores.options(num_returns=buckets).remote(p, i, score_columns, buckets)
              for i, p in enumerate(score_parts)]

    def nth(refs, b):
        return refs if buckets == 1 else refs[b]

    done = [_reduce.remote(merge, outputs[b], len(clips), *[nth(r, b) for r in clips],
                           *[nth(r, b) for r in scores]) for b in range(buckets)]
    return sum(ray.get(done))
