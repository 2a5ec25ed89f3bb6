"""Filters and dedup: pure predicates, cost order, percentile shares, deterministic keepers."""

from __future__ import annotations

import numpy as np
import pytest

from curate.decisions import dedup
from curate.decisions.filters import (
    EXACT_DUP,
    NEAR_DUP,
    FilterConfig,
    Rule,
    apply_cascade,
    cheap_gate,
    keep_share,
)
from curate.errors import UsageError
from curate.schema import (
    AESTHETIC,
    BLACK_FRACTION,
    BRIGHTNESS,
    CLIP_EMBEDDING,
    CLIP_ID,
    DROP_REASON,
    DUPLICATE_OF,
    ERROR,
    FAILED_STAGE,
    IS_STATIC,
    KEPT,
    MOTION,
    SHARPNESS,
    SOURCE_URI,
    STATUS,
    STATUS_ERROR,
    STATUS_OK,
    table_from_rows,
)


def _rows(n: int, seed: int = 0, dim: int = 16) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        e = rng.normal(size=dim)
        rows.append(
            {
                CLIP_ID: f"v{i % 3}-{i:04d}",
                SOURCE_URI: f"/data/v{i % 3}.mp4",
                STATUS: STATUS_OK,
                MOTION: 0.1,
                SHARPNESS: float(rng.uniform(50, 500)),
                BRIGHTNESS: 0.4,
                BLACK_FRACTION: 0.0,
                IS_STATIC: False,
                AESTHETIC: float(rng.uniform(2, 8)),
                CLIP_EMBEDDING: (e / np.linalg.norm(e)).astype(np.float16).tolist(),
            }
        )
    return rows


def _decide(rows, cfg):
    out, funnel = apply_cascade(table_from_rows(rows), cfg)
    return out.to_pylist(), funnel


def test_reason_names_rule_and_value_and_cheap_rules_come_first():
    rows = _rows(3)
    rows[0].update({SHARPNESS: 12.5, AESTHETIC: 1.0})  # fails a cheap and a model rule
    rows[1].update({AESTHETIC: 3.0})
    rows[2].update({AESTHETIC: 6.0, SHARPNESS: 100.0})
    cfg = FilterConfig(rules=(Rule(AESTHETIC, ">=", 4.0), Rule(SHARPNESS, ">=", 40.0)), near_dup_cosine=None)
    out, funnel = _decide(rows, cfg)
    assert out[0][DROP_REASON] == "sharpness >= 40: sharpness=12.5"
    assert out[1][DROP_REASON] == "aesthetic >= 4: aesthetic=3"
    assert [o[KEPT] for o in out] == [False, False, True]
    assert [s["step"] for s in funnel] == ["status", EXACT_DUP, "sharpness >= 40", "aesthetic >= 4"]
    assert [s["dropped"] for s in funnel] == [0, 0, 1, 1]
    assert cheap_gate(cfg, rows[0]) == "sharpness >= 40: sharpness=12.5"
    assert cheap_gate(cfg, rows[1]) is None  # model rules never gate before the model


def test_static_and_error_rows_keep_their_row():
    rows = _rows(3)
    rows[0][IS_STATIC] = True
    rows[1].update({STATUS: STATUS_ERROR, FAILED_STAGE: "score", ERROR: "decode failed"})
    out, _ = _decide(rows, FilterConfig(rules=(Rule(IS_STATIC, "<=", 0),), near_dup_cosine=None))
    assert out[0][DROP_REASON] == "is_static <= 0: is_static=True"
    assert out[1][DROP_REASON] == "status=error (failed_stage=score)"
    assert [o[KEPT] for o in out] == [False, False, True]


@pytest.mark.parametrize("share", [0.7, 0.25, 1.0])
def test_percentile_keeps_the_stated_share_of_clips_reaching_it(share):
    rows = _rows(90, seed=1)
    for r in rows[:10]:
        r[SHARPNESS] = 1.0  # dropped earlier by a cheap rule: not part of the percentile population
    cfg = FilterConfig(
        rules=(Rule(SHARPNESS, ">=", 10.0), Rule(AESTHETIC, ">=", share=share)), near_dup_cosine=None
    )
    out, funnel = _decide(rows, cfg)
    reached = out[10:]
    kept = [o for o in reached if o[KEPT]]
    assert len(kept) == int(np.ceil(share * 80))
    assert funnel[-1]["in"] == 80 and funnel[-1]["out"] == len(kept)
    if share < 1:
        assert min(o[AESTHETIC] for o in kept) >= max(o[AESTHETIC] for o in reached if not o[KEPT])
        assert any(f"aesthetic top {share:.0%} (cutoff" in (o[DROP_REASON] or "") for o in reached)


def test_keep_share_bottom_and_missing_values():
    mask, cutoff = keep_share([0.5, None, 0.1, 0.9], ["a", "b", "c", "d"], 0.5, top=False)
    assert mask.tolist() == [True, False, True, False] and cutoff == 0.5


def test_near_duplicates_within_video_and_across_run_keep_higher_aesthetic():
    rows = _rows(6, seed=2)
    base = np.array(rows[0][CLIP_EMBEDDING], np.float32)
    rng = np.random.default_rng(3)
    for j, aes in [(3, 7.5), (4, 2.0)]:  # row 3 is in the same video as row 0, row 4 in another
        near = base + 0.05 * rng.normal(size=base.shape)
        rows[j][CLIP_EMBEDDING] = (near / np.linalg.norm(near)).astype(np.float16).tolist()
        rows[j][AESTHETIC] = aes
    rows[0][AESTHETIC] = 5.0
    cfg = FilterConfig(near_dup_cosine=0.95)
    out, _ = _decide(rows, cfg)
    assert [o[KEPT] for o in out] == [False, True, True, True, False, True]
    assert out[0][DUPLICATE_OF] == out[4][DUPLICATE_OF] == rows[3][CLIP_ID]
    assert out[0][DROP_REASON].startswith(f"{NEAR_DUP}: cosine=")
    # deterministic: the same decisions whatever the row order
    perm = [5, 3, 1, 0, 4, 2]
    shuffled, _ = _decide([rows[i] for i in perm], cfg)
    assert {o[CLIP_ID]: o[KEPT] for o in shuffled} == {o[CLIP_ID]: o[KEPT] for o in out}


def test_near_duplicates_blocked_equals_unblocked():
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(40, 8)).astype(np.float32)
    emb[20:] = emb[:20] + 0.1 * rng.normal(size=(20, 8))  # every second half row near-duplicates one
    order = list(rng.permutation(40))
    a = dedup.near_duplicates(emb, order, 0.9, block=7)
    b = dedup.near_duplicates(emb, order, 0.9, block=1000)
    assert [(d.index, d.keeper) for d in a] == [(d.index, d.keeper) for d in b]
    assert len(a) >= 15


def test_exact_duplicate_keeps_lowest_uri():
    rows = _rows(2)
    copy = dict(rows[0], **{SOURCE_URI: "/a/renamed.mp4"})
    out, _ = _decide([rows[0], rows[1], copy], FilterConfig(near_dup_cosine=None))
    assert [o[KEPT] for o in out] == [False, True, True]
    assert out[0][DROP_REASON] == f"{EXACT_DUP}: same content and span as /a/renamed.mp4"


@pytest.mark.parametrize(
    "rule",
    [
        Rule("caption", ">=", 1.0),
        Rule(AESTHETIC, ">=", 1.0, share=0.5),
        Rule(AESTHETIC, ">="),
        Rule(AESTHETIC, ">=", share=1.5),
        Rule(AESTHETIC, ">", 1.0),  # type: ignore[arg-type]
    ],
)
def test_bad_rules_fail_with_the_rule_and_value(rule):
    with pytest.raises(UsageError, match="must"):
        apply_cascade(table_from_rows(_rows(1)), FilterConfig(rules=(rule,)))
