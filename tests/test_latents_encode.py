"""latents: the encode stage (decode once, error rows, pass-through) and the jobs.encode Ray plan."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from curate import schema as S
from curate.io.storage import write_parquet_atomic
from curate.video.decode import DECODE_STATS
from latents.buckets import Bucket, nearest_bucket
from latents.encode import PIXELS, ROUNDTRIP_PSNR, SMOKE, SMOKE_LTX, EncodeStage, prepare_batch, psnr
from latents.shards import MANIFEST_NAME, bytes_to_tensor, read_manifest, verify_shards
from tests.latents_helpers import captioned_rows

torch.set_num_threads(1)


def test_stage_decodes_each_clip_once_and_records_failures(tmp_path):
    table = captioned_rows(tmp_path, sizes=((160, 90), (90, 160)), clips_per_video=1)
    rows = table.to_pylist()
    rows[1][S.SOURCE_URI] = str(tmp_path / "missing.mp4")
    table = S.table_from_rows(rows)
    before = DECODE_STATS["opens"]
    prepared = prepare_batch(table, SMOKE_LTX)
    assert DECODE_STATS["opens"] - before == 2  # two eligible clips, one decode each; the dropped one none
    assert prepared.column(PIXELS).null_count == 2  # the failed and the dropped clip
    out = EncodeStage(SMOKE_LTX)(prepared)
    got = {r[S.CLIP_ID]: r for r in out.to_pylist()}
    ok, bad, dropped = got[rows[0][S.CLIP_ID]], got[rows[1][S.CLIP_ID]], got["dropped"]
    assert ok[S.STATUS] == S.STATUS_OK and ok[S.LATENT_SHAPE] == [8, 2, 3, 5] and ok[S.PIXEL_FRAMES] == 9
    assert ok[S.VAE_ID].startswith("smoke") and ok[S.TEXT_EMBEDDING_SHAPE][1] == 32
    assert bad[S.STATUS] == S.STATUS_ERROR and bad[S.FAILED_STAGE] == "encode" and bad[S.ERROR]
    assert dropped[S.STATUS] == S.STATUS_OK and dropped[S.LATENT] is None  # passes through untouched
    S.validate(out.select(S.CLIP_SCHEMA.names), upto="encode")
    with pytest.raises(Exception, match=r"missing\.mp4|No such file|Errno"):
        prepare_batch(table, replace(SMOKE_LTX, on_error="raise"))


def test_stage_without_prepared_pixels_prepares_itself(tmp_path):
    table = captioned_rows(tmp_path, sizes=((96, 96),), clips_per_video=2)
    out = EncodeStage(replace(SMOKE_LTX, psnr_every=1))(table)
    assert out.column(S.LATENT).null_count == 1  # only the dropped clip
    assert PIXELS not in out.column_names
    values = [v for v in out.column(ROUNDTRIP_PSNR).to_pylist() if v is not None]
    assert len(values) == 2 and all(0 < v < 99 for v in values)


def test_psnr():
    x = torch.zeros(3, 2, 4, 4)
    assert psnr(x, x) == 99.0
    assert abs(psnr(x + 0.2, x) - 20.0) < 1e-4  # 0.2 on [-1, 1] = 0.1 on [0, 1] -> mse 0.01 -> 20 dB


def test_bad_arguments_exit_2_with_the_rule(tmp_path, capsys):
    from jobs.encode import cli

    assert cli(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out")]) == 2
    assert "no Parquet parts" in capsys.readouterr().err
    write_parquet_atomic(
        captioned_rows(tmp_path, sizes=((96, 96),), clips_per_video=1), tmp_path / "caps" / "p.parquet"
    )
    assert cli(["--input", str(tmp_path / "caps"), "--output", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err


def _shard_rows(out: Path) -> dict[str, torch.Tensor]:
    """clip_id -> latent of every shard row (as a reader sees them); a clip in two rows fails."""
    import pandas as pd

    df = pd.read_parquet(out)  # skips _index/ and _done/, as every folder reader does
    assert df[S.CLIP_ID].is_unique, df[S.CLIP_ID].tolist()
    return {
        c: bytes_to_tensor(b, list(shape), dt)
        for c, b, shape, dt in zip(df[S.CLIP_ID], df[S.LATENT], df[S.LATENT_SHAPE], df[S.LATENT_DTYPE])
    }


def _assert_same_rows(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for cid, lat in want.items():
        torch.testing.assert_close(got[cid].float(), lat.float(), atol=2e-3, rtol=2e-3)


def _captions(tmp_path: Path) -> pa.Table:
    table = captioned_rows(tmp_path)
    write_parquet_atomic(table.slice(0, 4), tmp_path / "captions" / "part-a.parquet")
    write_parquet_atomic(table.slice(4), tmp_path / "captions" / "part-b.parquet")
    return table


@pytest.mark.ray
def test_encode_job_writes_shards_and_resumes(tmp_path, capsys, monkeypatch):
    import datasets
    import pandas as pd
    import ray

    from jobs import encode
    from jobs.encode import cli

    _captions(tmp_path)
    out = tmp_path / "latents"
    # "local": a fresh local instance, never a `ray start` cluster another process left on this machine
    address = [] if ray.is_initialized() else ["--address", "local"]
    # writer batches of 2 clips: 3 batches, each its own shard, index part and marker
    args = [
        "--input",
        str(tmp_path / "captions"),
        "--output",
        str(out),
        "--batch-size",
        "2",
        "--preset",
        "smoke",
        "--max-rows-per-shard",
        "2",
        *address,
    ]
    assert cli(args) == 0
    first = capsys.readouterr().out
    assert "6 encoded now" in first and "SMOKE" in first
    m = verify_shards(out, checksum=True)
    assert m["counts"]["rows"] == 6 and m["counts"]["eligible"] == 6 and m["counts"]["errors"] == 0
    markers = sorted((out.parent / "_done" / "encode").iterdir())
    assert len(markers) == len(list((out / "_index").iterdir())) == m["counts"]["shards"] == 3
    rows = _shard_rows(out)
    # a rerun with the same config encodes nothing, loads no model and leaves the shards as they are
    with monkeypatch.context() as mp:
        mp.setattr(
            encode.models_info,
            "vae_and_text_info",
            lambda enc: pytest.fail("a rerun with nothing new loaded a model"),
        )
        assert cli(args) == 0
    assert "0 encoded now, 6 already done" in capsys.readouterr().out
    assert read_manifest(out) == m

    # a writer killed before its marker leaves its shard and index part: the next run redoes
    # exactly that batch; an orphan shard and index part of a batch that never finished go
    lost = json.loads(markers[0].read_text())
    markers[0].unlink()
    orphan = out / "shard-0123456789abcdef0123-00000.parquet"
    orphan.write_bytes((out / m["shards"][0]["file"]).read_bytes())
    stale_index = out / "_index" / "part-0123456789abcdef0123.parquet"
    stale_index.write_bytes(next((out / "_index").iterdir()).read_bytes())
    assert cli(args) == 0
    assert "2 encoded now, 4 already done" in capsys.readouterr().out
    assert (
        json.loads(markers[0].read_text())["shards"][0]["file"] == lost["shards"][0]["file"]
    )  # the same batch
    assert not orphan.exists() and not stale_index.exists()
    m2 = verify_shards(out, checksum=True)
    assert m2["counts"]["rows"] == 6 and sorted(s["file"] for s in m2["shards"]) == sorted(
        s["file"] for s in m["shards"]
    )
    _assert_same_rows(_shard_rows(out), rows)  # every clip once, the same latents

    # the three readers agree
    df = pd.read_parquet(out)
    rds = ray.data.read_parquet(str(out)).to_pandas()
    files = sorted(str(p) for p in Path(out).glob("shard-*.parquet"))
    hf = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "_hf"))
    assert sorted(df[S.CLIP_ID]) == sorted(rds[S.CLIP_ID]) == sorted(hf[S.CLIP_ID])
    cid = df[S.CLIP_ID].iloc[0]
    lat = df.set_index(S.CLIP_ID).loc[cid, S.LATENT]
    assert rds.set_index(S.CLIP_ID).loc[cid, S.LATENT] == lat == hf[hf[S.CLIP_ID].index(cid)][S.LATENT]
    assert json.loads((out / MANIFEST_NAME).read_text())["vae"]["frame_rule"] == "4k+1"
    assert json.loads((tmp_path / "summary" / "encode.json").read_text())["shard_rows"] == 6


@pytest.mark.ray
def test_encode_job_driver_holds_no_rows_and_a_new_config_reencodes(tmp_path, monkeypatch):
    """Workers read the captions and write the shards: with every row reader broken on the
    driver the job still runs, and its shards hold what the encode stage makes of the eligible
    clips (the rows the driver used to rewrite itself)."""
    import pyarrow.parquet as pq
    import ray

    from curate.io import storage
    from jobs import encode

    table = _captions(tmp_path)
    out = tmp_path / "latents"
    cfg = encode.EncodeJobConfig(
        input=str(tmp_path / "captions"),
        output=str(out),
        encode=SMOKE,
        batch_size=2,
        max_rows_per_shard=4,
        address=None if ray.is_initialized() else "local",
    )

    def driver_read(*a, **k):
        raise AssertionError("the driver read rows")

    with monkeypatch.context() as mp:
        for owner, name in (
            (storage, "read_parts"),
            (storage, "read_table"),
            (encode, "read_parts"),
            (pq, "read_table"),
        ):
            mp.setattr(owner, name, driver_read, raising=False)
        summary = encode.main(cfg)
    assert summary["encoded_this_run"] == summary["shard_rows"] == summary["eligible"] == 6
    assert summary["input_rows"] == 7 and summary["errors"] == 0 and summary["errors_by_reason"] == {}

    # the same rows as the encode stage run in one process on the eligible clips
    want = EncodeStage(SMOKE)(prepare_batch(table, SMOKE))
    want = want.filter(pa.array([v is not None for v in want.column(S.LATENT).to_pylist()]))
    _assert_same_rows(
        _shard_rows(out),
        {
            r[S.CLIP_ID]: bytes_to_tensor(r[S.LATENT], r[S.LATENT_SHAPE], r[S.LATENT_DTYPE])
            for r in want.to_pylist()
        },
    )

    # another encode config re-encodes every clip into new files; the old ones go with their markers
    old = {p.name for p in out.glob("shard-*.parquet")} | {p.name for p in (out / "_index").iterdir()}
    # (a changed frame policy; a resource such as the device or psnr_every re-encodes nothing:
    # test_resume_rule.py)
    again = encode.main(replace(cfg, encode=replace(SMOKE, max_frames=5)))
    assert again["encoded_this_run"] == 6 and again["skipped_already_done"] == 0 and again["shard_rows"] == 6
    assert again["config_hash"] != summary["config_hash"]
    now = {p.name for p in out.glob("shard-*.parquet")} | {p.name for p in (out / "_index").iterdir()}
    assert not now & old and len(list((out.parent / "_done" / "encode").iterdir())) == len(
        list((out / "_index").iterdir())
    )
    assert read_manifest(out)["encode"]["config_hash"] == again["config_hash"]
    assert sorted(_shard_rows(out)) == sorted(want.column(S.CLIP_ID).to_pylist())


@pytest.mark.parametrize(
    ("name", "portrait"), [("issue-134-rotate.mp4", True), ("issue-195-aspect-ratio.mp4", False)]
)
def test_real_rotated_and_anamorphic_videos_keep_their_display_aspect(real_videos, tmp_path, name, portrait):
    from curate.video.probe import probe

    info = probe(real_videos / name)
    w, h = info[S.WIDTH], info[S.HEIGHT]  # display size: rotation and SAR applied
    row = {
        S.CLIP_ID: "real",
        S.VIDEO_ID: "v",
        S.SOURCE_URI: str(real_videos / name),
        S.START_FRAME: 0,
        S.END_FRAME: 48,
        S.START_PTS: 0.0,
        S.END_PTS: 2.0,
        S.FPS: 24.0,
        S.WIDTH: w,
        S.HEIGHT: h,
        S.KEPT: True,
        S.CAPTION: "a real clip",
        S.STATUS: S.STATUS_OK,
    }
    out = EncodeStage(SMOKE_LTX)(S.table_from_rows([row])).to_pylist()[0]
    assert out[S.STATUS] == S.STATUS_OK, out[S.ERROR]
    ph, pw = out[S.PIXEL_HEIGHT], out[S.PIXEL_WIDTH]
    assert (ph > pw) == portrait and (h > w) == portrait
    assert Bucket(pw, ph) == nearest_bucket(w, h, SMOKE_LTX.buckets)
    _, _, lh, lw = out[S.LATENT_SHAPE]
    assert (lh, lw) == (ph // 32, pw // 32)
