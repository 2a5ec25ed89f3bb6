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
