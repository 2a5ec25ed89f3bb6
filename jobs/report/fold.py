"""The report's data side: each folder of OUT folded part by part into bounded aggregates.

A run holds 10^6..10^8 clips, and no process may hold per-clip data for the whole run. So every
fold here reads one part (jobs/report/parts.py, only the columns it needs; never clip_embedding
or latents), adds it into counters, fixed-edge histogram bins and a bounded preview sample,
and lets it go. Memory: O(one part + reasons + bins + previews); time: O(rows), one pass over
each folder plus one footer read per part.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import schema as S
from curate.errors import error_key
from jobs.report import parts
from jobs.report.media import Line, histogram_edges
from jobs.report.outputs import CaptionTally, Histogram, ScoredTally, Tally, is_exact_copy

# Score columns drawn as histograms and shown on each clip card: the numeric/bool ones of the group.
SCORE_COLUMNS = tuple(
    f.name
    for f in S.SCORE.fields
    if pa.types.is_floating(f.type) or pa.types.is_integer(f.type) or pa.types.is_boolean(f.type)
)
# What a clip card and its preview show (jobs/report/html.py `_card`, build.make_previews).
CARD_COLUMNS = (
    S.CLIP_ID,
    S.SOURCE_URI,
    S.START_FRAME,
    S.END_FRAME,
    S.START_PTS,
    S.END_PTS,
    S.STATUS,
    S.FAILED_STAGE,
    S.ERROR,
    S.KEPT,
    S.DROP_REASON,
    S.DUPLICATE_OF,  # the keeper a duplicate's reason links to (outputs.keeper_of)
    S.CAMERA_MOTION,
    S.OCR_TEXT,
    *SCORE_COLUMNS,
)
_STATUS_COLUMNS = (S.STATUS, S.FAILED_STAGE, S.ERROR)
_CAPTION_COUNT_COLUMNS = (S.CLIP_ID, S.STATUS, S.CAPTION_MODEL, S.CAPTION_CLIP_SCORE)
_CAPTION_CARD_COLUMNS = (
    S.CLIP_ID,
    S.STATUS,
    S.ERROR,
    S.CAPTION,
    S.CAPTION_SHORT,
    S.CAPTION_MODEL,
    S.CAPTION_QA,
    S.CAPTION_CLIP_SCORE,
)


def reason_key(drop_reason: str) -> str:
    """The rule part of a drop reason ("sharpness >= 100: sharpness=43.2" -> "sharpness >= 100")."""
    return drop_reason.split(": ", 1)[0]


def is_boolean(column: str) -> bool:
    return pa.types.is_boolean(S.CLIP_SCHEMA.field(column).type)


def _value_counts(values: pa.ChunkedArray) -> list[tuple[Any, int]]:
    """(value, rows) in order of first appearance, nulls included as None."""
    return [(v["values"], v["counts"]) for v in pc.value_counts(values).to_pylist()]


def _count(t: Tally, table: pa.Table, errors: bool = True) -> None:
    """Rows, rows per status and (with `errors`) the error rows by reason."""
    t.rows += table.num_rows
    t.status.update({s: n for s, n in _value_counts(table.column(S.STATUS)) if s is not None})
    if errors:
        err = table.filter(pc.equal(table.column(S.STATUS), S.STATUS_ERROR))
        t.errors.update(
            f"{s}: {error_key(e)}"
            for s, e in zip(err.column(S.FAILED_STAGE).to_pylist(), err.column(S.ERROR).to_pylist())
        )


def _rank(clip_id: Any) -> bytes:
    return hashlib.blake2b(str(clip_id).encode(), digest_size=8).digest()


class PreviewSample:
    """Which clips get a card: per group, the clips with the smallest blake2b(clip_id), kept in
    bounded lists while the parts go by. The choice depends on the clips alone, not on how they
    are split into parts or in which order the parts are read. Groups: kept clips, and clips not
    kept by reason_key (each reason gets its turn, round-robin, so every reason shows)."""

    def __init__(self, max_kept: int, max_dropped: int):
        self.max_kept, self.max_dropped = max_kept, max_dropped
        # important: the not-kept lists hold max(k) each: in an unscored table (no kept
        # decision anywhere) every row lands there and the cards are all drawn from them as 'kept'
        self._cap = max(max_kept, max_dropped)
        self._kept: list[tuple[bytes, str, dict]] = []  # (rank, clip_id, row), ascending, <= max_kept
        self._not_kept: dict[str, list[tuple[bytes, str, dict]]] = {}  # reason -> the same, <= _cap
        self.scored = False  # some row carries a kept decision

    def add(self, table: pa.Table) -> None:
        """Fold one part (CARD_COLUMNS); only the rows that make a list become dicts."""
        ids = table.column(S.CLIP_ID).to_pylist()
        kept = table.column(S.KEPT).to_pylist()
        reasons = table.column(S.DROP_REASON).to_pylist()
        self.scored = self.scored or any(k is not None for k in kept)
        groups: dict[str | None, list[int]] = {}
        for i, k in enumerate(kept):
            groups.setdefault(None if k else reason_key(reasons[i] or ""), []).append(i)
        for group, rows in groups.items():
            held = self._kept if group is None else self._not_kept.setdefault(group, [])
            cap = self.max_kept if group is None else self._cap
            best = heapq.nsmallest(cap, ((_rank(ids[i]), str(ids[i]), i) for i in rows))
            new = zip(best, table.take([i for _, _, i in best]).to_pylist())
            held[:] = heapq.nsmallest(
                cap, [*held, *((r, c, row) for (r, c, _), row in new)], key=lambda x: x[:2]
            )

    def picks(self) -> tuple[list[dict], list[dict]]:
        """(kept rows in clip_id order, dropped rows round-robin over the sorted reasons).
        Unscored: up to max_kept rows of all, as 'kept'."""
        if not self.scored:
            pool = heapq.nsmallest(
                self.max_kept, (x for held in self._not_kept.values() for x in held), key=lambda x: x[:2]
            )
            return sorted((x[2] for x in pool), key=lambda row: str(row[S.CLIP_ID])), []
        kept = sorted((x[2] for x in self._kept), key=lambda row: str(row[S.CLIP_ID]))
        queues = [deque(x[2] for x in self._not_kept[r]) for r in sorted(self._not_kept)]
        dropped: list[dict] = []
        while len(dropped) < self.max_dropped and any(queues):
            for q in queues:
                if q and len(dropped) < self.max_dropped:
                    dropped.append(q.popleft())
        return kept, dropped


def fold_videos(directory: str, problems: list[str]) -> Tally | None:
    """OUT/videos: rows, statuses, error reasons. None when it has no part."""
    found, _ = parts.scan(directory, (), S.VIDEO_SCHEMA, problems)
    if not found:
        return None
    t = Tally()
    for _, table in parts.each(found, _STATUS_COLUMNS, S.VIDEO_SCHEMA, problems):
        _count(t, table)
    return t


def fold_clips(directory: str, problems: list[str], sample: PreviewSample | None = None) -> Tally | None:
    """OUT/clips: rows and statuses; the clips for the cards too when `sample` (nothing scored yet)."""
    found, _ = parts.scan(directory, (), S.CLIP_SCHEMA, problems)
    if not found:
        return None
    t = Tally()
    for _, table in parts.each(
        found, CARD_COLUMNS if sample is not None else (S.STATUS,), S.CLIP_SCHEMA, problems
    ):
        _count(t, table, errors=False)
        if sample is not None:
            sample.add(table)
    return t


def _fold_camera(t: ScoredTally, ok: pa.Table, kept: pa.ChunkedArray) -> None:
    for group, mask in (("kept", kept), ("dropped", pc.invert(kept))):
        for cls, n in _value_counts(ok.column(S.CAMERA_MOTION).filter(mask)):
            if cls:  # measured only
                t.camera.setdefault(cls, {"kept": 0, "dropped": 0})[group] += n


def fold_scored(
    directory: str, lines: Mapping[str, Sequence[Line]], sample: PreviewSample, problems: list[str]
) -> ScoredTally | None:
    """OUT/scored: counts, drops by reason, camera classes, score histograms and the cards.

    The histogram edges are fixed before any row is read: each column's range from the parts'
    footers, widened to the `lines` known up front (rules, thresholds given by hand). A
    percentile cutoff, known only from the drop reasons, lies inside the data's range anyway."""
    from curate.scores.flow import (
        CAMERA_CLASSES,  # the page's class order; lazy: curate.scores.flow imports cv2
    )

    bounded = [c for c in SCORE_COLUMNS if not is_boolean(c)]
    found, bounds = parts.scan(directory, bounded, S.CLIP_SCHEMA, problems)
    if not found:
        return None
    t = ScoredTally(
        hists={
            c: Histogram(
                histogram_edges(bounds.get(c), [ln.value for ln in lines.get(c, [])], boolean=is_boolean(c))
            )
            for c in SCORE_COLUMNS
        }
    )
    for _, table in parts.each(found, CARD_COLUMNS, S.CLIP_SCHEMA, problems):
        _count(t, table)
        kept = pc.fill_null(table.column(S.KEPT), False)
        t.kept += int(pc.sum(kept).as_py() or 0)
        for reason, n in _value_counts(table.column(S.DROP_REASON).filter(pc.invert(kept))):
            t.drops[reason_key(reason or "(no reason recorded)")] += n
        # rows with status=error were never scored: left out of the histograms and camera counts
        ok = table.filter(pc.equal(table.column(S.STATUS), S.STATUS_OK))
        ok_kept = pc.fill_null(ok.column(S.KEPT), False)
        _fold_camera(t, ok, ok_kept)
        flags = ok_kept.to_numpy(zero_copy_only=False).astype(bool)  # (ok rows,)
        for c in SCORE_COLUMNS:
            t.hists[c].add(ok.column(c), flags)
        sample.add(table)
    order = {c: i for i, c in enumerate(CAMERA_CLASSES)}
    t.camera = dict(sorted(t.camera.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
    return t


def find_rows(directory: str, wanted: set[str], problems: list[str]) -> dict[str, dict[str, Any]]:
    """clip_id -> the card row (CARD_COLUMNS) of each `wanted` clip found in the folder, at most one
    each and never an exact duplicate's copy (it shares the clip_id of the row it copies).

    For the keepers of the duplicates shown, so `wanted` is bounded by the cards: the parts'
    clip_id column is read, and a part's card columns only when it holds a wanted clip."""
    found, _ = parts.scan(directory, (), S.CLIP_SCHEMA, problems)
    rows: dict[str, dict[str, Any]] = {}
    for part, table in parts.each(found, (S.CLIP_ID,), S.CLIP_SCHEMA, problems):
        todo = pa.array(sorted(wanted - set(rows)), pa.string())
        if not len(todo):
            break
        if not pc.any(pc.is_in(table.column(S.CLIP_ID), value_set=todo)).as_py():
            continue
        for _, full in parts.each([part], CARD_COLUMNS, S.CLIP_SCHEMA, problems):
            for row in full.filter(pc.is_in(full.column(S.CLIP_ID), value_set=todo)).to_pylist():
                if not is_exact_copy(row):
                    rows.setdefault(str(row[S.CLIP_ID]), row)
    return rows


def fold_captions(directory: str, shown: set[str], problems: list[str]) -> CaptionTally | None:
    """OUT/captions: counts, the smoke flag, the caption_clip_score histogram, and the caption rows
    of the `shown` clips (read again, whole, only from a part whose clip_id column has one).

    Rows are counted as they are: a clip captioned twice (only possible in a crash window the
    caption job reconciles) counts twice, as deduplicating would take a set of every clip_id."""
    found, bounds = parts.scan(directory, (S.CAPTION_CLIP_SCORE,), S.CLIP_SCHEMA, problems)
    if not found:
        return None
    t = CaptionTally(hist=Histogram(histogram_edges(bounds.get(S.CAPTION_CLIP_SCORE), [])))
    wanted = pa.array(sorted(shown), pa.string())
    for part, table in parts.each(found, _CAPTION_COUNT_COLUMNS, S.CLIP_SCHEMA, problems):
        _count(t, table, errors=False)
        models = pc.fill_null(table.column(S.CAPTION_MODEL), "")
        t.smoke = t.smoke or bool(pc.any(pc.starts_with(models, "smoke")).as_py())
        ok = table.filter(pc.equal(table.column(S.STATUS), S.STATUS_OK))
        t.hist.add(ok.column(S.CAPTION_CLIP_SCORE), np.ones(ok.num_rows, bool))
        if len(wanted) and pc.any(pc.is_in(table.column(S.CLIP_ID), value_set=wanted)).as_py():
            t.by_clip.update(_caption_rows(part, wanted, problems))  # a later part wins, as before
    return t


def _caption_rows(part: parts.Part, wanted: pa.Array, problems: list[str]) -> dict[str, dict[str, Any]]:
    """clip_id -> caption row, for the `wanted` clips of one part (its text columns, read once more)."""
    for _, full in parts.each([part], _CAPTION_CARD_COLUMNS, S.CLIP_SCHEMA, problems):
        rows = full.filter(pc.is_in(full.column(S.CLIP_ID), value_set=wanted)).to_pylist()
        return {r[S.CLIP_ID]: r for r in rows}
    return {}
