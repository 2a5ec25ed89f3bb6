"""Distributed run-level decisions (jobs/runtime/decide.py) equal the in-memory cascade, part by part."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.decisions import decide as D
from curate.decisions.filters import FilterConfig, Rule, apply_cascade
from curate.schema import (
    AESTHETIC,
    BLACK_FRACTION,
    CLIP_EMBEDDING,
    CLIP_ID,
    DROP_REASON,
    DROP_RULE,
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
        rows.append(
            {
                CLIP_ID: f"c{i:05d}",
                SOURCE_URI: f"/v/{i % 7}.mp4",
                STATUS: STATUS_OK,
                SHARPNESS: float(rng.choice([50.0, 120.0, 300.0, 300.0])),  # ties at the cut-off
                BLACK_FRACTION: float(rng.uniform(0, 0.3)),
                IS_STATIC: bool(i % 17 == 0),
                AESTHETIC: float(np.round(rng.uniform(2, 8), 1)),
                CLIP_EMBEDDING: (e / np.linalg.norm(e)).astype(np.float16).tolist(),
            }
        )
    for i in range(0, n, 11):
        rows[i][CLIP_EMBEDDING] = None
    for i in range(5, n, 23):
        rows[i].update({STATUS: STATUS_ERROR, FAILED_STAGE: "score"})
    for i in range(3, n, 29):  # the same clip found again under another file name
        rows.append(dict(rows[i], **{SOURCE_URI: f"/copy/{i}.mp4"}))
    rows[9][AESTHETIC] = None
    return rows


CFG = FilterConfig(
    rules=(
        Rule(BLACK_FRACTION, "<=", 0.25),
        Rule(IS_STATIC, "<=", 0.0),
        Rule(SHARPNESS, ">=", share=0.8),
        Rule(AESTHETIC, ">=", 3.0),
        Rule(AESTHETIC, ">=", share=0.7),
    ),
    near_dup_cosine=0.95,
)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from jobs.runtime.adapter import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def _write_parts(rows: list[dict], folder, sizes: list[int]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = [], 0
    for k, size in enumerate(sizes):
        p = folder / f"part-{k:05d}.parquet"
        pq.write_table(table_from_rows(rows[start : start + size]), p)
        paths.append(str(p))
        start += size
    return paths


@pytest.mark.ray
def test_distributed_decisions_equal_the_in_memory_cascade(tmp_path, ray_local):
    from jobs.runtime.decide import decide_parts

    rows = _run_rows(240, seed=0)
    sizes = [100, 1, 0, len(rows) - 101]  # an empty part and a one-row part too
    src = _write_parts(rows, tmp_path / "scored", sizes)
    dst = [str(tmp_path / "out" / f"part-{k}.parquet") for k in range(len(src))]
    funnel, written = decide_parts(src, dst, CFG, buckets=3)
    want, want_funnel = apply_cascade(table_from_rows(rows), CFG)
    got = pa.concat_tables([pq.read_table(p) for p in dst])
    assert got.column(CLIP_ID).to_pylist() == want.column(CLIP_ID).to_pylist()
    for c in (KEPT, DROP_REASON, DROP_RULE, DUPLICATE_OF):
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
    assert (
        F.main(F.FilterJob(input=job.input, output=job.output, filters=strict)) == saved
    )  # all markers: no work


def test_filter_cli_rejects_bad_arguments(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.filter",
            "--input",
            str(tmp_path / "none"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "run python -m jobs.score" in r.stderr


# --- near duplicates across a cluster border -------------------------------------------------

NEAR_ONLY = FilterConfig(rules=(), exact_dedup=False, near_dup_cosine=0.95)


def _near_step(
    paths: list[str], centroids: np.ndarray, margin: float | None, buckets: int = 2
) -> list[pa.Table]:
    """The near-duplicate step of `jobs.runtime.decide` with fixed centroids, run in this process."""
    states = [D.part_state(pq.read_table(p), i) for i, p in enumerate(paths)]
    keys = [D.near_keys(p, s, centroids, buckets, 0.95, margin) for p, s in zip(paths, states)]
    border = margin is not None
    first = [
        D.near_decide([k[b] for k in keys], len(paths), 0.95, buckets if border else 0)
        for b in range(buckets)
    ]
    dups = [[f[0][i] for f in first] for i in range(len(paths))]
    if border:
        for b in range(buckets):
            second = D.border_decide(first[b][1], [f[2][b] for f in first], len(paths), 0.95)
            for i in range(len(paths)):
                dups[i].append(second[i])
    return [D.apply_duplicates(s, dups[i], "near_duplicate", 0.95) for i, s in enumerate(states)]


def _unit(v: list[float]) -> list[float]:
    v = np.asarray(v + [0.0] * (DIM - len(v)))
    return (v / np.linalg.norm(v)).tolist()


def _border_rows() -> list[dict]:
    """Two clusters (centroids e0, e1); a near-duplicate pair on the border between them: `a`
    nearest e0, `b` nearest e1, cosine 0.995; and rows inside each cluster, no duplicates."""
    rows = [
        {CLIP_ID: "a", SOURCE_URI: "/v/a.mp4", AESTHETIC: 6.0, CLIP_EMBEDDING: _unit([1.0, 0.9, 0.3])},
        {CLIP_ID: "b", SOURCE_URI: "/v/b.mp4", AESTHETIC: 5.0, CLIP_EMBEDDING: _unit([0.9, 1.0, 0.3])},
    ]
    for j in range(8):  # e0 or e1 plus an own axis: cosine 0.8 with each other, ~0.65 with a and b
        v = [0.0] * DIM
        v[j % 2], v[4 + j] = 1.0, 0.5
        rows.append(
            {CLIP_ID: f"f{j}", SOURCE_URI: f"/v/f{j}.mp4", AESTHETIC: 7.0 - 0.1 * j, CLIP_EMBEDDING: _unit(v)}
        )
    for r in rows:
        r[STATUS] = STATUS_OK
    return rows


def _decisions(states: list[pa.Table]) -> dict[str, tuple]:
    t = pa.concat_tables(states)
    return {
        c: (k, r, d)
        for c, k, r, d in zip(*(t.column(x).to_pylist() for x in (CLIP_ID, KEPT, DROP_REASON, DUPLICATE_OF)))
    }


def test_border_pass_catches_a_pair_split_by_a_cluster_border(tmp_path):
    rows = _border_rows()
    centroids = np.eye(2, DIM, dtype=np.float32)  # (2, D): e0, e1
    emb = np.asarray([r[CLIP_EMBEDDING] for r in rows], np.float32)
    nn, ip = D.assign(emb[:3], centroids, 2)
    assert nn.tolist() == [[0, 1], [1, 0], [0, 1]]  # the pair straddles the border
    assert D.border_clusters(nn, ip, centroids, 0.95, 1.0).tolist() == [1, 0, -1]  # a filler is far from it
    want = _decisions([apply_cascade(table_from_rows(rows), NEAR_ONLY)[0]])  # the exact greedy
    assert not want["b"][0] and want["b"][2] == "a" and want["b"][1].startswith("near_duplicate: cosine=0.99")
    assert sum(not k for k, _, _ in want.values()) == 1
    for order in (rows, rows[::-1]):  # the pair in either part, in either order
        paths = _write_parts(order, tmp_path / f"p{order[0][CLIP_ID]}", [3, len(rows) - 3])
        assert _decisions(_near_step(paths, centroids, None))["b"][0]  # pass 1 alone misses it
        for margin in (1.0, np.inf):  # border rows only, or every kept row
            assert _decisions(_near_step(paths, centroids, margin)) == want


def test_border_pass_keeps_the_most_similar_keeper_when_found_twice(tmp_path):
    """Three clusters (e0, e1, e2). `c` (nearest e1, then e0) duplicates both `x` (nearest e2,
    then e1) and `y` (nearest e0, then e2), two earlier keepers that are not duplicates of each
    other: the border pass finds c in e1's group (with x) and in e0's group (with y); c names
    the more similar keeper, y, as the exact greedy does."""
    rows = _border_rows()[2:]
    rows += [
        {
            CLIP_ID: "x",
            SOURCE_URI: "/v/x.mp4",
            AESTHETIC: 6.0,
            CLIP_EMBEDDING: _unit([0.5, 0.7, 1.0, 2.0, 0.5]),
        },
        {
            CLIP_ID: "y",
            SOURCE_URI: "/v/y.mp4",
            AESTHETIC: 6.0,
            CLIP_EMBEDDING: _unit([1.0, 0.7, 0.9, 2.0, -0.5]),
        },
        {
            CLIP_ID: "c",
            SOURCE_URI: "/v/c.mp4",
            AESTHETIC: 5.0,
            CLIP_EMBEDDING: _unit([0.7, 0.9, 0.6, 2.0, 0.0]),
        },
    ]
    for r in rows:
        r[STATUS] = STATUS_OK
    centroids = np.eye(3, DIM, dtype=np.float32)  # (3, D): e0, e1, e2
    emb = np.asarray([r[CLIP_EMBEDDING] for r in rows[-3:]], np.float32)
    assert D.assign(emb, centroids, 2)[0].tolist() == [[2, 1], [0, 2], [1, 0]]
    want = _decisions([apply_cascade(table_from_rows(rows), NEAR_ONLY)[0]])
    assert [c for c, (k, _, _) in want.items() if not k] == ["c"] and want["c"][2] == "y"
    for buckets in (1, 2, 3):  # the two findings in one reduce task or in two
        paths = _write_parts(rows, tmp_path / f"b{buckets}", [len(rows)])
        assert _decisions(_near_step(paths, centroids, 1.0, buckets=buckets)) == want


def test_near_duplicates_between_groups_is_the_greedy_on_cross_group_pairs():
    from curate.decisions import dedup

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(30, 8))[rng.integers(0, 30, 120)] + 0.15 * rng.normal(size=(120, 8))  # (120, 8)
    order = list(rng.permutation(120))
    one = dedup.near_duplicates(emb, order, 0.9, block=16)
    assert [
        (d.index, d.keeper) for d in dedup.near_duplicates_between(emb, order, range(120), 0.9, block=7)
    ] == [(d.index, d.keeper) for d in one]
    # rows already deduplicated within each group: the greedy over the whole equals it
    groups = rng.integers(0, 4, 120)
    keep = np.ones(120, bool)
    for g in range(4):
        idx = np.flatnonzero(groups == g)
        for d in dedup.near_duplicates(
            emb[idx], [int(np.flatnonzero(idx == i)[0]) for i in order if i in idx], 0.9
        ):
            keep[idx[d.index]] = False
    kept = np.flatnonzero(keep)
    sub_order = [int(np.flatnonzero(kept == i)[0]) for i in order if keep[i]]
    got = dedup.near_duplicates_between(emb[kept], sub_order, groups[kept], 0.9)
    want = dedup.near_duplicates(emb[kept], sub_order, 0.9)
    assert [(d.index, d.keeper) for d in got] == [(d.index, d.keeper) for d in want] and want


def test_kmeans_centroids_do_not_depend_on_part_order(tmp_path):
    rows = _run_rows(400, seed=5)
    near = D.NearDupConfig(sample_rows=200)
    got = []
    for name, order, sizes in (
        ("a", rows, [150, len(rows) - 150]),
        ("b", rows[::-1], [20, 300, len(rows) - 320]),
    ):
        paths = _write_parts(order, tmp_path / name, sizes)
        states = [D.part_state(pq.read_table(p), i) for i, p in enumerate(paths)]
        share = near.sample_rows / sum(D.alive_count(s) for s in states)
        samples = [D.sample_embeddings(p, s, share, near.seed) for p, s in zip(paths, states)]
        assert 150 < sum(len(h) for h, _ in samples) < 250
        got.append(D.train_centroids(samples, 4, near))
    assert got[0].shape == (4, DIM)
    np.testing.assert_array_equal(got[0], got[1])


@pytest.mark.ray
def test_clustered_decisions_do_not_depend_on_part_order(tmp_path, ray_local):
    """Several clusters: the k-means sample is chosen by content, so splitting and ordering the
    parts differently gives the same decisions row for row."""
    from jobs.runtime.decide import decide_parts

    rows = _run_rows(600, seed=4)
    near = D.NearDupConfig(cluster_rows=60, sample_rows=150)
    got = []
    for name, order, sizes in (
        ("a", rows, [250, 0, len(rows) - 250]),
        ("b", rows[::-1], [90, 400, len(rows) - 490]),
    ):
        src = _write_parts(order, tmp_path / name, sizes)
        dst = [str(tmp_path / f"{name}-out" / f"part-{k}.parquet") for k in range(len(src))]
        funnel, _ = decide_parts(src, dst, CFG, near=near, buckets=2)
        t = pa.concat_tables([pq.read_table(p) for p in dst])
        got.append(
            (
                funnel,
                sorted(
                    zip(
                        *(
                            t.column(c).to_pylist()
                            for c in (CLIP_ID, SOURCE_URI, KEPT, DROP_REASON, DUPLICATE_OF)
                        )
                    )
                ),
            )
        )
    assert got[0] == got[1]
    near_step = next(s for s in got[0][0] if s["step"] == "near_duplicate")
    assert near_step["in"] > 2 * near.cluster_rows and near_step["dropped"] > 0  # 3+ clusters, and it fired


@pytest.mark.ray
def test_clustered_near_duplicates_keep_what_the_exact_greedy_keeps(tmp_path, ray_local):
    """Ten k-means clusters over 16-d groups: pass 1 alone keeps rows whose duplicate lies
    across a border; with the border pass the kept rows are the exact greedy's. (A dropped
    row may still name another keeper: residual (2) of the `curate/decisions/decide.py` docstring.)"""
    from jobs.runtime.decide import decide_parts

    rows = _run_rows(600, seed=3)
    cfg = FilterConfig(rules=(), near_dup_cosine=0.95)
    want = apply_cascade(table_from_rows(rows), cfg)[0].column(KEPT).to_pylist()
    src = _write_parts(rows, tmp_path / "scored", [250, len(rows) - 250])
    wrong = {}
    for margin in (None, 1.0):
        dst = [str(tmp_path / f"out-{margin}" / f"part-{k}.parquet") for k in range(len(src))]
        decide_parts(
            src,
            dst,
            cfg,
            near=D.NearDupConfig(cluster_rows=60, sample_rows=300, border_margin=margin),
            buckets=2,
        )
        got = pa.concat_tables([pq.read_table(p) for p in dst]).column(KEPT).to_pylist()
        wrong[margin] = sum(a != b for a, b in zip(got, want))
    assert wrong[None] > 0 and wrong[1.0] == 0, wrong
