"""The report's reads of OUT's Parquet parts, one part at a time, local or on object storage.

`scan` reads only the footers (O(files)): each part's columns and, from the row-group
statistics, the finite range of the score columns, which fixes the histogram bins before any
row is read. `read_part` is the one place rows are read: one part, only the columns asked for.
jobs/report/fold.py folds the parts it returns into bounded aggregates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import schema as S
from curate.errors import one_line
from curate.io import storage

Bounds = tuple[float, float]  # finite (min, max) of a column


@dataclass(frozen=True)
class Part:
    uri: str
    rows: int  # from the footer
    columns: frozenset[str]  # the top-level columns the part has (older parts may lack newer ones)


def list_parts(directory: str) -> list[str]:
    """The `*.parquet` parts of a folder or prefix, sorted (hidden and `_` files are not parts)."""
    return [p for p in storage.list_files(directory, ".parquet") if not storage.basename(p).startswith("_")]


def _merge(a: Bounds | None, b: Bounds | None) -> Bounds | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), max(a[1], b[1])


def _footer_bounds(md: pq.FileMetaData, column: str) -> tuple[Bounds | None, bool]:
    """(finite range over the row groups, whether the statistics sufficed). They do not when a row
    group with values has no min/max (all NaN, or a writer that wrote none) or an infinite one."""
    index = {md.schema.column(j).path: j for j in range(md.num_columns)}
    if column not in index:
        return None, True
    got: Bounds | None = None
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(index[column]).statistics
        if st is not None and st.has_null_count and st.null_count == md.row_group(g).num_rows:
            continue  # only nulls: nothing to bound
        if st is None or not st.has_min_max:
            return None, False
        lo, hi = float(st.min), float(st.max)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None, False
        got = _merge(got, (lo, hi))
    return got, True


def _read_bounds(part: Part, column: str, schema: pa.Schema) -> Bounds | None:
    """The fallback: read the one column of the one part and take its finite range."""
    values = read_part(part, [column], schema).column(column).cast(pa.float64())
    arr = pc.fill_null(values, math.nan).to_numpy()
    arr = arr[np.isfinite(arr)]
    return (float(arr.min()), float(arr.max())) if arr.size else None


def scan(
    directory: str, bounded: Sequence[str], schema: pa.Schema, problems: list[str]
) -> tuple[list[Part], dict[str, Bounds]]:
    """The readable parts of a folder, and the finite range of each `bounded` column over all of
    them (absent: no finite value). Cost: one footer read per part; a part without usable
    statistics for a column reads that column once more. An unreadable part is a problem, skipped."""
    parts: list[Part] = []
    bounds: dict[str, Bounds | None] = {}
    for uri in list_parts(directory):
        try:
            fs, path = storage.filesystem(uri)
            with fs.open_input_file(path) as f:
                md = pq.ParquetFile(f).metadata
            part = Part(uri, md.num_rows, frozenset(md.schema.to_arrow_schema().names))
            for col in bounded:
                got, enough = _footer_bounds(md, col)
                bounds[col] = _merge(bounds.get(col), got if enough else _read_bounds(part, col, schema))
        except (OSError, pa.ArrowException) as e:
            problems.append(f"unreadable part {uri}: {one_line(e)}")
            continue
        parts.append(part)
    return parts, {c: b for c, b in bounds.items() if b is not None}


def read_part(part: Part, columns: Sequence[str], schema: pa.Schema = S.CLIP_SCHEMA) -> pa.Table:
    """One part's `columns` (missing ones as nulls), typed as in `schema`."""
    want = pa.schema([schema.field(c) for c in columns])
    return S.conform(storage.read_table(part.uri, columns=[c for c in columns if c in part.columns]), want)


def each(
    parts: Sequence[Part], columns: Sequence[str], schema: pa.Schema, problems: list[str]
) -> Iterator[tuple[Part, pa.Table]]:
    """The parts' `columns`, one part at a time: the caller folds it and lets it go."""
    for part in parts:
        try:
            table = read_part(part, columns, schema)
        except (OSError, pa.ArrowException) as e:
            problems.append(f"unreadable part {part.uri}: {one_line(e)}")
            continue
        yield part, table
