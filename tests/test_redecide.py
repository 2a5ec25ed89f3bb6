"""Decisions propagate: after a re-decision, caption and encode hold exactly the new kept set.

decide (jobs.filter --rule), caption, encode; re-decide so that some kept clips drop out and
others come in; caption, encode: the caption parts, the shards, the manifest and LatentDataset
hold exactly the new kept clips. Then 0 kept: an empty, valid manifest and a clear message.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.io.storage import read_parts, write_parquet_atomic
from latents.shards import read_manifest
from tests.caption_helpers import make_clips

pytestmark = [pytest.mark.ray, pytest.mark.slow]

N = 6  # clips; clip i has motion i, so a motion rule picks the kept set


def _scored(tmp):
    spans = [(i * 16, i * 16 + 15) for i in range(N)]  # 15 frames: the smoke encode needs 5 at 8 fps
    _, rows = make_clips(tmp / "media", spans)
    for i, r in enumerate(rows):
        r[S.MOTION] = float(i)
    t = S.table_from_rows(rows)
    write_parquet_atomic(t.slice(0, N // 2), tmp / "scored" / "part-0.parquet")
    write_parquet_atomic(t.slice(N // 2), tmp / "scored" / "part-1.parquet")
    # only the --rule below decides: no preset rule, no dedup (the rows carry no other scores)
    (tmp / "rules.toml").write_text(
        "replace = true\nrules = []\nnear_dup_cosine = false\nexact_dedup = false\n"
    )
    return [r[S.CLIP_ID] for r in rows]


def _round(tmp, rule, capsys):
    from jobs import caption, encode
    from jobs import filter as filter_job

    assert (
        filter_job.cli(
            [
                "--input",
                str(tmp / "scored"),
                "--output",
                str(tmp / "filtered"),
                "--preset",
                "smoke",
                "--filters",
                str(tmp / "rules.toml"),
                "--rule",
                rule,
                "--address",
                "local",
            ]
        )
        == 0
    )
    assert (
        caption.cli(
            [
                "--input",
                str(tmp / "filtered"),
                "--output",
                str(tmp / "captions"),
                "--preset",
                "smoke",
                "--batch-size",
                "2",
                "--address",
                "local",
            ]
        )
        == 0
    )
    assert (
        encode.cli(
            [
                "--input",
                str(tmp / "captions"),
                "--output",
                str(tmp / "latents"),
                "--preset",
                "smoke",
                "--batch-size",
                "2",
                "--max-rows-per-shard",
                "2",
                "--address",
                "local",
            ]
        )
        == 0
    )
    return capsys.readouterr().out


def _held(tmp):
    from latents.dataset import LatentDataset

    captions = sorted(read_parts(tmp / "captions", S.CLIP_SCHEMA).column(S.CLIP_ID).to_pylist())
    shards = sorted(
        c
        for f in (tmp / "latents").glob("shard-*.parquet")
        for c in pq.read_table(f, columns=[S.CLIP_ID]).column(S.CLIP_ID).to_pylist()
    )
    manifest = read_manifest(tmp / "latents")
    dataset = sorted(s[S.CLIP_ID] for s in LatentDataset(tmp / "latents", shuffle=False))
    return captions, shards, manifest["counts"]["rows"], dataset


def test_a_redecision_reaches_captions_shards_manifest_and_dataset(tmp_path, local_ray, capsys):
    ids = _scored(tmp_path)
    _round(tmp_path, "motion>=3", capsys)  # kept: clips 3, 4, 5
    first = sorted(ids[3:])
    captions, shards, rows, dataset = _held(tmp_path)
    assert captions == shards == dataset == first and rows == 3

    # fewer and more at once: 4 and 5 drop out, 0, 1 and 2 come in, 3 stays
    _round(tmp_path, "motion<=3", capsys)
    second = sorted(ids[:4])
    captions, shards, rows, dataset = _held(tmp_path)
    assert captions == shards == dataset == second and rows == 4

    # 0 kept: no captions, an empty valid manifest, and the reason on the terminal
    out = _round(tmp_path, "motion>=99", capsys)
    captions, shards, rows, dataset = _held(tmp_path)
    assert captions == shards == [] and rows == 0
    assert "no clip is kept" in out and "manifest lists 0 rows" in out
    assert not list((tmp_path / "latents").glob("shard-*.parquet"))
