"""End to end: `jobs.curate` submitted with `ray job submit` to a head on 127.0.0.1 (smoke
preset, generated videos plus two real ones), then a few training steps from the shards and
one sampled video; every output is checked against the schema and the manifest. Then an
actor killed mid-run: Ray restarts it and every clip still comes out exactly once."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pandas as pd
import psutil
import pyarrow as pa
import pytest

from curate import schema as S
from curate.io import layout
from curate.io.storage import read_parts
from jobs.demo import make_samples
from latents.shards import read_manifest, verify_shards
from tests.raycluster import REPO, ray_env, ray_head, submit

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def inputs(real_videos, tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e") / "in"
    make_samples(d, size=(192, 108))
    for name in ("friends-video-clip.mp4", "issue-134-rotate.mp4"):
        shutil.copy(real_videos / name, d / name)
    return d


@pytest.fixture(scope="module")
def submitted(inputs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "out"
    with ray_head(tmp / "head.log") as address:
        r = submit(
            address, ["-m", "jobs.curate", "--input", str(inputs), "--output", str(out), "--preset", "smoke"]
        )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return out, r.stdout


def test_curate_outputs_follow_the_contract(submitted):
    out, stdout = submitted
    assert "succeeded" in stdout.lower()
    assert "RANDOM models" in stdout  # the smoke preset says so in its logs
    videos = read_parts(out / "videos", S.VIDEO_SCHEMA)
    assert videos.num_rows == 6
    clips = read_parts(out / "clips", S.CLIP_SCHEMA)
    S.validate(clips, upto="split")
    scored = read_parts(out / "scored", S.CLIP_SCHEMA)
    S.validate(scored, upto="filter")
    assert sorted(scored.column(S.CLIP_ID).to_pylist()) == sorted(clips.column(S.CLIP_ID).to_pylist())
    kept = {c for c, k in zip(scored.column(S.CLIP_ID).to_pylist(), scored.column(S.KEPT).to_pylist()) if k}
    dropped = scored.filter(pa.array([not k for k in scored.column(S.KEPT).to_pylist()]))
    assert kept and all(r for r in dropped.column(S.DROP_REASON).to_pylist())
    captions = read_parts(out / "captions", S.CLIP_SCHEMA)
    S.validate(captions, upto="caption")
    # phase 2 saw the kept clips only, each once: nothing is captioned or encoded in vain
    assert sorted(captions.column(S.CLIP_ID).to_pylist()) == sorted(kept)
    # phase 2 reads clip_embedding from the scored parts: every ok caption has its CLIP score
    assert all(
        r[S.CAPTION_CLIP_SCORE] is not None for r in captions.to_pylist() if r[S.STATUS] == S.STATUS_OK
    )
    summary = json.loads((out / "summary" / "curate.json").read_text())
    assert summary["rows_phase2"] == summary["kept"] == len(kept)
    manifest = read_manifest(out / "latents")
    verify_shards(out / "latents", manifest)  # checksums and row counts
    assert manifest["smoke"] is True and manifest["schema_version"] == S.SCHEMA_VERSION
    # the round-trip PSNR of the sampled clips survives the final rewrite of the shards (as in jobs.encode)
    assert sum(sh["metrics"]["roundtrip_psnr"]["n"] for sh in manifest["shards"] if sh["metrics"]) >= 1
    shards = pd.read_parquet(out / "latents")
    assert len(shards) == manifest["counts"]["rows"] > 0
    assert set(shards.clip_id) <= kept and shards.caption.notna().all()
    for shape, n_bytes, dtype in zip(shards.latent_shape, shards.latent.map(len), shards.latent_dtype):
        assert n_bytes == int(pd.Series(shape).prod()) * {"float16": 2, "bfloat16": 2, "float32": 4}[dtype]
    report = (out / "report" / "index.html").read_text()
    assert "random" in report.splitlines()[0].lower()
    # every file of the run is an entry of the layout map, and every marker lives under OUT/_done
    files = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()]
    assert [f for f in files if layout.kind_of(f) is None] == []
    assert {f.split("/")[1] for f in files if layout.kind_of(f) == "marker"} >= {
        "split",
        "curate-score",
        "curate-write",
    }


def test_train_and_sample_from_the_shards(submitted, tmp_path):
    out, _ = submitted
    run = tmp_path / "dit"
    env = ray_env()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train",
            "--input",
            str(out / "latents"),
            "--output",
            str(run),
            "--steps",
            "6",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [float(x.split(",")[1]) for x in (run / "loss.csv").read_text().splitlines()[1:]]
    assert losses and all(v == v for v in losses)  # logged, finite
    mp4 = tmp_path / "sample.mp4"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.sample",
            "--input",
            str(run),
            "--prompt",
            "a boat under a bridge",
            "--output",
            str(mp4),
            "--steps",
            "4",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with av.open(str(mp4)) as c:
        assert sum(1 for _ in c.decode(video=0)) >= 5


def _stream_parts(out: Path) -> int:
    """Phase-1 parts written so far (workers write them atomically, then their marker)."""
    return len(list((out / "scored").glob("part-*.parquet")))


def test_model_actor_killed_mid_run(inputs, submitted, tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.curate",
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--preset",
            "smoke",
            "--batch-size",
            "1",
            "--no-report",
        ],
        env=ray_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    killed = None
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and killed is None:
        if _stream_parts(out) >= 1:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if "MapWorker" in cmd and "_StageActor" in cmd and proc.info["pid"] != p.pid:
                    proc.send_signal(signal.SIGKILL)
                    killed = proc.info["pid"]
                    break
        time.sleep(0.1)
    log, _ = p.communicate(timeout=600)
    assert killed is not None, "no model actor was found to kill"
    assert p.returncode == 0, log[-4000:]
    summary = json.loads((out / "summary" / "curate.json").read_text())
    ref = json.loads((submitted[0] / "summary" / "curate.json").read_text())
    staged = pd.concat(
        [pd.read_parquet(f, columns=["clip_id"]) for f in (out / "scored").glob("part-*.parquet")]
    )
    assert staged.clip_id.is_unique  # exactly once
    captioned = pd.concat(
        [pd.read_parquet(f, columns=["clip_id"]) for f in (out / "captions").glob("part-*.parquet")]
    )
    assert captioned.clip_id.is_unique
    for key in ("clips", "scored", "kept", "captioned", "encoded"):
        assert summary[key] == ref[key], key
    a = pd.read_parquet(out / "scored").set_index("clip_id").kept.sort_index()
    b = pd.read_parquet(submitted[0] / "scored").set_index("clip_id").kept.sort_index()
    assert a.equals(b)


def test_whole_run_killed_then_resumed(inputs, submitted, tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.curate",
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--preset",
            "smoke",
            "--batch-size",
            "1",
            "--no-report",
        ],
        env=ray_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and p.poll() is None and _stream_parts(out) < 2:
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the driver and every Ray process it started
        p.wait()
    staged_before = _stream_parts(out)
    assert staged_before >= 2 and not (out / "summary" / "curate.json").exists(), "the kill must land mid-run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.curate",
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--preset",
            "smoke",
            "--no-report",
        ],
        env=ray_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary" / "curate.json").read_text())
    ref = json.loads((submitted[0] / "summary" / "curate.json").read_text())
    assert summary["rows_streamed"] < ref["rows_streamed"]  # the staged clips were not redone
    for key in ("clips", "scored", "kept", "captioned", "encoded"):
        assert summary[key] == ref[key], key
    assert summary["rows_phase2"] == 0 or summary["rows_phase2"] <= ref["rows_phase2"]
    a = pd.read_parquet(out / "latents").clip_id.sort_values().tolist()
    b = pd.read_parquet(submitted[0] / "latents").clip_id.sort_values().tolist()
    assert a == b and len(a) == len(set(a))
