"""A guard for tests of jobs whose driver must hold O(files), never clip rows."""

from __future__ import annotations

import contextlib

import pyarrow.parquet as pq
import pytest


@contextlib.contextmanager
def driver_reads_no_rows():
    """Parquet rows may be read by the Ray workers only: in this (the driver's) process any
    read of a part's data fails the test; footers (row counts) stay readable."""

    def boom(*a, **k):
        raise AssertionError("the driver read Parquet rows")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pq, "read_table", boom)
        mp.setattr(pq.ParquetFile, "read", boom)
        mp.setattr(pq.ParquetFile, "iter_batches", boom)
        yield
