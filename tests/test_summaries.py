"""drop_rule beside drop_reason, curate's error count and its stage timings (no Ray, no models)."""

from __future__ import annotations

from collections import Counter

from curate.decisions.filters import EXACT_DUP, FilterConfig, Rule, apply_cascade, rule_of
from curate.schema import (
    AESTHETIC,
    DROP_REASON,
    DROP_RULE,
    ERROR,
    FAILED_STAGE,
    SHARPNESS,
    STATUS,
    STATUS_ERROR,
    table_from_rows,
)
from jobs.curate import _stage_timings, errors_of
from tests.test_filters import _rows


def test_drop_rule_is_the_rule_alone_so_one_rule_is_one_value():
    rows = _rows(6)
    for i, a in enumerate((1.0, 2.0, 3.0)):  # three different values, one rule
        rows[i][AESTHETIC] = a
    rows[3][SHARPNESS] = 5.0
    rows[4].update({STATUS: STATUS_ERROR, FAILED_STAGE: "score", ERROR: "decode failed"})
    rows[5][AESTHETIC] = 7.0
    cfg = FilterConfig(rules=(Rule(AESTHETIC, ">=", 4.0), Rule(SHARPNESS, ">=", 40.0)), near_dup_cosine=None)
    out, funnel = apply_cascade(table_from_rows(rows), cfg)
    reasons, rules = out.column(DROP_REASON).to_pylist(), out.column(DROP_RULE).to_pylist()
    assert len(set(reasons[:3])) == 3  # the reason carries the value ...
    assert rules == [AESTHETIC] * 3 + [SHARPNESS, "status", None]  # ... the rule does not
    assert Counter(r for r in rules if r) == {AESTHETIC: 3, SHARPNESS: 1, "status": 1}
    assert errors_of({"steps": funnel}) == 1


def test_rule_of_every_reason_shape():
    assert rule_of(None) is None
    assert rule_of("aesthetic top 50% (cutoff 4.5): aesthetic=4.1") == "aesthetic"
    assert rule_of("status=error (failed_stage=split)") == "status"
    assert rule_of(f"{EXACT_DUP}: same content and span as /a.mp4") == EXACT_DUP
    assert rule_of("near_duplicate: cosine=0.9900 >= 0.95 with v0-0001") == "near_duplicate"


def test_stage_timings_parse_ray_data_stats_text():
    stats = (
        "Operator 1 ReadRange->MapBatches(_split_task): 2 tasks executed, 2 blocks produced in 0.02s\n"
        "* Remote wall time: 1.93ms min, 5.13ms max, 3.53ms mean, 7.06ms total\n"
        "* Remote cpu time: 2.03ms min, 4.97ms max, 3.5ms mean, 7.0ms total\n"
        "Operator 2 MapBatches(ClipScoreStage): 4 tasks executed, 4 blocks produced in 3.5s\n"
        "* Remote wall time: 1.2s min, 2.07s max, 1.63s mean, 6.5s total\n"
        "Operator 3 MapBatches(_write_scored): 1 tasks executed, 1 blocks produced in 0.4s\n"
    )
    assert _stage_timings(stats) == {
        "ReadRange->MapBatches(_split_task)": 0.007,
        "MapBatches(ClipScoreStage)": 6.5,
        "MapBatches(_write_scored)": 0.4,
    }
    assert _stage_timings("") == {}
