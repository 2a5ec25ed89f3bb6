"""Keep/drop decisions: pure predicates from config, applied cheapest first, with reasons.

A rule keeps a clip when `column op threshold` holds (absolute) or when the clip is within
the best `share` of the clips that reached the rule (percentile of the run: "keep the top
70% by aesthetic"). Rules run in cost order, so a clip failing a cheap rule is never scored
by a model:

  0. status=error rows (never decoded), then exact duplicates (metadata only);
  1. cheap absolute rules: checked per clip in the CPU step, before anything else (`cheap_gate`);
  2. frame-model absolute rules (optical flow, OCR text area, NSFW: small ONNX models and
     OpenCV on the same decoded frames, in the CPU step), each scorer run only on clips
     that passed every rule before it, cheapest scorer first (`FRAME_SCORERS`, `cpu_gate`);
  3. cheap then frame-model percentile rules (need the whole run; applied on the driver);
  4. model absolute rules, then near-duplicates (clip_embedding cosine), then model
     percentile rules, so a percentile is taken over unique clips.

Every clip keeps its row: `kept`, and for a dropped clip a `drop_reason` naming the first
rule it failed and its value, e.g. "sharpness >= 100: sharpness=43.2".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from curate.decisions import dedup
from curate.errors import UsageError
from curate.schema import (
    AESTHETIC,
    BLACK_FRACTION,
    BRIGHTNESS,
    CLIP_EMBEDDING,
    CLIP_ID,
    DROP_REASON,
    DROP_RULE,
    DUPLICATE_OF,
    FAILED_STAGE,
    FLOW_MAGNITUDE,
    IS_STATIC,
    KEPT,
    MOTION,
    NSFW,
    SHARPNESS,
    SOURCE_URI,
    STATUS,
    STATUS_OK,
    TEXT_AREA,
    TEXT_BOXES,
    set_columns,
)

CHEAP_COLUMNS = (MOTION, SHARPNESS, BRIGHTNESS, BLACK_FRACTION, IS_STATIC)
# Scorers of the CPU step after the cheap gate, in cost order (`python -m jobs.bench score
# --real-videos DIR`: flow ~44 ms, NSFW ~340 ms, OCR ~580 ms per real clip on one shared core,
# against ~570 ms to decode it), with the columns each fills.
FRAME_SCORERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("flow", (FLOW_MAGNITUDE,)),
    ("nsfw", (NSFW,)),
    ("ocr", (TEXT_AREA, TEXT_BOXES)),
)
FRAME_COLUMNS = tuple(c for _, cols in FRAME_SCORERS for c in cols)
MODEL_COLUMNS = (AESTHETIC,)
EXACT_DUP = "exact_duplicate"
NEAR_DUP = "near_duplicate"


@dataclass(frozen=True)
class Rule:
    """Keep when `column op threshold`, or (with `share`) when among the best `share` of the run.

    op ">=": high is good (percentile keeps the top share); "<=": low is good (the bottom share).
    """

    column: str
    op: Literal[">=", "<="]
    threshold: float | None = None
    share: float | None = None

    @property
    def name(self) -> str:
        if self.share is not None:
            return f"{self.column} {'top' if self.op == '>=' else 'bottom'} {self.share:.0%}"
        return f"{self.column} {self.op} {self.threshold:g}"

    @property
    def cheap(self) -> bool:
        return self.column in CHEAP_COLUMNS

    @property
    def frame(self) -> bool:
        """Decided in the CPU step by a frame model (flow, NSFW, OCR), before CLIP."""
        return self.column in FRAME_COLUMNS


@dataclass(frozen=True)
class FilterConfig:
    rules: tuple[Rule, ...] = ()
    exact_dedup: bool = True
    near_dup_cosine: float | None = 0.95  # None: no near-duplicate removal


# Starting points for real data (scores measured at analysis_short_side=224): drop mostly-black
# clips, static clips (stills, slides) and blurry ones; NSFW above 0.6 (NudeNet reports parts
# from 0.2; on ordinary footage, single frames of a cartoon or a dark scene reach 0.4-0.5 for
# an exposed class, so 0.6 keeps such false positives rare); text covering
# more than 5% of the frame (one subtitle line of 720p video covers 2-4%; slides, title
# cards and screen recordings 10% and more); aesthetic >= 4.5 then keep the top 80%.
NSFW_MAX = 0.6
TEXT_AREA_MAX = 0.05
DEFAULT = FilterConfig(
    rules=(
        Rule(BLACK_FRACTION, "<=", 0.2),
        Rule(IS_STATIC, "<=", 0.0),
        Rule(SHARPNESS, ">=", 100.0),
        Rule(NSFW, "<=", NSFW_MAX),
        Rule(TEXT_AREA, "<=", TEXT_AREA_MAX),
        Rule(AESTHETIC, ">=", 4.5),
        Rule(AESTHETIC, ">=", share=0.8),
    ),
    near_dup_cosine=0.95,
)
# Smoke: the same cascade shape; OCR and NSFW are real (real weights in every preset), the
# aesthetic rule exercises the percentile path on random scores.
SMOKE = FilterConfig(
    rules=(
        Rule(BLACK_FRACTION, "<=", 0.5),
        Rule(IS_STATIC, "<=", 0.0),
        Rule(NSFW, "<=", NSFW_MAX),
        Rule(TEXT_AREA, "<=", TEXT_AREA_MAX),
        Rule(AESTHETIC, ">=", share=0.7),
    ),
    near_dup_cosine=0.999,  # a random tiny CLIP maps every frame close together
)


def check_config(cfg: FilterConfig) -> None:
    """Fail fast on a rule that can't work, naming the rule, the value seen and the fix."""
    known = CHEAP_COLUMNS + FRAME_COLUMNS + MODEL_COLUMNS
    for r in cfg.rules:
        if r.column not in known:
            raise UsageError(
                f"filter column must be one of {list(known)}, got {r.column!r}; use a score column"
            )
        if r.op not in (">=", "<="):
            raise UsageError(f"filter op must be '>=' or '<=', got {r.op!r} in rule on {r.column}")
        if (r.threshold is None) == (r.share is None):
            raise UsageError(
                f"rule on {r.column} must set exactly one of threshold= or share=, "
                f"got threshold={r.threshold}, share={r.share}"
            )
        if r.share is not None and not 0 < r.share <= 1:
            raise UsageError(
                f"share must be in (0, 1], got {r.share} in rule on {r.column}; e.g. 0.7 keeps 70%"
            )
    if cfg.near_dup_cosine is not None and not -1 <= cfg.near_dup_cosine <= 1:
        raise UsageError(f"near_dup_cosine must be in [-1, 1], got {cfg.near_dup_cosine}; e.g. 0.95")


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    return f"{float(v):.4g}"


def passes(rule: Rule, value: Any) -> bool:
    """An absolute rule on one value; a missing value fails."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    v, t = float(value), float(rule.threshold)  # bools compare as 0/1
    return v >= t if rule.op == ">=" else v <= t


def reason(rule: Rule, value: Any, cutoff: float | None = None) -> str:
    where = f" (cutoff {_fmt(cutoff)})" if cutoff is not None else ""
    return f"{rule.name}{where}: {rule.column}={_fmt(value)}"


def rule_of(drop_reason: str | None) -> str | None:
    """The rule a drop reason names, without its threshold or value, so that one rule counts as
    one value: "aesthetic >= 4.5: aesthetic=4.1" -> "aesthetic", "status=error (...)" -> "status",
    "near_duplicate: cosine=..." -> "near_duplicate"."""
    if drop_reason is None:
        return None
    if drop_reason.startswith("status="):
        return "status"
    return drop_reason.split(":", 1)[0].split(" ", 1)[0]


def cheap_gate(cfg: FilterConfig, scores: Mapping[str, Any]) -> str | None:
    """The first absolute cheap rule a clip's cheap scores fail (its drop reason), or None."""
    for r in cfg.rules:
        if r.cheap and r.threshold is not None and not passes(r, scores.get(r.column)):
            return reason(r, scores.get(r.column))
    return None


def gate(cfg: FilterConfig, scores: Mapping[str, Any], columns: Sequence[str]) -> str | None:
    """The first absolute rule on one of `columns` that the scores fail (its drop reason), or None."""
    for r in cfg.rules:
        if r.column in columns and r.threshold is not None and not passes(r, scores.get(r.column)):
            return reason(r, scores.get(r.column))
    return None


def cpu_gate(cfg: FilterConfig, scores: Mapping[str, Any]) -> str | None:
    """The first absolute cheap or frame-model rule the CPU step's scores fail, in cascade order.

    A scorer whose columns are all missing (disabled) is skipped; one skipped because an
    earlier rule failed is never reached, as that rule is reported first.
    """
    why = cheap_gate(cfg, scores)
    if why is None:
        for _, cols in FRAME_SCORERS:
            if all(scores.get(c) is None for c in cols):
                continue
            why = gate(cfg, scores, cols)
            if why is not None:
                break
    return why


def keep_share(
    values: Sequence[Any], ids: Sequence[str], share: float, top: bool
) -> tuple[np.ndarray, float | None]:
    """Mask keeping ceil(share * n) of the values (highest if `top`), ties by lower id; and the cutoff value.

    Missing values rank last. Exactly ceil(share * n) are kept, so the stated share holds.
    """
    n = len(values)
    k = math.ceil(share * n - 1e-9)
    sign = -1.0 if top else 1.0
    vals = [float(v) if v is not None else math.nan for v in values]
    order = sorted(
        range(n),
        key=lambda i: (math.isnan(vals[i]), sign * vals[i] if not math.isnan(vals[i]) else 0, ids[i]),
    )
    mask = np.zeros(n, bool)
    mask[order[:k]] = True
    return mask, (vals[order[k - 1]] if k else None)


def cascade_steps(cfg: FilterConfig) -> list[tuple[str, Rule | None]]:
    order = {c: i for i, c in enumerate(FRAME_COLUMNS)}  # frame rules in scorer cost order
    cheap_abs = [r for r in cfg.rules if r.cheap and r.threshold is not None]
    cheap_pct = [r for r in cfg.rules if r.cheap and r.share is not None]
    frame_abs = sorted(
        (r for r in cfg.rules if r.frame and r.threshold is not None), key=lambda r: order[r.column]
    )
    frame_pct = [r for r in cfg.rules if r.frame and r.share is not None]
    model = [r for r in cfg.rules if not (r.cheap or r.frame)]
    model_abs = [r for r in model if r.threshold is not None]
    model_pct = [r for r in model if r.share is not None]
    steps: list[tuple[str, Rule | None]] = [("status", None)]
    steps += [(EXACT_DUP, None)] if cfg.exact_dedup else []
    steps += [(r.name, r) for r in cheap_abs + frame_abs + cheap_pct + frame_pct + model_abs]
    steps += [(NEAR_DUP, None)] if cfg.near_dup_cosine is not None else []
    steps += [(r.name, r) for r in model_pct]
    return steps


def apply_cascade(table: pa.Table, cfg: FilterConfig) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Fill `kept`, `drop_reason`, `duplicate_of` for every row; return (table, funnel steps).

    Each funnel step is {"step", "in", "dropped", "out"}: clips reaching it, dropped by it, passing it.
    """
    check_config(cfg)
    n = table.num_rows
    ids = table.column(CLIP_ID).to_pylist()
    uris = table.column(SOURCE_URI).to_pylist()
    alive = np.ones(n, bool)
    drop: list[str | None] = [None] * n
    dup_of: list[str | None] = [None] * n
    funnel = []
    for name, rule in cascade_steps(cfg):
        before = int(alive.sum())
        live = np.flatnonzero(alive)
        if name == "status":
            status = table.column(STATUS).to_pylist()
            stage = table.column(FAILED_STAGE).to_pylist()
            for i in live:
                if status[i] != STATUS_OK:
                    alive[i], drop[i] = False, f"status=error (failed_stage={stage[i]})"
        elif name == EXACT_DUP:
            for d in dedup.exact_duplicates([ids[i] for i in live], [uris[i] for i in live]):
                i, keeper = live[d.index], live[d.keeper]
                alive[i], dup_of[i] = False, ids[keeper]
                drop[i] = f"{EXACT_DUP}: same content and span as {uris[keeper]}"
        elif name == NEAR_DUP:
            emb_col = table.column(CLIP_EMBEDDING)
            aes = table.column(AESTHETIC).to_pylist()
            live = np.array([i for i in live if emb_col[i].is_valid], np.int64)
            if len(live):
                emb = np.stack([np.asarray(emb_col[i].as_py(), np.float32) for i in live])  # (L, D)
                order = dedup.keeper_order(
                    [ids[i] for i in live], [uris[i] for i in live], [aes[i] for i in live]
                )
                for d in dedup.near_duplicates(emb, order, float(cfg.near_dup_cosine)):
                    i, keeper = live[d.index], live[d.keeper]
                    alive[i], dup_of[i] = False, ids[keeper]
                    drop[i] = (
                        f"{NEAR_DUP}: cosine={d.cosine:.4f} >= {cfg.near_dup_cosine:g} with {ids[keeper]}"
                    )
        elif rule is not None:
            vals = table.column(rule.column).to_pylist()
            if rule.share is not None:
                mask, cutoff = keep_share(
                    [vals[i] for i in live], [ids[i] for i in live], rule.share, rule.op == ">="
                )
                for j, i in enumerate(live):
                    if not mask[j]:
                        alive[i], drop[i] = False, reason(rule, vals[i], cutoff)
            else:
                for i in live:
                    if not passes(rule, vals[i]):
                        alive[i], drop[i] = False, reason(rule, vals[i])
        funnel.append(
            {"step": name, "in": before, "dropped": before - int(alive.sum()), "out": int(alive.sum())}
        )
    out = set_columns(
        table,
        {
            KEPT: alive.tolist(),
            DROP_REASON: drop,
            DROP_RULE: [rule_of(d) for d in drop],
            DUPLICATE_OF: dup_of,
        },
    )
    return out, funnel
