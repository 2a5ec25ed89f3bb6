"""The stage-by-stage jobs on object storage, against the moto S3 server (tests/s3server.py):
split -> score -> caption -> encode from s3://bucket/raw to s3://bucket/out give the same clips
and shard rows as the same chain on local disk; train 2 steps on the S3 shards and sample
from the S3 run to an S3 mp4. Plus the stage-folder / output-file checks on S3 URIs."""

from __future__ import annotations

import os
from pathlib import Path

import av
import pandas as pd
import pytest

from curate import schema as S
from curate.errors import UsageError
from curate.io import storage
from curate.synthetic.synth import Segment, make_video
from jobs.runtime import flags
from tests.media import two_shot_video

BUCKET = "tubelet-stages"


def _parts_table(uri: str):
    return storage.read_parts(uri, S.CLIP_SCHEMA)


# --- fast: the argument checks on S3 ------------------------------------------------------


def test_check_stage_folder_and_output_file_on_s3(s3, capsys):
    s3.make_bucket(BUCKET)
    clips = f"s3://{BUCKET}/chk/clips"
    storage.write_parquet_atomic(S.CLIP_SCHEMA.empty_table(), storage.join(clips, "part-00000.parquet"))
    flags.check_stage_folder("--input", clips, "clips", "jobs.split")  # parts there: accepted
    with pytest.raises(UsageError, match="no Parquet parts"):
        flags.check_stage_folder("--input", f"s3://{BUCKET}/chk/empty", "clips", "jobs.split")
    storage.write_parquet_atomic(S.CLIP_SCHEMA.empty_table(), f"s3://{BUCKET}/chk/scored/part-00000.parquet")
    with pytest.raises(UsageError, match=f"pass s3://{BUCKET}/chk/clips"):  # the wrong stage's folder
        flags.check_stage_folder("--input", f"s3://{BUCKET}/chk/scored", "clips", "jobs.split")
    with pytest.raises(UsageError, match="no Parquet parts"):
        flags.check_stage_folder("--input", "s3://no-such-bucket-x/clips", "clips", "jobs.split")

    flags.check_writable_file("--output", f"s3://{BUCKET}/samples/x.mp4")  # probe written and removed
    assert not storage.list_files(f"s3://{BUCKET}/samples", hidden=True)
    with pytest.raises(UsageError, match="writable bucket"):
        flags.check_writable_file("--output", "s3://no-such-bucket-x/x.mp4")

    # the jobs themselves: exit 2 with one line, before Ray starts
    from jobs import caption, encode, sample, score

    for cli, argv in (
        (score.cli, ["--input", "s3://no-such-bucket-x/out/clips", "--output", f"s3://{BUCKET}/o/scored"]),
        (caption.cli, ["--input", f"s3://{BUCKET}/chk/empty", "--output", f"s3://{BUCKET}/o/captions"]),
        (encode.cli, ["--input", clips, "--output", "s3://no-such-bucket-x/latents"]),
        (sample.cli, ["--input", f"s3://{BUCKET}/no-run", "--prompt", "x", "--output", "/tmp/x.mp4"]),
    ):
        capsys.readouterr()
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err

    os.environ["AWS_SECRET_ACCESS_KEY"] = "wrong"  # restored by the fixture's monkeypatch
    try:
        with pytest.raises(UsageError, match="must be a readable folder") as e:
            flags.check_stage_folder("--input", clips, "clips", "jobs.split")
        assert "\n" not in str(e.value) and "wrong" not in str(e.value)
        with pytest.raises(UsageError, match="writable bucket"):
            flags.check_writable_file("--output", f"s3://{BUCKET}/samples/x.mp4")
    finally:
        os.environ["AWS_SECRET_ACCESS_KEY"] = s3.env["AWS_SECRET_ACCESS_KEY"]


# --- slow: the whole chain ----------------------------------------------------------------


def _chain(raw: str, out: str) -> None:
    """split -> score -> caption -> encode with the smoke preset, in this process (one Ray instance)."""
    from jobs import caption, encode, score, split

    smoke = ["--preset", "smoke"]  # split has no models, no preset
    steps = [
        (split.cli, ["--input", raw, "--output", out]),
        (score.cli, ["--input", storage.join(out, "clips"), "--output", storage.join(out, "scored"), *smoke]),
        (
            caption.cli,
            ["--input", storage.join(out, "scored"), "--output", storage.join(out, "captions"), *smoke],
        ),
        (
            encode.cli,
            ["--input", storage.join(out, "captions"), "--output", storage.join(out, "latents"), *smoke],
        ),
    ]
    for fn, argv in steps:
        assert fn(argv) == 0, argv


def _shard_rows(latents: str) -> pd.DataFrame:
    df = pd.read_parquet(latents, storage_options=storage.storage_options(latents))
    return df.sort_values(S.CLIP_ID).reset_index(drop=True)


@pytest.mark.ray
@pytest.mark.slow
def test_stage_jobs_s3_round_trip_equals_local(s3, tmp_path, monkeypatch):
    import ray

    if ray.is_initialized():
        ray.shutdown()  # the workers of a fresh instance inherit this process's AWS_* variables
    raw = tmp_path / "raw"
    raw.mkdir()
    two_shot_video(raw / "a.mp4", seconds=2.0, size=(128, 72))
    make_video(raw / "b.mp4", [Segment("shot", 60, 7)], fps=24, width=128, height=72)
    s3.make_bucket(f"{BUCKET}-e2e")
    s3.upload_dir(raw, f"s3://{BUCKET}-e2e/raw", "*.mp4")
    cwd = tmp_path / "cwd"  # nothing of an S3 run may land in the working directory ("s3:/..." folders)
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    try:
        local, remote = str(tmp_path / "out"), f"s3://{BUCKET}-e2e/out"
        _chain(str(raw), local)
        _chain(f"s3://{BUCKET}-e2e/raw", remote)
        assert os.listdir(cwd) == []

        for stage in ("clips", "scored", "captions"):
            a, b = _parts_table(storage.join(local, stage)), _parts_table(storage.join(remote, stage))
            assert sorted(a.column(S.CLIP_ID).to_pylist()) == sorted(b.column(S.CLIP_ID).to_pylist()), stage
            assert a.num_rows == b.num_rows > 0, stage
        scored = {o: _parts_table(storage.join(o, "scored")).sort_by(S.CLIP_ID) for o in (local, remote)}
        assert scored[local].column(S.KEPT).to_pylist() == scored[remote].column(S.KEPT).to_pylist()
        assert storage.exists(storage.join(remote, "scored", "_funnel.json"))
        # markers in the bucket, every stage's under OUT/_done
        for stage in ("score", "caption", "encode"):
            assert storage.list_files(storage.join(remote, "_done", stage)), stage
        sa, sb = _shard_rows(storage.join(local, "latents")), _shard_rows(storage.join(remote, "latents"))
        assert len(sa) == len(sb) > 0
        for col in (S.CLIP_ID, S.START_FRAME, S.END_FRAME, S.LATENT_DTYPE):
            assert sa[col].tolist() == sb[col].tolist(), col
        assert [storage.basename(u) for u in sa[S.SOURCE_URI]] == [
            storage.basename(u) for u in sb[S.SOURCE_URI]
        ]
        assert all(u.startswith(f"s3://{BUCKET}-e2e/raw/") for u in sb[S.SOURCE_URI])
        assert [list(x) for x in sa[S.LATENT_SHAPE]] == [list(x) for x in sb[S.LATENT_SHAPE]]
        summary = storage.read_json(storage.join(remote, "summary", "encode.json"))
        assert summary["shard_rows"] == len(sb) and summary["manifest"].startswith("s3://")

        # a rerun on S3 resumes: every stage finds its markers, nothing is redone
        from jobs import encode

        again = encode.main(
            encode.config_from_args(
                encode.build_parser().parse_args(
                    ["--input", storage.join(remote, "captions"), "--output", storage.join(remote, "latents")]
                )
            )
        )
        assert again["encoded_this_run"] == 0 and again["shard_rows"] == len(sb)

        # train 2 steps on the S3 shards into an S3 run, then sample from it to an S3 mp4
        from jobs import sample, train

        run = f"s3://{BUCKET}-e2e/runs/two"
        assert (
            train.cli(
                [
                    "--input",
                    storage.join(remote, "latents"),
                    "--output",
                    run,
                    "--steps",
                    "2",
                    "--ckpt-every",
                    "2",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        assert storage.exists(storage.join(run, "checkpoints", "step-0000002", "state.json"))
        mp4 = f"s3://{BUCKET}-e2e/samples/cat.mp4"
        assert (
            sample.cli(
                ["--input", run, "--prompt", "a cat", "--output", mp4, "--steps", "2", "--device", "cpu"]
            )
            == 0
        )
        with storage.local_copy(mp4) as tmp, av.open(tmp) as c:
            assert sum(1 for _ in c.decode(video=0)) > 0
        assert os.listdir(cwd) == []
    finally:
        ray.shutdown()  # later modules start their own instance, without this module's S3 variables
        assert not Path(cwd, "s3:").exists()
