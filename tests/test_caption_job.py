"""jobs.caption: CLI validation, stale-part handling, and one real Ray run with resume."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from captioner.stage import SMOKE, caption_hash
from curate import schema as S
from curate.errors import UsageError
from curate.io.storage import mark_done, read_parts, write_parquet_atomic
from curate.scores.clip_models import SMOKE_CLIP_CFG
from jobs import caption as job
from tests.caption_helpers import make_clips
from tests.driver_guard import driver_reads_no_rows


def _scored(tmp: Path, n: int = 6) -> tuple[Path, list[dict]]:
    spans = [((i * 7) % 80, (i * 7) % 80 + 3 + (i * 5) % 14) for i in range(n)]
    _, rows = make_clips(tmp / "media", spans, [i % 3 != 2 for i in range(n)])
    rng = np.random.default_rng(0)
    for r in rows:  # what the score stage stores: a unit-norm image embedding (the smoke CLIP's width)
        e = rng.standard_normal(SMOKE_CLIP_CFG["embed_dim"])
        r[S.CLIP_EMBEDDING] = (e / np.linalg.norm(e)).astype(np.float16).tolist()
    t = S.table_from_rows(rows)
    write_parquet_atomic(t.slice(0, n // 2), tmp / "scored" / "part-0.parquet")
    write_parquet_atomic(t.slice(n // 2), tmp / "scored" / "part-1.parquet")
    return tmp / "scored", rows


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--gpus", "-1"], "--gpus must be >= 0, got -1"),
        (["--actors", "0"], "--actors must be >= 1, got 0"),
    ],
)
def test_bad_arguments_exit_2_with_rule_value_fix(tmp_path, capsys, args, msg):
    scored, _ = _scored(tmp_path, 2)
    rc = job.cli(["--input", str(scored), "--output", str(tmp_path / "out"), "--preset", "smoke", *args])
    assert rc == 2 and msg in capsys.readouterr().err


def test_missing_input_is_a_usage_error(tmp_path, capsys):
    assert job.cli(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no Parquet parts" in err and "run python -m jobs.score or jobs.filter first" in err


def test_parts_of_another_config_or_without_marker_are_removed(tmp_path):
    out = tmp_path / "captions"
    for key, h in (("old", "old"), ("new", "new"), ("crash", None)):
        write_parquet_atomic(
            S.table_from_rows([{S.CLIP_ID: key, S.CONFIG_HASH: "new"}]), out / f"part-{key}.parquet"
        )
        if h is not None:
            mark_done(tmp_path, "caption", key, h)  # markers live under OUT/_done
    # "old": a marker of another config; "crash": written, killed before its marker
    assert [Path(p).name for p in job.finished_parts(str(out), "new")] == ["part-new.parquet"]
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-new.parquet"]


@pytest.mark.ray
def test_job_captions_kept_clips_and_resumes(tmp_path, local_ray):
    scored, rows = _scored(tmp_path)
    cap = replace(SMOKE, batch_size=2)
    cfg = job.CaptionJobConfig(input=str(scored), output=str(tmp_path / "captions"), caption=cap, num_cpus=2)
    with driver_reads_no_rows():
        s1 = job.main(cfg)
    kept = [r[S.CLIP_ID] for r in rows if r[S.KEPT]]
    assert s1["captioned"] + s1["errors"] == len(kept) and s1["errors"] == 0
    assert s1["model_calls"] >= 2 and 0.0 <= s1["model_wait_share"] < 1.0
    out = read_parts(tmp_path / "captions", S.CLIP_SCHEMA)
    S.validate(out, "caption")
    assert sorted(out.column(S.CLIP_ID).to_pylist()) == sorted(kept)  # only kept clips, each once
    assert set(out.column(S.CONFIG_HASH).to_pylist()) == {caption_hash(cap)}
    # caption_clip_score comes from the scored parts' clip_embedding: the job must read that column
    scores = [r[S.CAPTION_CLIP_SCORE] for r in out.to_pylist() if r[S.STATUS] == S.STATUS_OK]
    assert scores and all(v is not None and -1.0 <= v <= 1.0 for v in scores), scores
    s2 = job.main(replace(cfg, caption=replace(cap, batch_size=3)))  # resume: nothing to do, no Ray plan runs
    assert s2["skipped_done"] == len(kept) and s2["captioned"] == 0
    assert read_parts(tmp_path / "captions", S.CLIP_SCHEMA).num_rows == len(kept)
    # more actors (or GPUs) than the 2-CPU cluster has: a clear error, not a hang
    with pytest.raises(UsageError, match=r"asks for 3.5 CPU\(s\) and the Ray cluster must have them, got 2"):
        job.main(replace(cfg, output=str(tmp_path / "c2"), concurrency=3))
    with pytest.raises(UsageError, match=r"GPU\(s\) in all and the Ray cluster must have them, got 0 GPU"):
        job.main(replace(cfg, output=str(tmp_path / "c3"), num_gpus=1))
