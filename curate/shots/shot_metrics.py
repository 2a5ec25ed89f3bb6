"""Accuracy of shot-boundary detection against ground truth (shot_boundaries.json conventions).

A cut at N means frame N is the first frame of the new shot; gradual transitions and black
segments are inclusive [first, last] ranges whose frames must not appear in any clip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CutScore:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: CutScore) -> CutScore:
        return CutScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def match_cuts(pred: Iterable[int], truth: Iterable[int], tolerance: int = 0) -> CutScore:
    """Greedy one-to-one matching of predicted to true cuts within +-tolerance frames."""
    pred = sorted(set(pred))
    free = sorted(set(truth))
    tp = 0
    for p in pred:
        best = min((t for t in free if abs(t - p) <= tolerance), key=lambda t: abs(t - p), default=None)
        if best is not None:
            free.remove(best)
            tp += 1
    return CutScore(tp, len(pred) - tp, len(free))


def forbidden_frames(gt: dict) -> list[tuple[int, int, str]]:
    """Inclusive frame ranges of one video's gradual transitions and black segments."""
    out = [(g["range"][0], g["range"][1], g["type"]) for g in gt.get("gradual", [])]
    out += [(a, b, "black") for a, b in gt.get("black_frames", [])]
    return out


def clips_touching(spans: Sequence[tuple[int, int]], ranges: Sequence[tuple[int, int, str]]) -> list[str]:
    """Descriptions of clips [start, end) that contain a frame of an inclusive forbidden range."""
    bad = []
    for s, e in spans:
        for a, b, kind in ranges:
            if s <= b and a < e:
                bad.append(f"clip [{s},{e}) overlaps {kind} [{a},{b}]")
    return bad


def clips_crossing_cuts(spans: Sequence[tuple[int, int]], cuts: Sequence[int]) -> list[str]:
    """Clips [start, end) that contain a true cut strictly inside (they span two shots)."""
    return [f"clip [{s},{e}) crosses cut {c}" for s, e in spans for c in cuts if s < c < e]


@dataclass(frozen=True)
class LabelScore:
    """How a detector's clips fit per-frame ground truth (shot id per frame, -1 in a transition)."""

    clips: int
    clips_with_transition_frames: int  # clips holding a frame of a transition
    clips_mixing_shots: int  # clips holding frames of two shots
    coverage: float  # share of shot frames inside some clip
    cut_starts: float  # share of true hard cuts where a clip starts exactly (1.0 when none)
    wrongly_split: int  # shots with a predicted cut, or an excluded range, strictly inside them
    false_cuts: int  # predicted cuts that start no true shot


def judge_labels(
    labels: Sequence[int],
    true_cuts: Sequence[int],
    spans: Sequence[tuple[int, int]],
    pred_cuts: Sequence[int],
    excluded: Sequence[tuple[int, int]],
) -> LabelScore:
    """Score clips [start, end) and a detector's cuts and excluded ranges against `labels`."""
    import numpy as np

    lab = np.asarray(labels)
    covered = np.zeros(len(lab), bool)
    with_tr = mixing = 0
    for s, e in spans:
        covered[s:e] = True
        ids = set(lab[s:e].tolist())
        with_tr += -1 in ids
        mixing += len(ids - {-1}) > 1
    shot = lab >= 0
    starts = {s for s, _ in spans}
    shot_starts = {int(i) for i in np.flatnonzero(shot) if i == 0 or lab[i - 1] != lab[i]}
    merged: list[tuple[int, int]] = []  # touching ranges (a fade-in, then a model span after it) are one
    for a, b in sorted(excluded):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    split = 0
    for sid in range(int(lab.max()) + 1 if len(lab) else 0):
        idx = np.flatnonzero(lab == sid)
        first, last = int(idx[0]), int(idx[-1])
        inner_cut = any(first < c <= last for c in pred_cuts)
        inner_range = any(first < a and b < last for a, b in merged)
        split += inner_cut or inner_range
    return LabelScore(
        clips=len(spans),
        clips_with_transition_frames=with_tr,
        clips_mixing_shots=mixing,
        coverage=float(covered[shot].mean()) if shot.any() else 1.0,
        cut_starts=sum(c in starts for c in true_cuts) / len(true_cuts) if len(true_cuts) else 1.0,
        wrongly_split=split,
        false_cuts=sum(c not in shot_starts for c in pred_cuts),
    )
