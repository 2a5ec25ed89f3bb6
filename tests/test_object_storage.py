"""Object storage end to end, against a real S3 API server (moto) on 127.0.0.1:
`jobs.curate` from s3://bucket/raw to s3://bucket/out, killed with SIGKILL half-way and rerun
(same clips and shard rows as an uninterrupted run), shards read back with pandas and trained
on for 5 steps, bad buckets / credentials / list entries, and no credential string anywhere."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from curate import schema as S
from curate.io import storage
from jobs.demo import make_samples
from tests.raycluster import REPO, ray_env

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BUCKET = "tubelet-e2e"
RAW = f"s3://{BUCKET}/raw"
LOGS: list[str] = []  # every stdout/stderr of this module's jobs, for the credential grep
RAY_TMP: list = []  # the module's RAY_TMPDIR: Ray session logs of every job here


@pytest.fixture(scope="module")
def s3env(s3_server, tmp_path_factory):
    RAY_TMP[:] = [tmp_path_factory.mktemp("raytmp")]
    with pytest.MonkeyPatch.context() as mp:
        for k, v in s3_server.env.items():
            mp.setenv(k, v)
        mp.setenv("RAY_TMPDIR", str(RAY_TMP[0]))
        yield s3_server


@pytest.fixture(scope="module")
def raw(s3env, tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    make_samples(d, size=(128, 72))
    s3env.make_bucket(BUCKET)
    return s3env.upload_dir(d, RAW, "*.mp4")


RAY_START_TIMEOUT = "timed out during startup"  # Ray's fixed 30 s raylet wait, hit on an overloaded machine


def job(
    module: str, *args: str, env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    for _ in range(3):  # important: retried only when Ray itself failed to start, never on our errors
        r = subprocess.run(
            [sys.executable, "-m", module, *args],
            env=env or ray_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        LOGS.extend([r.stdout, r.stderr])
        if RAY_START_TIMEOUT not in r.stderr:
            return r
    return r


def curate_args(out: str, *extra: str) -> list[str]:
    return ["--input", RAW, "--output", out, "--preset", "smoke", "--no-report", *extra]


@pytest.fixture(scope="module")
def reference(raw):
    out = f"s3://{BUCKET}/ref"
    r = job("jobs.curate", *curate_args(out))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return out


def shard_rows(out: str) -> pd.DataFrame:
    latents = storage.join(out, "latents")
    df = pd.read_parquet(latents, storage_options=storage.storage_options(latents))
    return df.sort_values(S.CLIP_ID).reset_index(drop=True)


def test_curate_on_s3_killed_half_way_resumes_to_the_same_outputs(reference):
    out = f"s3://{BUCKET}/killed"
    p = subprocess.Popen(
        [sys.executable, "-m", "jobs.curate", *curate_args(out, "--batch-size", "1")],
        env=ray_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 900
    try:
        # a phase-1 (scored) part counts once its marker is written (a part without one is redone)
        while (
            time.time() < deadline
            and p.poll() is None
            and not storage.list_files(storage.join(out, "_done", "curate-score"))
        ):
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # the driver and every Ray process it started
        p.wait()
    assert storage.list_files(storage.join(out, "scored"), ".parquet")
    assert not storage.exists(storage.join(out, "summary", "curate.json")), "the kill must land mid-run"
    # nothing half-written: every object that exists is whole (Parquet parts open)
    for part in storage.list_files(storage.join(out, "scored"), ".parquet"):
        storage.read_table(part, columns=[S.CLIP_ID])

    r = job("jobs.curate", *curate_args(out))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    summary = storage.read_json(storage.join(out, "summary", "curate.json"))
    ref = storage.read_json(storage.join(reference, "summary", "curate.json"))
    assert summary["rows_streamed"] < ref["rows_streamed"]  # staged clips were not redone
    for key in ("clips", "scored", "kept", "captioned", "encoded"):
        assert summary[key] == ref[key], key
    a, b = (storage.read_parts(storage.join(o, "scored"), S.CLIP_SCHEMA) for o in (out, reference))
    assert sorted(a.column(S.CLIP_ID).to_pylist()) == sorted(b.column(S.CLIP_ID).to_pylist())
    sa, sb = shard_rows(out), shard_rows(reference)
    assert len(sa) == len(sb) > 0 and sa[S.CLIP_ID].is_unique
    # the same rows (clips); their smoke captions and latents depend on how clips were batched
    # (random models, padded batches), which a --batch-size 1 run does not share
    for col in (S.CLIP_ID, S.SOURCE_URI, S.START_FRAME, S.END_FRAME, S.LATENT_DTYPE):
        assert sa[col].tolist() == sb[col].tolist(), col
    assert sa[S.CAPTION].notna().all()
    assert [list(x) for x in sa[S.LATENT_SHAPE]] == [list(x) for x in sb[S.LATENT_SHAPE]]
    assert set(sa[S.SOURCE_URI]) <= set(storage.list_files(RAW, ".mp4"))  # rows name the objects


def test_pandas_reads_the_shards_and_train_runs_5_steps_from_s3(reference):
    df = shard_rows(reference)
    manifest = storage.read_json(storage.join(reference, "latents", ".manifest.json"))
    assert len(df) == manifest["counts"]["rows"] > 0
    run = f"s3://{BUCKET}/runs/five"
    r = job(
        "jobs.train",
        "--input",
        storage.join(reference, "latents"),
        "--output",
        run,
        "--steps",
        "5",
        "--ckpt-every",
        "5",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert storage.exists(storage.join(run, "checkpoints", "step-0000005", "state.json"))
    rows = storage.read_bytes(storage.join(run, "loss.csv")).decode().strip().splitlines()
    assert rows[-1].startswith("5,")


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_bad_bucket_and_credentials_are_one_line_errors(raw, s3env):
    msg = _one_line_error(job("jobs.curate", *curate_args("s3://no-such-bucket-x/out")))
    assert "NO_SUCH_BUCKET" in msg or "does not exist" in msg
    msg = _one_line_error(
        job(
            "jobs.curate",
            "--input",
            "s3://no-such-bucket-x/raw",
            "--output",
            f"s3://{BUCKET}/never",
            "--preset",
            "smoke",
        )
    )
    assert "bucket" in msg
    bad = dict(ray_env(), AWS_SECRET_ACCESS_KEY="wrong-secret-0123")
    msg = _one_line_error(job("jobs.curate", *curate_args(f"s3://{BUCKET}/never"), env=bad))
    assert "SIGNATURE" in msg or "credentials" in msg
    assert "wrong-secret-0123" not in msg and s3env.secret_key not in msg
    msg = _one_line_error(
        job(
            "jobs.train",
            "--input",
            f"s3://{BUCKET}/nothing",
            "--output",
            f"s3://{BUCKET}/runs/never",
            "--steps",
            "1",
        )
    )
    assert "--input" in msg and "s3://" in msg


def test_a_missing_object_in_a_list_file_is_an_error_row(raw):
    listing = f"s3://{BUCKET}/lists/videos.txt"
    storage.write_bytes_atomic(f"{raw[0]}\n# comment\n../raw/not-there.mp4\n".encode(), listing)
    out = f"s3://{BUCKET}/listed"
    r = job("jobs.split", "--input", listing, "--output", out)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    videos = storage.read_parts(storage.join(out, "videos"), S.VIDEO_SCHEMA).to_pylist()
    by_uri = {v[S.SOURCE_URI]: v for v in videos}
    missing = by_uri[f"s3://{BUCKET}/raw/not-there.mp4"]
    assert missing[S.STATUS] == S.STATUS_ERROR and missing[S.FAILED_STAGE] == "probe" and missing[S.ERROR]
    assert "\n" not in missing[S.ERROR]
    assert by_uri[raw[0]][S.STATUS] == S.STATUS_OK


def test_no_credential_string_in_any_output_or_log(s3env, reference):
    """Runs last in this module: every object in the bucket and every job log of this module."""
    secrets = [s.encode() for s in s3env.secrets()]
    objects = storage.list_files(f"s3://{BUCKET}", recursive=True, hidden=True)
    assert any(o.endswith(".manifest.json") for o in objects) and len(objects) > 20
    for uri in objects:
        data = storage.read_bytes(uri)
        assert not any(s in data for s in secrets), uri
    assert LOGS and not any(s.decode() in log for log in LOGS for s in secrets)
    ray_logs = [
        p for p in RAY_TMP[0].rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err", ".txt")
    ]
    assert ray_logs  # Ray's own session logs (driver, workers, raylet, GCS) of these jobs
    for p in ray_logs:
        data = p.read_bytes()
        assert not any(s in data for s in secrets), p
