"""One command line for every job (jobs/runtime/flags.py): every bad argument exits 2 with one line,
`error: <rule>, got <value>; <fix>`, before Ray starts; asking for more GPUs/CPUs than the
machine has fails at once; relative paths work from any directory.

The table runs each job's `cli(argv)` in-process (fast); a few rows also run as real
subprocesses, the way a user types them.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate import schema as S
from curate.io.storage import write_parquet_atomic
from tests.media import two_shot_video

REPO = Path(__file__).resolve().parent.parent
MANY = "4096"  # more GPUs / CPUs than any machine this runs on


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """A run folder with one (empty-schema) Parquet part per stage, a video, a training run and a file."""
    root = tmp_path_factory.mktemp("cli")
    # one row per stage holding what that stage writes: the jobs check the content, not the names
    row = {S.CLIP_ID: "c0", S.VIDEO_ID: "v0", S.STATUS: S.STATUS_OK}
    filled = {
        "clips": row,
        "scored": {**row, S.MOTION: 1.0, S.KEPT: True},
        "captions": {**row, S.MOTION: 1.0, S.KEPT: True, S.CAPTION: "a cat"},
    }
    for stage, r in filled.items():
        write_parquet_atomic(S.table_from_rows([r]), root / stage / "part-00000.parquet")
    two_shot_video(root / "in" / "a.mp4")
    (root / "run").mkdir()
    (root / "run" / "config.json").write_text("{}")
    (root / "a-file").write_text("not a folder")
    (root / "bad.toml").write_text('rules = ["aesthetic>=5"\n')
    (root / "unknown-key.toml").write_text("rulez = []\n")
    write_parquet_atomic(S.table_from_rows([filled["scored"]]), root / "smoke-scored" / "part-00000.parquet")
    (root / "smoke-scored" / "_funnel.json").write_text(json.dumps({"smoke": True}))
    return root


# job -> the arguments of a run that would start (each bad row replaces or adds one flag)
GOOD = {
    "split": ["--input", "{o}/in", "--output", "{o}/o"],
    "score": ["--input", "{o}/clips", "--output", "{o}/scored2"],
    "caption": ["--input", "{o}/scored", "--output", "{o}/captions2"],
    "encode": ["--input", "{o}/captions", "--output", "{o}/latents"],
    "curate": ["--input", "{o}/in", "--output", "{o}/o"],
    "train": ["--input", "synthetic:4", "--output", "{o}/dit", "--device", "cpu"],
    "sample": ["--input", "{o}/run", "--prompt", "a cat", "--output", "{o}/s.mp4"],
    "report": ["--output", "{o}"],
    "filter": ["--input", "{o}/scored", "--output", "{o}/filtered"],
}

BAD = [
    ("split", ["--actors", "-2"], "--actors must be >= 0, got -2"),
    ("split", ["--cpus", "0"], "--cpus must be > 0, got 0"),
    ("split", ["--cpus", MANY], "must have them, got"),
    ("split", ["--input", "{o}/missing"], "must be an existing directory"),
    ("split", ["--min-seconds", "0"], "min_seconds must be > 0, got 0"),
    ("split", ["--detector", "nope"], "invalid choice"),
    ("split", ["--bogus"], "unrecognized arguments"),
    ("score", ["--actors", "0"], "--actors must be >= 1, got 0"),
    ("score", ["--gpus", "-1"], "--gpus must be >= 0, got -1"),
    ("score", ["--gpus", MANY], "GPU(s) in all and this machine"),
    ("score", ["--cpus", MANY], "CPU(s) and this machine"),
    ("score", ["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("score", ["--device", "cuda"], "--device cuda needs GPUs given to the actors"),
    ("score", ["--input", "{o}/scored"], "must hold clips to score"),
    ("score", ["--preset", "huge"], "invalid choice"),
    ("caption", ["--actors", "0"], "--actors must be >= 1, got 0"),
    ("caption", ["--gpus", MANY], "GPU(s) in all"),
    ("caption", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ("caption", ["--input", "{o}/clips"], "--input must hold decision columns (kept, drop_reason)"),
    ("caption", ["--cpus", "-1"], "--cpus must be > 0, got -1"),
    ("encode", ["--input", "{o}/scored"], "--input must hold captions"),
    ("encode", ["--input", "{o}/in"], "no Parquet parts"),
    ("encode", ["--actors", "0"], "--actors must be >= 1, got 0"),
    ("encode", ["--gpus", MANY], "GPU(s) in all"),
    ("encode", ["--max-shard-mb", "0"], "--max-shard-mb must be >= 1, got 0"),
    ("curate", ["--cpus", "-1"], "--cpus must be > 0, got -1"),
    ("curate", ["--score-gpus", MANY], "GPU(s) in all"),
    ("curate", ["--caption-actors", "0"], "--caption-actors must be >= 1, got 0"),
    ("curate", ["--cpus", MANY], "CPU(s) and this machine"),
    ("curate", ["--device", "cuda"], "--device cuda needs GPUs"),
    ("curate", ["--output", "{o}/a-file/out"], "must be writable"),
    ("train", ["--workers", "0"], "--workers must be >= 1, got 0"),
    ("train", ["--workers", MANY], "CPU(s) and this machine"),
    ("train", ["--steps", "0"], "--steps must be >= 1, got 0"),
    ("train", ["--input", "{o}/in"], "must be a finished latents folder"),
    ("train", ["--output", "{o}/a-file/run"], "--output must be in a writable folder"),
    ("train", ["--device", "tpu"], "--device must be auto, cpu or cuda"),
    ("train", ["--out", "{o}/run"], "unrecognized arguments: --out"),  # no prefix matching of --output
    ("sample", ["--init-video", "{o}/missing.mp4"], "--init-video must be an existing video file"),
    ("sample", ["--frames", "0"], "--frames must be >= 1, got 0"),
    ("sample", ["--output", "{o}/a-file/s.mp4"], "--output must be in a writable folder"),
    ("sample", ["--strength", "2"], "--strength must be in (0, 1], got 2"),
    ("sample", ["--input", "{o}/in"], "must be a training run folder"),
    ("sample", ["--steps", "0"], "--steps must be >= 1, got 0"),
    ("sample", ["--output", "{o}/s.gif"], "--output must be an .mp4 file, got"),
    ("report", ["--output", "{o}/missing"], "must be an existing run folder"),
    ("report", ["--max-previews", "-1"], "--max-previews must be >= 0, got -1"),
    ("filter", ["--cluster-rows", "0"], "--cluster-rows must be >= 1, got 0"),
    ("filter", ["--border-margin", "-1"], "--border-margin must be >= 0, got -1"),
    ("filter", ["--preset", "huge"], "invalid choice"),
    # rules from the command line and a file, validated against the score columns
    ("filter", ["--rule", "aesthtic>=5"], "column must be a score column"),
    ("filter", ["--rule", "aesthetic>5"], "--rule must be COLUMN>=VALUE"),
    ("filter", ["--rule", "aesthetic>=high"], "--rule value must be a finite number, got 'aesthetic>=high'"),
    ("filter", ["--rule", "aesthetic top 150%"], "percentage must be in (0, 100]"),
    ("filter", ["--filters", "{o}/missing.toml"], "--filters must be an existing file"),
    ("filter", ["--filters", "{o}/bad.toml"], "--filters must be a TOML file"),
    ("score", ["--rule", "sharpness>=x"], "--rule value must be a finite number"),
    ("curate", ["--rule", "nsfw<=2 extra"], "--rule must be COLUMN>=VALUE"),
    ("curate", ["--filters", "{o}/unknown-key.toml"], "--filters keys must be known"),
    # mis-aimed commands: the input is checked for what it holds, the output for where it is
    ("filter", ["--input", "{o}/clips"], "--input must hold score columns"),
    ("filter", ["--input", "{o}/in"], "no Parquet parts"),
    ("filter", ["--output", "{o}/clips"], "--output must be a new folder or one jobs.filter wrote"),
    (
        "filter",
        ["--preset", "default", "--input", "{o}/smoke-scored"],
        "these scores come from the smoke preset",
    ),
    ("score", ["--output", "{o}/clips/scored"], "--output must not be inside another stage's folder"),
    ("score", ["--output", "{o}/captions"], "--output must be a new folder or one jobs.score wrote"),
    ("caption", ["--output", "{o}/scored/captions"], "must not be inside another stage's folder"),
    ("encode", ["--output", "{o}/captions/latents"], "must not be inside another stage's folder"),
    ("encode", ["--input", "{o}/clips"], "--input must hold captions"),
    ("split", ["--output", "{o}/clips"], "--output must be a run folder (OUT), not a stage's folder"),
    ("curate", ["--output", "{o}/scored"], "--output must be a run folder (OUT), not a stage's folder"),
    ("report", ["--output", "{o}/scored"], "--output must be a run folder (OUT), not a stage's folder"),
    ("report", ["--output", "{o}/in"], "no stage output in it"),
    ("split", ["--limit", "0"], "--limit must be >= 1, got 0"),
    ("curate", ["--limit", "0"], "--limit must be >= 1, got 0"),
    ("curate", ["--num-frames", "0"], "--num-frames must be >= 1, got 0"),
    ("curate", ["--min-seconds", "0"], "min_seconds must be > 0, got 0"),
    ("curate", ["--max-rows-per-shard", "2048"], "--max-rows-per-shard must be <= 256"),
    ("encode", ["--max-rows-per-shard", "2048"], "--max-rows-per-shard must be <= 256"),
    # nan passes every < / > check after it, and float() reads "inf" and "1e999": refused by the flag's type
    ("split", ["--max-seconds", "nan"], "--max-seconds must be a finite number, got 'nan'"),
    ("split", ["--cpus", "nan"], "--cpus must be a finite number, got 'nan'"),
    ("score", ["--gpus", "inf"], "--gpus must be a finite number, got 'inf'"),
    ("curate", ["--min-seconds", "1e999"], "--min-seconds must be a finite number, got '1e999'"),
    ("curate", ["--target-fps", "inf"], "--target-fps must be a finite number, got 'inf'"),
    ("train", ["--lr", "NaN"], "--lr must be a finite number, got 'NaN'"),
    ("sample", ["--strength", "nan"], "--strength must be a finite number"),
    ("caption", ["--cpus", "many"], "--cpus must be a number, got 'many'"),
    ("filter", ["--border-margin", "nan"], "--border-margin must be a number or inf, got 'nan'"),
    # an output inside the searched input folder: the next run would take its files for inputs
    ("split", ["--output", "{o}/in/out"], "--output must not be inside --input"),
    ("curate", ["--output", "{o}/in/runs/a"], "--output must not be inside --input"),
    ("split", ["--input", "{o}/*/*.mp4", "--output", "{o}/o"], "--output must not be inside --input"),
    # a scheme nothing reads is named as such, not as a bucket or credentials problem
    ("split", ["--input", "ftpx://bucket/raw"], "--input scheme must be one pyarrow or fsspec reads"),
    ("score", ["--output", "ftpx://bucket/scored"], "--output scheme must be one pyarrow or fsspec reads"),
]
if os.environ.get("CUDA_VISIBLE_DEVICES") != "" and not __import__("torch").cuda.is_available():
    BAD += [
        ("train", ["--device", "cuda"], "needs a CUDA GPU"),
        ("sample", ["--device", "cuda"], "needs a CUDA GPU"),
    ]


def _argv(job: str, extra: list[str], o: Path) -> list[str]:
    """GOOD[job] with each flag of `extra` replacing the same flag, else added."""
    args = list(GOOD[job])
    for i in range(0, len(extra), 2):
        flag, val = extra[i], (extra[i + 1] if i + 1 < len(extra) else None)
        if flag in args and val is not None:
            j = args.index(flag)
            args[j : j + 2] = [flag, val]
        else:
            args += [flag] if val is None else [flag, val]
    return [a.replace("{o}", str(o)) for a in args]


def run_in_process(job: str, argv: list[str], capsys) -> tuple[int, str]:
    module = importlib.import_module(f"jobs.{job}")
    try:
        rc = module.cli(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(("job", "extra", "needle"), BAD, ids=[f"{j}{' '.join(e)}" for j, e, _ in BAD])
def test_bad_argument_exits_2_with_one_line_before_ray(out, capsys, job, extra, needle):
    import ray

    rc, err = run_in_process(job, _argv(job, extra, out), capsys)
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert needle.replace("{o}", str(out)) in lines[0], lines[0]
    assert "; " in lines[0]  # rule, value; fix
    assert not ray.is_initialized()  # found before Ray started


@pytest.mark.parametrize("job", sorted(GOOD))
def test_help_shows_defaults_and_the_shared_flags(job, capsys):
    module = importlib.import_module(f"jobs.{job}")
    with pytest.raises(SystemExit) as e:
        module.cli(["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "--output" in text and "(default:" in text
    if job not in ("report", "sample"):
        assert "--address" in text and "--verbose" in text and "--input" in text
    if job in ("score", "caption", "encode", "curate", "train"):
        assert "(default: smoke)" in text  # one preset default for every job


def test_real_commands_exit_2_fast_without_traceback(out):
    """The issue's cases as typed: GPUs the machine lacks fail at once instead of hanging."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    cases = [
        ["jobs.score", "--input", str(out / "clips"), "--output", str(out / "s"), "--gpus", MANY],
        ["jobs.split", "--input", str(out / "in"), "--output", str(out / "o"), "--actors", "-2"],
        ["jobs.encode", "--input", str(out / "scored"), "--output", str(out / "latents")],
    ]
    for args in cases:
        t0 = time.monotonic()
        # important: the timeout is the hang guard; an over-ask used to wait forever in Ray
        r = subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, env=env, cwd=REPO
        )
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
        print(args[0], f"exit 2 in {time.monotonic() - t0:.1f} s")


def test_cluster_over_ask_fails_right_after_connecting():
    """With --address the check runs against ray.cluster_resources() before any plan is built."""
    import ray

    from curate.errors import UsageError
    from jobs.runtime.adapter import init_ray
    from jobs.runtime.flags import Need

    try:
        with pytest.raises(
            UsageError, match=r"asks for 4096 GPU\(s\) in all and the Ray cluster must have them"
        ):
            init_ray(num_cpus=1, need=Need(gpus=4096, what="test"))
    finally:
        ray.shutdown()


def test_relative_paths_resolve_against_the_cwd(out, tmp_path, monkeypatch):
    from jobs import caption, encode, score, split, train

    monkeypatch.chdir(out)
    a = split.config_from_args(split.build_parser().parse_args(["--input", "in", "--output", "o"]))
    assert a.input == str(out / "in") and a.output == str(out / "o")
    s = score.parse_args(["--input", "clips", "--output", "../x/scored"])
    assert s.input == str(out / "clips") and Path(s.output) == out.parent / "x" / "scored"
    c = caption.parse_args(["--input", "./scored", "--output", "captions"])
    assert c.input == str(out / "scored")
    e = encode.config_from_args(
        encode.build_parser().parse_args(["--input", "captions", "--output", "latents"])
    )
    assert e.input == str(out / "captions")
    monkeypatch.chdir(tmp_path)  # `jobs.train --workers 2 --input ../OUT/latents`: workers run elsewhere
    rel = os.path.relpath(out, tmp_path)
    args = train.build_parser().parse_args(
        [
            "--input",
            "synthetic:4",
            "--output",
            f"{rel}/dit",
            "--workers",
            "2",
            "--device",
            "cpu",
            "--batch-size",
            "2",
        ]
    )
    train.check_args(args)
    assert args.output == str(out / "dit") and Path(args.output).is_absolute()


@pytest.mark.slow
def test_split_stores_absolute_source_uri_and_score_runs_from_elsewhere(tmp_path):
    """split run from one directory with relative paths; its clips read fine from another."""
    a = tmp_path / "a"
    two_shot_video(a / "in" / "x.mp4")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run(
        [sys.executable, "-m", "jobs.split", "--input", "in", "--output", "../OUT"],
        cwd=a,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    import pyarrow.parquet as pq

    clips = pq.read_table(tmp_path / "OUT" / "clips").to_pylist()
    assert clips and all(Path(c[S.SOURCE_URI]).is_absolute() for c in clips)
    assert {c[S.SOURCE_URI] for c in clips} == {str(a / "in" / "x.mp4")}
    summary = json.loads((tmp_path / "OUT" / "summary" / "split.json").read_text())
    assert summary["videos_ok"] == 1
    # quiet by default: the job's lines, not Ray's per-operator logs
    assert len(r.stdout.splitlines()) <= 10, r.stdout


def test_errors_by_reason_groups_without_file_names():
    from collections import Counter

    from curate.errors import error_key

    reasons = [
        "InvalidDataError: [Errno 1094995529] Invalid data found when processing input: '/data/a.mp4'",
        "InvalidDataError: [Errno 1094995529] Invalid data found when processing input: '/other/b c.mkv'",
        "no decodable video frame (h264): clip.mov is truncated",
        "no decodable video frame (h264): s3://bucket/x.mp4 is truncated",
        "sharpness >= 100: sharpness=43.2",
    ]
    groups = Counter(map(error_key, reasons))
    assert len(groups) == 3 and set(groups.values()) == {2, 1}
    assert "sharpness >= 100: sharpness=43.2" in groups  # numbers are not file names


def test_filter_border_margin_reaches_the_decisions(out):
    from jobs import filter as job_filter

    base = [a.replace("{o}", str(out)) for a in GOOD["filter"]]
    assert (
        job_filter.parse_args([*base, "--border-margin", "0"]).near.border_margin is None
    )  # 0: no border pass
    assert job_filter.parse_args([*base, "--border-margin", "inf"]).near.border_margin == float("inf")
    assert job_filter.parse_args([*base, "--cluster-rows", "500"]).near.cluster_rows == 500
