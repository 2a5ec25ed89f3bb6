"""`python -m jobs.bench scale [--sizes 1e4,1e5,1e6]`: run-level decisions at 10^4..10^6 clips.

Synthetic scored rows (768-d fp16 embeddings in near-duplicate groups drawn around shared
topics, scores, error rows, exact copies under another file name) are written as Parquet
parts by Ray tasks, never built on the driver. For each size the decision step (the code of
`python -m jobs.filter`, default preset filters) runs in this process as the driver, and it
reports: seconds, seconds per 10^5 clips, the growth exponent between sizes
(log t2/t1 / log N2/N1) and the driver's peak RSS during the step (psutil, sampled every
20 ms). With `--join` it also times the score job's join of clip rows and score rows
(the hash shuffle of `jobs/runtime/score_merge.py`) with the same measures. At `--recall-at`
(10^5) it also runs the near-duplicate step alone twice, clustered
(default `--cluster-rows` and `--border-margin`; 0: no border pass) and as one cluster
(the exact greedy over the whole run), and reports the clustered run's recall and precision
of dropped near-duplicates against the exact one. `--spread` makes that harder: groups lie
between two topics and a share of duplicate pairs straddle a k-means cluster border (the
default data's groups never do). The machine load (1-minute load average) is printed next
to every timing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate import schema as S
from curate.decisions import decide as D
from curate.decisions import filters
from jobs.runtime import flags

DIM = 768
GROUP = 3  # rows per near-duplicate group (some groups are three unrelated clips)
PART_ROWS = 9_999  # a multiple of GROUP, so groups never straddle parts
SPREAD_W = 0.05  # --spread: sd of a member's topic-mixing weight around its group's


def synth_part(path: str, part: int, rows: int, seed: int = 0, spread: bool = False) -> int:
    """One Parquet part of `rows` synthetic scored clips (deterministic in seed and part).

    Default ("tight"): each group sits on one topic, so its members share a k-means cluster.
    `spread`: each group sits between two topics (mixing weight w ~ U(0, 1)) and every member
    has its own weight (w + N(0, SPREAD_W)), so members spread along the line between the
    topics and some duplicate pairs straddle a cluster border. Same rows, ids and scores.
    """
    rng = np.random.default_rng([seed, part])
    topics = np.random.default_rng([seed, 10**6]).standard_normal((64, DIM)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    groups = -(-rows // GROUP)
    # group centres: a topic plus an own direction (cos with the topic ~0.6): the run has structure
    own = rng.standard_normal((groups, DIM)).astype(np.float32)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    topic = rng.integers(0, len(topics), groups)
    if spread:  # important: its own generator, so the default mode's draws are unchanged
        srng = np.random.default_rng([seed, part, 1])
        other = srng.integers(0, len(topics), groups)
        w = np.repeat(srng.uniform(0, 1, groups), GROUP)[:rows] + SPREAD_W * srng.standard_normal(rows)
        w = w.astype(np.float32)
        mix = w[:, None] * topics[np.repeat(topic, GROUP)[:rows]]  # (rows, D)
        mix += (1 - w)[:, None] * topics[np.repeat(other, GROUP)[:rows]]
        mix /= np.linalg.norm(mix, axis=1, keepdims=True)
        centres = mix + 1.3 * np.repeat(own, GROUP, axis=0)[:rows]  # per member: (rows, D)
    else:
        centres = topics[topic] + 1.3 * own  # per group: (groups, D)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # member noise per group: member-member cosine from ~0.93 to ~0.99 (some pairs miss 0.95)
    sigma = rng.uniform(0.003, 0.0095, groups).astype(np.float32)
    unrelated = rng.random(groups) < 0.3
    emb = centres if spread else np.repeat(centres, GROUP, axis=0)[:rows]  # (groups, D) -> (rows, D)
    emb += np.repeat(sigma, GROUP)[:rows, None] * rng.standard_normal((rows, DIM)).astype(np.float32)
    free = np.repeat(unrelated, GROUP)[:rows]
    emb[free] = rng.standard_normal((int(free.sum()), DIM)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    base = part * 10**7
    ids = [f"clip-{base + i:012d}" for i in range(rows)]
    uris = [f"s3://raw/video-{(base + i) // 40:09d}.mp4" for i in range(rows)]
    copies = np.flatnonzero(rng.random(rows) < 0.005)  # the same clip found under another name
    for i in copies[copies > 0]:
        ids[i], uris[i] = ids[i - 1], uris[i - 1].replace("video-", "copy-")
        emb[i] = emb[i - 1]
    status = np.where(rng.random(rows) < 0.01, S.STATUS_ERROR, S.STATUS_OK)
    flat = pa.array(emb.astype(np.float16).reshape(-1))  # (rows, D) -> (rows*D,)
    cols = {
        S.CLIP_ID: ids,
        S.SOURCE_URI: uris,
        S.STATUS: status,
        S.FAILED_STAGE: np.where(status == S.STATUS_OK, None, "score"),
        S.SHARPNESS: rng.lognormal(5.3, 0.6, rows).astype(np.float32),
        S.BLACK_FRACTION: rng.beta(0.5, 6, rows).astype(np.float32),
        S.IS_STATIC: rng.random(rows) < 0.05,
        S.BRIGHTNESS: rng.uniform(0.1, 0.8, rows).astype(np.float32),
        S.MOTION: rng.uniform(0, 1, rows).astype(np.float32),
        S.AESTHETIC: np.round(rng.uniform(3.5, 7.5, rows), 2).astype(np.float32),
        S.CLIP_EMBEDDING: pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * DIM), flat),
    }
    # the scores of the default preset's later rules; their own generator leaves the rest unchanged
    xrng = np.random.default_rng([seed, part, 2])
    cols[S.NSFW] = xrng.beta(0.4, 6, rows).astype(np.float32)
    cols[S.TEXT_AREA] = np.where(xrng.random(rows) < 0.1, xrng.uniform(0, 0.3, rows), 0.0).astype(np.float32)
    table = S.conform(
        pa.table({k: pa.array(v) if not isinstance(v, pa.Array) else v for k, v in cols.items()})
    )
    pq.write_table(table, path, compression="zstd", row_group_size=2048)
    return rows


def make_run(folder: Path, n: int, seed: int = 0, spread: bool = False) -> int:
    """Write n synthetic rows as parts, by Ray tasks; returns the number of parts."""
    import ray

    folder.mkdir(parents=True, exist_ok=True)
    task = ray.remote(synth_part)
    sizes = [PART_ROWS] * (n // PART_ROWS) + ([n % PART_ROWS] if n % PART_ROWS else [])
    ray.get(
        [task.remote(str(folder / f"part-{k:05d}.parquet"), k, s, seed, spread) for k, s in enumerate(sizes)]
    )
    return len(sizes)


class PeakRSS:
    """The driver's resident memory, sampled every 20 ms while in the `with` block."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _decide(src: Path, dst: Path, cfg: filters.FilterConfig, near: D.NearDupConfig) -> dict:
    from jobs.runtime.filter_plan import decide_dir

    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    with PeakRSS() as rss:
        funnel, parts = decide_dir(src, dst, cfg, near, marker_root=None)
    secs = time.perf_counter() - t
    return {
        "seconds": secs,
        "driver_peak_rss_mb": rss.peak / 2**20,
        "driver_start_rss_mb": rss.start / 2**20,
        "load_1min": load,
        "funnel": funnel,
        "parts": parts,
    }


def _near_dropped(folder: Path) -> set[str]:
    out: set[str] = set()
    for p in sorted(folder.glob("part-*.parquet")):
        t = pq.read_table(p, columns=[S.CLIP_ID, S.SOURCE_URI, S.DROP_REASON])
        for cid, uri, r in zip(*(t.column(c).to_pylist() for c in (S.CLIP_ID, S.SOURCE_URI, S.DROP_REASON))):
            if r and r.startswith(filters.NEAR_DUP):
                out.add(f"{cid}|{uri}")
    return out


def recall_precision(src: Path, root: Path, near: D.NearDupConfig) -> dict:
    """Clustered near-dup decisions against the exact greedy (one cluster) on the same rows."""
    cfg = filters.FilterConfig(rules=(), exact_dedup=True, near_dup_cosine=filters.DEFAULT.near_dup_cosine)
    clustered = _decide(src, root / "near-clustered", cfg, near)
    exact = _decide(src, root / "near-exact", cfg, D.NearDupConfig(cluster_rows=10**12))
    a, b = _near_dropped(root / "near-clustered"), _near_dropped(root / "near-exact")
    both = len(a & b)
    return {
        "clustered_seconds": clustered["seconds"],
        "exact_seconds": exact["seconds"],
        "exact_dropped": len(b),
        "clustered_dropped": len(a),
        "recall": both / max(len(b), 1),
        "precision": both / max(len(a), 1),
        "cluster_rows": near.cluster_rows,
        "border_margin": near.border_margin,
    }


def join_step(src: Path, root: Path) -> dict:
    """The score job's join (clip rows + score rows by clip_id, `jobs/runtime/score_merge.py`) over `src`."""
    from jobs.runtime.score_merge import SCORE_PART_COLUMNS, join_scores, merge_scores

    parts = sorted(str(p) for p in src.glob("part-*.parquet"))
    dst = root / "joined"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    n = sum(pq.read_metadata(p).num_rows for p in parts)
    outputs = [
        str(dst / f"part-{k:05d}.parquet") for k in range(max(1, -(-n // 50_000)))
    ]  # the job's part_rows
    load = os.getloadavg()[0]
    t = time.perf_counter()
    with PeakRSS() as rss:  # the scored parts serve as both sides: clip rows and score rows
        rows = join_scores(parts, parts, SCORE_PART_COLUMNS, merge_scores, outputs)
    return {
        "join_seconds": time.perf_counter() - t,
        "join_rows": rows,
        "join_driver_peak_rss_mb": rss.peak / 2**20,
        "join_driver_start_rss_mb": rss.start / 2**20,
        "join_load_1min": load,
    }


def rewrite_cost(src: Path, root: Path) -> dict:
    """What recording decisions costs: every scored part rewritten whole (what the decide step
    does: embeddings included) against the decision columns alone written beside them (a sidecar
    set), one part after the other in this process. Same parts, same writer."""
    from curate.io.storage import write_parquet_atomic

    cols = [S.CLIP_ID, S.KEPT, S.DROP_REASON, S.DROP_RULE, S.DUPLICATE_OF]
    seconds = {}
    for name, columns in (("rewrite_seconds", None), ("sidecar_seconds", cols)):
        out = root / name
        t = time.perf_counter()
        for part in sorted(src.glob("part-*.parquet")):
            write_parquet_atomic(pq.read_table(part, columns=columns), out / part.name)
        seconds[name] = time.perf_counter() - t
        shutil.rmtree(out, ignore_errors=True)
    return {**seconds, "scored_mb": sum(f.stat().st_size for f in src.glob("part-*.parquet")) / 2**20}


def make_videos(folder: Path, n: int) -> None:
    """n small generated videos (three shots, hard cuts), each with its own patterns."""
    from curate.synthetic.synth import Segment, make_video

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        segs = [
            Segment("shot", 60, (i + k) % 6, speed=1.0 + 0.5 * k + 0.07 * i) for k in range(3)
        ]  # all distinct
        make_video(folder / f"gen-{i:03d}.mp4", segs, fps=24, width=160, height=96)


def curate_rss(root: Path, n: int) -> dict:
    """`python -m jobs.curate` (smoke) on n generated videos; peak RSS of its driver process only."""
    import subprocess
    import sys

    import psutil

    videos, out = root / f"videos-{n}", root / f"curate-{n}"
    shutil.rmtree(out, ignore_errors=True)
    make_videos(videos, n)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.curate",
            "--input",
            str(videos),
            "--output",
            str(out),
            "--preset",
            "smoke",
            "--no-report",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        raise RuntimeError(f"jobs.curate failed on {n} videos:\n{err[-3000:]}")
    summary = json.loads((out / "summary" / "curate.json").read_text())
    return {
        "videos": n,
        "clips": summary["clips"],
        "kept": summary["kept"],
        "captioned": summary["captioned"],
        "encoded": summary["encoded"],
        "rows_phase2": summary["rows_phase2"],
        "seconds": time.perf_counter() - t,
        "driver_peak_rss_mb": peak / 2**20,
        "load_1min": load,
    }


def _growth(results: list[dict], i: int, key: str) -> str:
    """Growth exponent of `key` from the previous size: log(t2/t1) / log(N2/N1)."""
    if not i:
        return ""
    a, b = results[i - 1], results[i]
    return f"{math.log(b[key] / a[key]) / math.log(b['clips'] / a['clips']):.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.bench scale",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated clip counts")
    p.add_argument(
        "--recall-at",
        type=flags.finite_float,
        default=1e5,
        help="size at which to compare with the exact greedy (0: skip)",
    )
    p.add_argument(
        "--cluster-rows", type=int, default=D.NearDupConfig.cluster_rows, help="rows per near-dup cluster"
    )
    p.add_argument(
        "--border-margin",
        type=flags.float_or_inf,
        default=D.NearDupConfig.border_margin,
        help="near-duplicate border pass: a kept row joins its second-nearest cluster within this "
        "multiple of the pair bound (inf: every kept row; 0: none, pass 1 alone)",
    )
    p.add_argument(
        "--spread",
        action="store_true",
        help="harder near-duplicate data: groups lie between two "
        "topics and their members spread along that line, so some duplicate pairs straddle a "
        "k-means cluster border",
    )
    p.add_argument("--out", default="bench-out/scale", help="scratch folder for the benchmark's outputs")
    p.add_argument("--keep", action="store_true", help="keep the generated parts")
    p.add_argument(
        "--join",
        action="store_true",
        help="also time the score job's clip/score join (a hash "
        "shuffle on clip_id in Ray tasks) at each size",
    )
    p.add_argument(
        "--rewrite",
        action="store_true",
        help="also time recording the decisions by rewriting every scored part whole (what the "
        "decide step does) against writing the decision columns alone beside them",
    )
    p.add_argument(
        "--curate-videos",
        default="",
        help="also run jobs.curate on these numbers of generated "
        "videos (e.g. 8,32) and report its driver's peak RSS",
    )
    a = p.parse_args(argv)
    try:
        sizes = [int(float(s)) for s in a.sizes.split(",") if s and s != "0"]
    except ValueError:
        p.error(f"--sizes must be comma-separated numbers like 1e4,1e5, got {a.sizes!r}")
    if (not sizes and not a.curate_videos) or (sizes and min(sizes) < 1):
        p.error(f"--sizes must be positive clip counts, got {a.sizes!r}; e.g. 1e4,1e5,1e6")
    root = Path(a.out)
    if a.curate_videos:
        runs = [curate_rss(root, int(v)) for v in a.curate_videos.split(",") if v]
        print(
            "| videos | clips | kept | captioned | encoded | wall s | jobs.curate driver peak RSS MB | load |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in runs:
            print(
                f"| {r['videos']} | {r['clips']} | {r['kept']} | {r['captioned']} | {r['encoded']} | "
                f"{r['seconds']:.0f} | {r['driver_peak_rss_mb']:.0f} | {r['load_1min']:.1f} |"
            )
        root.mkdir(parents=True, exist_ok=True)
        (root / "bench_curate_rss.json").write_text(json.dumps(runs, indent=2))
        if not sizes:
            return 0
    from jobs.runtime.adapter import init_ray

    init_ray()
    near = D.NearDupConfig(cluster_rows=a.cluster_rows, border_margin=a.border_margin or None)
    results = []
    for n in sizes:
        src = root / f"n{n}" / "scored"
        shutil.rmtree(root / f"n{n}", ignore_errors=True)
        t = time.perf_counter()
        parts = make_run(src, n, spread=a.spread)
        gen = time.perf_counter() - t
        r = {
            "clips": n,
            "parts": parts,
            "generate_seconds": gen,
            **_decide(src, root / f"n{n}" / "filtered", filters.DEFAULT, near),
        }
        r["seconds_per_1e5"] = r["seconds"] / n * 1e5
        if a.join:
            r.update(join_step(src, root / f"n{n}"))
            r["join_seconds_per_1e5"] = r["join_seconds"] / n * 1e5
        if a.rewrite:
            r.update(rewrite_cost(src, root / f"n{n}"))
        if a.recall_at and n == int(a.recall_at):
            r["near_dup_vs_exact"] = recall_precision(src, root / f"n{n}", near)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "funnel"}, default=float), flush=True)
        if not a.keep:
            shutil.rmtree(root / f"n{n}", ignore_errors=True)
    print(
        f"\nrun-level decisions (jobs.filter code, default filters, cluster_rows={a.cluster_rows}, "
        f"border margin {a.border_margin:g}, data {'spread' if a.spread else 'tight'}), "
        f"{os.cpu_count()} CPUs"
    )
    print("| clips | parts | decide s | s per 1e5 | growth exponent | driver peak RSS MB | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for i, r in enumerate(results):
        g = _growth(results, i, "seconds")
        print(
            f"| {r['clips']:,} | {r['parts']} | {r['seconds']:.1f} | {r['seconds_per_1e5']:.1f} | {g} | "
            f"{r['driver_peak_rss_mb']:.0f} | {r['load_1min']:.1f} |"
        )
    if a.join:
        print("\nscore job's join (clip rows + score rows by clip_id, Ray tasks)")
        print("| clips | join s | s per 1e5 | growth exponent | driver peak RSS MB | load (1 min) |")
        print("|---|---|---|---|---|---|")
        for i, r in enumerate(results):
            g = _growth(results, i, "join_seconds")
            print(
                f"| {r['clips']:,} | {r['join_seconds']:.1f} | {r['join_seconds_per_1e5']:.1f} | {g} | "
                f"{r['join_driver_peak_rss_mb']:.0f} | {r['join_load_1min']:.1f} |"
            )
    if a.rewrite:
        print("\nrecording decisions: scored parts rewritten whole vs the decision columns beside them")
        print("| clips | scored MB | rewrite s | decision columns s | ratio | decide s |")
        print("|---|---|---|---|---|---|")
        for r in results:
            ratio = r["rewrite_seconds"] / max(r["sidecar_seconds"], 1e-9)
            print(
                f"| {r['clips']:,} | {r['scored_mb']:.0f} | {r['rewrite_seconds']:.1f} | "
                f"{r['sidecar_seconds']:.2f} | {ratio:.0f}x | {r['seconds']:.1f} |"
            )
    for r in results:
        if "near_dup_vs_exact" in r:
            q = r["near_dup_vs_exact"]
            print(
                f"\nnear-dup at {r['clips']:,}: recall {q['recall']:.4f}, precision {q['precision']:.4f} "
                f"(exact greedy dropped {q['exact_dropped']}, clustered {q['clustered_dropped']}; "
                f"{q['exact_seconds']:.1f} s exact vs {q['clustered_seconds']:.1f} s clustered)"
            )
    root.mkdir(parents=True, exist_ok=True)
    (root / "bench_scale.json").write_text(json.dumps(results, indent=2, default=float))
    return 0
