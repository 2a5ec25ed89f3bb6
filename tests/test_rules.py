"""Filter rules as text (curate/decisions/rules.py) and the jobs that take them (--rule, --filters).

The text only edits the preset's FilterConfig: the same decisions as the equivalent
`dataclasses.replace`, on the same cascade code.
"""

from __future__ import annotations

import dataclasses

import pytest

from curate import schema as S
from curate.decisions import filters, rules
from curate.decisions.filters import Rule
from curate.errors import UsageError
from curate.io.storage import write_parquet_atomic


def test_each_form_parses_to_the_rule_it_names():
    assert rules.parse_rule("aesthetic>=5.0") == ("rule", Rule(S.AESTHETIC, ">=", threshold=5.0))
    assert rules.parse_rule(" sharpness <= 3e2 ") == ("rule", Rule(S.SHARPNESS, "<=", threshold=300.0))
    assert rules.parse_rule("aesthetic top 80%") == ("rule", Rule(S.AESTHETIC, ">=", share=0.8))
    assert rules.parse_rule("nsfw bottom 50 %") == ("rule", Rule(S.NSFW, "<=", share=0.5))
    assert rules.parse_rule("nsfw off") == ("off", S.NSFW)
    assert rules.parse_rule("near_dup_cosine=0.98") == (rules.NEAR, 0.98)
    assert rules.parse_rule("near_dup_cosine=off") == (rules.NEAR, None)
    assert rules.parse_rule("exact_dedup=off") == (rules.EXACT, False)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("aesthtic>=5", "did you mean aesthetic?"),
        ("caption>=5", "column must be a score column"),
        ("aesthetic>5", "must be COLUMN>=VALUE"),
        ("aesthetic>=nan", "finite number"),
        ("aesthetic top 0%", "(0, 100]"),
        ("near_dup_cosine=2", "must be in [-1, 1]"),
        ("exact_dedup=maybe", "on or off"),
    ],
)
def test_a_bad_rule_names_the_rule_the_value_and_the_fix(text, needle):
    with pytest.raises(UsageError) as e:
        rules.parse_rule(text)
    msg = str(e.value)
    assert needle in msg and f"got {text!r}" in msg and "; " in msg, msg


def test_a_rule_replaces_its_slot_and_is_added_otherwise():
    base = filters.DEFAULT
    cfg = rules.apply_rules(base, ["aesthetic>=5.0", "motion>=0.1", "text_area off", "near_dup_cosine=0.9"])
    aes = [r for r in cfg.rules if r.column == S.AESTHETIC]
    # the absolute aesthetic rule is replaced in place, the percentile one of the same column stays
    assert aes == [Rule(S.AESTHETIC, ">=", 5.0), Rule(S.AESTHETIC, ">=", share=0.8)]
    in_place = rules.apply_rules(base, ["aesthetic>=5.0"]).rules
    assert in_place.index(aes[0]) == base.rules.index(Rule(S.AESTHETIC, ">=", 4.5)) and len(in_place) == len(
        base.rules
    )
    assert cfg.rules[-1] == Rule(S.MOTION, ">=", 0.1)
    assert all(r.column != S.TEXT_AREA for r in cfg.rules) and cfg.near_dup_cosine == 0.9
    assert base == filters.DEFAULT  # the preset itself is untouched
    assert rules.apply_rules(cfg, rules.describe(cfg)) == cfg  # describe() parses back


def test_file_then_flags(tmp_path):
    f = tmp_path / "rules.toml"
    f.write_text(
        'replace = true\nrules = ["sharpness>=50", {column = "aesthetic", top = 0.5}]\n'
        "near_dup_cosine = false\n"
    )
    cfg = rules.build(filters.SMOKE, ["sharpness>=80"], str(f))
    assert cfg.rules == (Rule(S.SHARPNESS, ">=", 80.0), Rule(S.AESTHETIC, ">=", share=0.5))
    assert cfg.near_dup_cosine is None and cfg.exact_dedup


def _rows(n: int = 12) -> list[dict]:
    return [
        {
            S.CLIP_ID: f"c{i:02d}",
            S.VIDEO_ID: f"v{i}",
            S.SOURCE_URI: f"/v{i}.mp4",
            S.START_FRAME: 0,
            S.END_FRAME: 10,
            S.STATUS: S.STATUS_OK,
            S.SHARPNESS: 10.0 * i,
            S.AESTHETIC: float(i % 5),
            S.BLACK_FRACTION: 0.0,
            S.IS_STATIC: False,
            S.NSFW: 0.0,
            S.TEXT_AREA: 0.0,
        }
        for i in range(n)
    ]


def test_text_rules_decide_exactly_as_the_replaced_config():
    table = S.table_from_rows(_rows())
    base = dataclasses.replace(filters.SMOKE, near_dup_cosine=None)
    by_text = rules.apply_rules(base, ["sharpness>=35", "aesthetic top 50%"])
    by_code = dataclasses.replace(
        base, rules=(*base.rules[:-1], Rule(S.AESTHETIC, ">=", share=0.5), Rule(S.SHARPNESS, ">=", 35.0))
    )
    a, fa = filters.apply_cascade(table, by_text)
    b, fb = filters.apply_cascade(table, by_code)
    assert a.column(S.KEPT).to_pylist() == b.column(S.KEPT).to_pylist()
    kept = a.column(S.KEPT).to_pylist()
    assert 0 < sum(kept) < len(kept)
    assert {s["step"] for s in fa} == {s["step"] for s in fb}


def test_jobs_take_rules_and_caption_takes_any_decided_folder(tmp_path):
    from jobs import caption, curate, score
    from jobs import filter as job_filter

    rows = _rows(2)
    clips = [{k: r[k] for k in (S.CLIP_ID, S.VIDEO_ID, S.SOURCE_URI, S.STATUS)} for r in rows]
    write_parquet_atomic(S.table_from_rows(clips), tmp_path / "clips" / "part-0.parquet")
    decided = [{**r, S.MOTION: 1.0, S.KEPT: True} for r in rows]
    write_parquet_atomic(S.table_from_rows(decided), tmp_path / "my-picks" / "part-0.parquet")
    (tmp_path / "in").mkdir()
    f = job_filter.parse_args(
        [
            "--input",
            str(tmp_path / "my-picks"),
            "--output",
            str(tmp_path / "f2"),
            "--rule",
            "aesthetic>=5",
            "--rule",
            "nsfw off",
        ]
    )
    assert Rule(S.AESTHETIC, ">=", 5.0) in f.filters.rules and all(
        r.column != S.NSFW for r in f.filters.rules
    )
    s = score.parse_args(
        ["--input", str(tmp_path / "clips"), "--output", str(tmp_path / "scored"), "--rule", "sharpness>=7"]
    )
    assert Rule(S.SHARPNESS, ">=", 7.0) in s.score.filters.rules
    c = curate.config_from_args(
        curate.build_parser().parse_args(
            [
                "--input",
                str(tmp_path / "in"),
                "--output",
                str(tmp_path / "o"),
                "--rule",
                "aesthetic top 10%",
                "--min-seconds",
                "3",
                "--max-seconds",
                "9",
                "--num-frames",
                "4",
                "--max-frames",
                "17",
                "--limit",
                "2",
            ]
        )
    )
    p = curate.with_options(curate.PRESETS["smoke"], c)
    assert Rule(S.AESTHETIC, ">=", share=0.1) in p.score.filters.rules and c.limit == 2
    assert (p.split.min_seconds, p.split.max_seconds, p.caption.num_frames, p.encode.max_frames) == (
        3,
        9,
        4,
        17,
    )
    # the caption job goes by what the folder holds: decisions, whatever its name
    assert caption.parse_args(
        ["--input", str(tmp_path / "my-picks"), "--output", str(tmp_path / "cap")]
    ).input == str(tmp_path / "my-picks")
