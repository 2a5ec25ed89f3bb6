"""The score job end to end on Ray: funnel, parts, resume, and argument errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate.decisions.filters import FilterConfig, Rule
from curate.io.storage import read_parts, write_parquet_atomic
from curate.schema import (
    AESTHETIC,
    BLACK_FRACTION,
    CLIP_EMBEDDING,
    CLIP_ID,
    DROP_REASON,
    KEPT,
    table_from_rows,
    validate,
)
from curate.scores import score_config
from curate.shots.clip_rows import clip_rows
from jobs import score as job_score
from tests.driver_guard import driver_reads_no_rows

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.ray
def test_score_job_funnel_and_resume(real_videos, tmp_path, capsys):
    out = tmp_path / "out"
    rows = clip_rows(real_videos / "testvideo.mp4", [(0, 30), (30, 180)])  # black, still photo
    rows += clip_rows(real_videos / "carphone_pristine.mp4", [(0, 60), (60, 120)])
    rows += clip_rows(real_videos / "flipping_a_pancake.mkv", [(0, 150)])
    write_parquet_atomic(table_from_rows(rows), out / "clips" / "part-00000.parquet")
    model_dir = tmp_path / "smoke-clip"
    cfg = dataclasses.replace(score_config.SMOKE, clip_model=str(model_dir))
    job = job_score.ScoreJob(
        input=str(out / "clips"), output=str(out / "scored"), score=cfg, cpu_batch=2, batch_size=4
    )

    with driver_reads_no_rows():
        report = job_score.main(job)
    table = read_parts(out / "scored")
    validate(table, upto="filter")
    assert table.num_rows == len(rows)  # every clip keeps its row
    assert report["clips_in"] == 5 and report["kept"] == sum(table.column(KEPT).to_pylist())
    by_id = {r[CLIP_ID]: r for r in table.to_pylist()}  # the output is ordered by video, not as the input
    got = [by_id[r[CLIP_ID]] for r in rows]
    assert got[0][DROP_REASON].startswith("black_fraction <= 0.5") and got[1][DROP_REASON].startswith(
        "is_static <= 0"
    )
    assert got[0][CLIP_EMBEDDING] is None  # cheap-dropped: never embedded
    assert all(got[i][AESTHETIC] is not None for i in (2, 3, 4))
    funnel = json.loads((out / "scored" / "_funnel.json").read_text())
    assert funnel["smoke"] and [s["step"] for s in funnel["steps"]][:3] == [
        "status",
        "exact_duplicate",
        "black_fraction <= 0.5",
    ]
    assert "SMOKE" in capsys.readouterr().out
    assert (out / "_done" / "score").is_dir()

    # rerun: nothing to score; a changed filter is re-applied without re-scoring
    parts_before = sorted((out / "scored" / "_scores").glob("*.parquet"))
    loose = dataclasses.replace(
        cfg, filters=FilterConfig(rules=(Rule(BLACK_FRACTION, "<=", 1.0),), near_dup_cosine=None)
    )
    capsys.readouterr()
    report2 = job_score.main(dataclasses.replace(job, score=loose))
    # only the black clip and the still photo, now past the loosened gate, need the model
    assert "2 to score" in capsys.readouterr().out
    assert set(parts_before) < set((out / "scored" / "_scores").glob("*.parquet"))  # old parts reused
    assert report2["kept"] == len(rows)
    black = read_parts(out / "scored").filter(pc.equal(pc.field(CLIP_ID), rows[0][CLIP_ID]))
    assert black.column(CLIP_EMBEDDING)[0].as_py() is not None  # the re-scored row wins
    capsys.readouterr()
    job_score.main(dataclasses.replace(job, score=loose))
    assert "0 to score" in capsys.readouterr().out
    assert pq.read_table(out / "scored" / "part-00000.parquet").num_rows == len(rows)


def test_bad_arguments_exit_2_with_rule_value_fix(tmp_path):
    (tmp_path / "clips").mkdir()
    base = [
        sys.executable,
        "-m",
        "jobs.score",
        "--input",
        str(tmp_path / "clips"),
        "--output",
        str(tmp_path / "s"),
    ]
    r = subprocess.run([*base, "--batch-size", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--batch-size must be >= 1, got 0" in r.stderr
    r = subprocess.run([*base, "--preset", "smoke"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no Parquet parts" in r.stderr
    write_parquet_atomic(
        table_from_rows([]), tmp_path / "clips" / "part-00000.parquet"
    )  # past the folder check
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TUBELET_WEIGHTS": str(tmp_path)}
    r = subprocess.run(
        [*base, "--preset", "default"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 2 and "sac+logos+ava1-l14-linearMSE.pth" in r.stderr and "curl -L -o" in r.stderr
    assert "`hf download timm/vit_large_patch14_clip_224.openai" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "sac+logos+ava1-l14-linearMSE.pth").write_bytes(b"")  # the head is found; CLIP is not
    r = subprocess.run(
        [*base, "--preset", "default"], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 2 and "1 missing" in r.stderr and "CLIP ViT-L-14/openai" in r.stderr
    assert "sac+logos" not in r.stderr
