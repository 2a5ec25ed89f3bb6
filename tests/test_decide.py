"""Distributed run-level decisions (jobs/decide.py) equal the in-memory cascade, part by part."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import decide as D
from curate.filters import FilterConfig, Rule, apply_cascade
from curate.schema import (
    AESTHETIC,
    BLACK_FRACTION,
    CLIP_EMBEDDING,
    CLIP_ID,
    DROP_REASON,
    DUPLICATE_OF,
    FAILED_STAGE,
    IS_STATIC,
    KEPT,
    SHARPNESS,
    SOURCE_URI,
    STATUS,
    STATUS_ERROR,
    STATUS_OK,
    table_from_rows,
)

DIM = 16


def _run_rows(n: int, seed: int) -> list[dict]:
    """Scored rows: near-duplicate groups, exact copies under another name, errors, ties, gaps."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n // 4, DIM))
    rows = []
    for i in range(n):
        e = centers[i % len(centers)] + (0.04 if i % 3 else 0.5) * rng.normal(size=DIM)
        rows.append({
            CLIP_ID: f"c{i:05d}", SOURCE_URI: f"/v/{i % 7}.mp4", STATUS: STATUS_OK,
            SHARPNESS: float(rng.choice([50.0, 120.0, 300.0, 300.0])),  # ties at the cut-off
            BLACK_FRACTION: float(rng.uniform(0, 0.3)), IS_STATIC: bool(i % 17 == 0),
            AESTHETIC: float(np.round(rng.uniform(2, 8), 1)),
            CLIP_EMBEDDING: (e / np.linalg.norm(e)).astype(np.float16).tolist(),
        })
    for i in range(0, n, 11):
        rows[i][CLIP_EMBEDDING] = None
    for i in range(5, n, 23):
        rows[i].update({STATUS: STATUS_ERROR, FAILED_STAGE: "score"})
    for i in range(3, n, 29):  # the same clip found again under another file name
        rows.append(dict(rows[i], **{SOURCE_URI: f"/copy/{i}.mp4"}))
    rows[9][AESTHETIC] = None
    return rows


CFG = FilterConfig(
    rules=(Rule(BLACK_FRACTION, "<=", 0.25), Rule(IS_STATIC, "<=", 0.0), Rule(SHARPNESS, ">=", share=0.8),
           Rule(AESTHETIC, ">=", 3.0), Rule(AESTHETIC, ">=", share=0.7)),
    near_dup_cosine=0.95,
)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from jobs.adapter import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def _write_parts(rows: list[dict], folder, sizes: list[int]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for k, size in enumerate(sizes):
        p = folder / f"part-{k:05d}.parquet"
        pq.write_table(table_from_rows(rows[start:start + size]), p)
        paths.append(str(p))
        start += size
    return paths


@pytest.mark.ray
def test_distributed_decisions_equal_the_in_memory_cascade(tmp_path, ray_local):
    from jobs.decide import decide_parts

    rows = _run_rows(240, seed=0)
    sizes = [100, 1, 0, len(rows) - 101]  # an empty part and a one-row part too
    src = _write_parts(rows, tmp_path / "scored", sizes)
    dst = [str(tmp_path / "out" / f"part-{k}.parquet") for k in range(len(src))]
    funnel, written = decide_parts(src, dst, CFG, buckets=3)
    want, want_funnel = apply_cascade(table_from_rows(rows), CFG)
    got = pa.concat_tables([pq.read_table(p) for p in dst])
    assert got.column(CLIP_ID).to_pylist() == want.column(CLIP_ID).to_pylist()
    for c in (KEPT, DROP_REASON, DUPLICATE_OF):
        assert got.column(c).to_pylist() == want.column(c).to_pylist(), c
    assert funnel == want_funnel
    assert sum(w.rows for w in written) == len(rows)
    # every rule fired, so the comparison covered each step
    assert all(s["dropped"] > 0 for s in funnel), funnel


def test_percentile_cut_is_exact_whatever_the_bracket():
    rows = _run_rows(120, seed=1)
    state = D.part_state(table_from_rows(rows), 0)
    rule = Rule(SHARPNESS, ">=", share=0.4)
    n = D.alive_count(state)
    k = D.share_k(0.4, n)
    for lo, hi in [(-np.inf, np.inf), (-300.0, -120.0), (-300.0, -300.0)]:
        below, inside = D.bracket(state, rule, lo, hi)
        cut = D.pick_cut(below, inside, k)
        if cut is not None:
            assert D.alive_count(D.apply_share(state, rule, cut)) == k
    assert D.pick_cut(*D.bracket(state, rule, -np.inf, -301.0), k) is None  # bracket misses: say so


@pytest.mark.ray
def test_filter_job_redecides_from_scores_and_resumes(tmp_path, ray_local):
    from jobs import filter as F

    rows = _run_rows(80, seed=2)
    _write_parts(rows, tmp_path / "scored", [40, len(rows) - 40])
    job = F.FilterJob(input=str(tmp_path / "scored"), output=str(tmp_path / "filtered"), filters=CFG)
    report = F.main(job)
    want, _ = apply_cascade(table_from_rows(rows), CFG)
    assert report["kept"] == sum(want.column(KEPT).to_pylist())
    first = {p.name: p.read_bytes() for p in (tmp_path / "filtered").glob("part-*.parquet")}
    assert len(first) == 2
    # a stricter threshold: decided again from the stored scores alone
    strict = FilterConfig(rules=(*CFG.rules, Rule(SHARPNESS, ">=", 200.0)), near_dup_cosine=0.95)
    report2 = F.main(F.FilterJob(input=job.input, output=job.output, filters=strict))
    assert report2["kept"] < report["kept"]
    saved = json.loads((tmp_path / "filtered" / "_funnel.json").read_text())
    assert saved["kept"] == report2["kept"]
    assert F.main(F.FilterJob(input=job.input, output=job.output, filters=strict)) == saved  # all markers: no work


def test_filter_cli_rejects_bad_arguments(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "jobs.filter", "--input", str(tmp_path / "none"),
                        "--output", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "run python -m jobs.score" in r.stderr
