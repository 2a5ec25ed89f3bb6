"""What the stages left under OUT, as the report folds it (jobs/report/fold.py fills it,
jobs/report/html.py draws it; kept apart so neither imports the other).

Everything here is bounded by the number of reasons, classes, bins and previews, never by the
number of clips: a run of 10^8 clips folds into the same few kilobytes as a run of ten.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate import schema as S
from curate.decisions.filters import EXACT_DUP, NEAR_DUP

_NEAR_DUP_KEEPER = re.compile(r" with (\S+)$")  # "near_duplicate: cosine=0.99 >= 0.95 with <clip_id>"
# as curate.decisions words it: "exact_duplicate: same content and span as <source_uri>"
_EXACT_DUP_PREFIX = f"{EXACT_DUP}: same content and span as "


@dataclass
class Histogram:
    """Bin counts of one score over fixed `edges` (chosen before any row is read), kept and dropped apart."""

    edges: np.ndarray  # (bins + 1,)
    kept: np.ndarray = field(init=False)  # (bins,) int64
    dropped: np.ndarray = field(init=False)
    rows: int = 0  # rows that could carry a value (status ok)
    with_value: int = 0  # of those, non-null (NaN included)
    finite: int = 0  # of those, finite: what the bins count

    def __post_init__(self) -> None:
        self.kept = np.zeros(len(self.edges) - 1, np.int64)
        self.dropped = np.zeros(len(self.edges) - 1, np.int64)

    def add(self, values: pa.ChunkedArray | pa.Array, kept: np.ndarray) -> None:
        """Fold one part's values (status-ok rows) and their kept flags (bool, same length)."""
        self.rows += len(values)
        self.with_value += len(values) - values.null_count
        v = pc.fill_null(values.cast(pa.float64()), np.nan).to_numpy()  # (n,)
        ok = np.isfinite(v)
        # important: clip to the edges: a value a hair outside them (a float64 part read as
        # float32, a footer range rounded) still lands in the end bin, so the bins add up to `finite`
        v = np.clip(v[ok], self.edges[0], self.edges[-1])
        self.kept += np.histogram(v[kept[ok]], self.edges)[0]
        self.dropped += np.histogram(v[~kept[ok]], self.edges)[0]
        self.finite += int(ok.sum())


@dataclass
class Tally:
    """One folder of parts, folded: rows, rows per status, error rows by reason."""

    rows: int = 0
    status: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # f"{failed_stage}: {error_key(error)}" -> rows


@dataclass
class ScoredTally(Tally):
    kept: int = 0
    drops: Counter[str] = field(default_factory=Counter)  # reason_key(drop_reason) -> rows not kept
    camera: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> {"kept": n, "dropped": n}
    hists: dict[str, Histogram] = field(default_factory=dict)  # score column -> its bins


@dataclass
class CaptionTally(Tally):
    smoke: bool = False  # some caption_model is a smoke (random) model
    hist: Histogram | None = None  # caption_clip_score of status-ok captions
    by_clip: dict[str, dict[str, Any]] = field(default_factory=dict)  # the caption rows of the clips shown


@dataclass
class RunOutputs:
    """What the stages left under OUT; None where a stage has not written anything."""

    out: str  # the run's OUT: a local folder or a URI
    videos: Tally | None = None
    clips: Tally | None = None
    scored: ScoredTally | None = None
    funnel: dict[str, Any] | None = None  # OUT/scored/_funnel.json
    captions: CaptionTally | None = None
    manifest: dict[str, Any] | None = None
    shown_kept: list[dict[str, Any]] = field(default_factory=list)  # the clip rows shown as cards
    shown_dropped: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def stages(self) -> dict[str, bool]:
        """Stage -> whether its output exists."""
        return {
            "split": self.videos is not None or self.clips is not None,
            "score + filter": self.scored is not None,
            "caption": self.captions is not None,
            "encode": self.manifest is not None,
        }


def is_exact_copy(row: Mapping[str, Any]) -> bool:
    """Whether a clip row was dropped as an exact duplicate: it shares its clip_id with its keeper."""
    return str(row.get(S.DROP_REASON) or "").startswith(f"{EXACT_DUP}:")


def keeper_of(row: Mapping[str, Any]) -> tuple[str, str] | None:
    """(the keeper's clip_id, the text of drop_reason that names the keeper) for a duplicate, else None.

    A near duplicate's reason names the keeper's clip_id. An exact duplicate's names the keeper's
    source_uri, as both rows have the same clip_id. `duplicate_of` holds the id for both kinds;
    the reason's own text stands in for it on rows written without that column."""
    reason = str(row.get(S.DROP_REASON) or "")
    if reason.startswith(f"{NEAR_DUP}:"):
        m = _NEAR_DUP_KEEPER.search(reason)
        keeper = row.get(S.DUPLICATE_OF) or (m[1] if m else None)
        return (str(keeper), str(keeper)) if keeper else None
    if is_exact_copy(row):
        named = reason.removeprefix(_EXACT_DUP_PREFIX) if reason.startswith(_EXACT_DUP_PREFIX) else ""
        return str(row.get(S.DUPLICATE_OF) or row[S.CLIP_ID]), named
    return None
