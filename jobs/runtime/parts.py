"""The one resumable part writer every job writes through, its lister and its drain of counts.

A writer task gets a batch of clip rows and writes, in this order:

1. the rows sorted by clip id, as one Parquet object written whole (`part-<key>.parquet`);
   the key is one digest of the clip ids it holds (and a salt, e.g. a resume key), so the same
   clips give the same name and the same bytes whichever job wrote them;
2. whatever the part carries beside it (latent shards: `write_shards`), from the same sorted rows;
3. its marker `OUT/_done/<stage>/<key>` with the resume key and counts, last: a part without
   its marker (a kill between the writes) is removed or redone by the next run.

The task returns one row of counts; `drain` sums them on the driver, which never sees clip rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import schema as S
from curate.io import layout, storage
from curate.io.uri import remote_io
from jobs.runtime.progress import Progress

SHARD_ROW_GROUP_ROWS = 64  # rows per row group of a latent shard (both writers of shards)


@dataclass(frozen=True)
class PartSpec:
    """Where a stage's parts and markers go and under which resume key."""

    folder: str  # the part-*.parquet folder
    root: str  # the run root: markers go under root/_done/<stage>/
    stage: str
    cfg_hash: str
    salt: str = ""  # mixed into the part key (encode: its resume key, so another config never reuses a name)


Beside = Callable[[pa.Table, str], dict[str, Any]]  # (sorted rows, key) -> marker fields


def write_part(
    batch: pa.Table,
    spec: PartSpec,
    select: Callable[[pa.Table], pa.Table] | None = None,
    beside: Beside | None = None,
    **info: Any,
) -> str:
    """Write `batch` as one part (sorted by clip id; `select` picks what the part stores), then
    `beside`'s objects, then the marker (with `info` and `beside`'s fields). Returns the key."""
    batch = batch.sort_by(S.CLIP_ID)  # important: the same clips give the same bytes on every path
    ids = batch.column(S.CLIP_ID).to_pylist()
    key = layout.part_key(ids, salt=spec.salt)
    part = select(batch) if select else batch
    storage.write_parquet_atomic(part, layout.part_path(spec.folder, key))
    extra = beside(batch, key) if beside else {}
    # important: the marker last; a part without one is redone on the next run
    storage.mark_done(spec.root, spec.stage, key, spec.cfg_hash, rows=part.num_rows, **info, **extra)
    return key


def write_shards(
    batch: pa.Table,
    latents: str,
    key: str,
    meta: dict[str, Any],
    max_rows: int,
    max_bytes: int = 1 << 30,
    row_group_rows: int = SHARD_ROW_GROUP_ROWS,
) -> list[dict[str, Any]]:
    """The encoded rows of a sorted batch as latent shards `shard-<key>-NNNNN.parquet`; returns
    their manifest entries (the manifest itself is merged by the driver from every marker)."""
    from latents.encode import ROUNDTRIP_PSNR
    from latents.shards import ShardWriter

    ok = pc.and_(pc.equal(batch.column(S.STATUS), S.STATUS_OK), pc.is_valid(batch.column(S.LATENT)))
    enc = batch.filter(pc.fill_null(ok, False))
    if (
        S.CLIP_EMBEDDING in enc.column_names
    ):  # a score, not training data: shards never carry it (both writers)
        i = enc.schema.get_field_index(S.CLIP_EMBEDDING)
        enc = enc.set_column(i, enc.schema.field(i), pa.nulls(enc.num_rows, enc.schema.field(i).type))
    with ShardWriter(
        latents,
        meta,
        max_rows=max_rows,
        max_bytes=max_bytes,
        row_group_rows=row_group_rows,
        metric_columns=(ROUNDTRIP_PSNR,),
        run_id=key,
        write_manifest=False,
    ) as writer:
        writer.write(enc)
    return writer.shards


def finished(spec: PartSpec, remove_others: bool = False) -> list[str]:
    """The parts of `spec.folder` whose marker carries `spec.cfg_hash` (O(files): no rows read);
    with `remove_others`, every other part (another config, or a kill before its marker) is deleted."""
    done = []
    for part in storage.list_parts(spec.folder):
        if storage.is_done(spec.root, spec.stage, layout.key_of(part), spec.cfg_hash):
            done.append(part)
        elif remove_others:
            storage.delete(part)
    return done


def drop_holding(spec: PartSpec, video_ids: Iterable[str]) -> list[str]:
    """Delete the parts of `spec.folder` that hold a row of `video_ids` (retracted content), each
    before its marker; returns the source_uris of their other rows, whose work is to be redone.
    Reads two columns of every part: for the rare run in which a source changed."""
    wanted = set(video_ids)
    redo: set[str] = set()
    for part in storage.list_parts(spec.folder):
        t = storage.read_table(part, columns=[S.VIDEO_ID, S.SOURCE_URI])
        vids = t.column(S.VIDEO_ID).to_pylist()
        if wanted.isdisjoint(vids):
            continue
        redo.update(u for v, u in zip(vids, t.column(S.SOURCE_URI).to_pylist()) if v not in wanted)
        storage.delete(part)
        storage.delete(layout.marker(spec.root, spec.stage, layout.key_of(part)))
    return sorted(redo)


@remote_io()  # one request on object storage: retried when it stalls
def footer(part: str) -> pq.FileMetaData:
    """A part's Parquet footer (row counts, per-column statistics and null counts): one request
    on object storage, no rows read. The one footer reader of the jobs."""
    fs, path = storage.filesystem(part)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata


def counts(**n: int) -> pa.Table:
    """A writer task's one row of counts (`drain` sums them)."""
    return pa.table({k: [int(v)] for k, v in n.items()})


def no_counts(*names: str) -> pa.Table:
    return pa.table({k: pa.array([], pa.int64()) for k in names})


def drain(ds: Any, progress: Progress | None = None, counted: tuple[str, ...] = ("rows",)) -> dict[str, int]:
    """Run a plan whose last step returns rows of counts: the driver sees the sums only; the
    `counted` columns move `progress` as each batch of counts arrives."""
    totals: dict[str, int] = {}
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for c in b.column_names:
            totals[c] = totals.get(c, 0) + int(pc.sum(b.column(c)).as_py() or 0)
        if progress is not None:
            progress.add(sum(int(pc.sum(b.column(c)).as_py() or 0) for c in counted if c in b.column_names))
    if progress is not None:
        progress.close()
    return totals
