"""Decisions propagate: finished downstream work is kept only for the clips the current input still wants.

A re-decision (`jobs.filter`, or `jobs.score` with other rules) changes which clips are kept.
Caption and encode resume from their finished parts; before they do, every finished part is
checked against the clips the current input wants (kept, and for encode captioned):

- a part whose clips are all wanted stays as it is;
- a caption part holding clips no longer kept is rewritten without them (no model runs): its
  marker goes first, then the smaller part and its marker are written, then the old part goes,
  so a kill at any point leaves at most an unmarked part, which the next run removes;
- an encode batch holding a clip no longer wanted is dropped (marker, then index part; its
  shards leave the manifest) and its still-wanted clips are encoded again with the new ones.

The wanted set is built by a Ray task and handed to the checks by reference; the driver holds
file names and one flag per part, never clip rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from curate.io import storage
from curate.schema import CLIP_ID

Mask = Callable[[pa.Table], Any]  # a table -> one bool per row (a list or a pyarrow array)


def _wanted_of(paths: list[str], columns: list[str], where: Mask) -> frozenset[str]:
    ids: set[str] = set()
    for p in paths:
        t = storage.read_table(p, columns=list(dict.fromkeys([CLIP_ID, *columns])))
        mask = where(t)
        ids.update(c for c, ok in zip(t.column(CLIP_ID).to_pylist(), list(mask)) if bool(ok))
    return frozenset(ids)


def wanted_ref(paths: list[str], columns: list[str], where: Mask) -> Any:
    """The clip ids of `paths` whose rows pass `where` (reading `columns`), as a Ray object ref."""
    import ray  # here, not at import: an entry point's --help and flag checks start no Ray

    return ray.remote(_wanted_of).remote(list(paths), list(columns), where)


def all_wanted(part: str, wanted: Any) -> bool:
    """Ray task: every clip of `part` is still wanted (a part with no rows is wanted only when nothing is)."""
    from jobs.runtime.adapter import resolve

    ids = resolve(wanted)
    have = storage.read_table(part, columns=[CLIP_ID]).column(CLIP_ID).to_pylist()
    return all(c in ids for c in have) if have else not ids


def check_parts(parts: list[str], wanted: Any) -> list[bool]:
    """One Ray task per finished part: is every clip it holds still wanted?"""
    from jobs.runtime.adapter import run_tasks

    return [bool(ok) for ok in run_tasks(all_wanted, parts, wanted, num_cpus=0.25)]
