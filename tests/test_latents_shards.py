"""latents: shard writer + manifest, the checking reader, and the torch dataset over shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curate import schema as S
from latents.dataset import LatentDataset
from latents.encode import ROUNDTRIP_PSNR, SMOKE, EncodeStage, eligible_mask, manifest_meta, prepare_batch
from latents.shards import (
    DTYPES,
    MANIFEST_NAME,
    ShardError,
    ShardWriter,
    bytes_to_tensor,
    read_manifest,
    verify_shards,
)
from tests.latents_helpers import captioned_rows

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> tuple[pa.Table, dict]:
    """6 clips (landscape, square, portrait) through the smoke encode stage, and the manifest meta."""
    d = tmp_path_factory.mktemp("enc")
    stage = EncodeStage(SMOKE)
    out = stage(prepare_batch(captioned_rows(d), SMOKE))
    S.validate(out.select(S.CLIP_SCHEMA.names), upto="encode")
    ok = out.filter(pa.array(eligible_mask(out)))
    assert ok.num_rows == 6, out.column(S.ERROR).to_pylist()
    meta = manifest_meta(SMOKE, stage.vae.info.to_dict(), stage.text.info.to_dict())
    return ok, meta


def _replicate(table: pa.Table, times: int) -> pa.Table:
    """More rows without more encoding: copies with new clip ids."""
    parts = []
    for k in range(times):
        ids = [f"{c}-r{k}" for c in table.column(S.CLIP_ID).to_pylist()]
        parts.append(S.set_columns(table, {S.CLIP_ID: ids}))
    return pa.concat_tables(parts)


def _write(root: Path, table: pa.Table, meta: dict, **kw) -> dict:
    with ShardWriter(root, meta, metric_columns=(ROUNDTRIP_PSNR,), **kw) as w:
        w.write(table)
    return read_manifest(root)


def test_shards_roll_over_and_keep_one_shape_per_row_group(tmp_path, encoded):
    table, meta = encoded
    m = _write(tmp_path / "a", _replicate(table, 3), meta, max_rows=5, row_group_rows=2)
    assert m["counts"]["rows"] == 18 and all(s["rows"] <= 5 for s in m["shards"]) and len(m["shards"]) >= 4
    for s in m["shards"]:
        pf = pq.ParquetFile(tmp_path / "a" / s["file"])
        assert pf.schema_arrow.remove_metadata().equals(S.CLIP_SCHEMA.remove_metadata())
        for g in range(pf.num_row_groups):
            shapes = {tuple(x) for x in pf.read_row_group(g, columns=[S.LATENT_SHAPE]).column(0).to_pylist()}
            assert len(shapes) == 1
    # by bytes: every row group of ~2 clips crosses a 1-byte limit, so each shard holds one
    m = _write(tmp_path / "b", table, meta, max_bytes=1, row_group_rows=2)
    assert [s["rows"] for s in m["shards"]] == [2, 2, 2]


def test_manifest_records_how_to_read_the_latents(tmp_path, encoded):
    table, meta = encoded
    m = _write(tmp_path, table, meta)
    assert m["schema_version"] == S.SCHEMA_VERSION
    vae = m["vae"]
    assert vae["frame_rule"] == "4k+1" and vae["spatial_compression"] == 8 and len(vae["latents_std"]) == 4
    assert vae["vae_id"].startswith("smoke") and m["smoke"] is True
    assert m["text_encoder"]["max_length"] == SMOKE.text.max_length
    assert len(m["buckets"]) == 3 and sum(m["counts"]["by_latent_shape"].values()) == 6
    psnr = [
        v for s in m["shards"] for v in s["metrics"].get(ROUNDTRIP_PSNR.lstrip("_"), {}).get("values", [])
    ]
    assert psnr and all(np.isfinite(psnr))
    verify_shards(tmp_path, checksum=True)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def _flip_inside(shard: Path, value: bytes) -> None:
    data = bytearray(shard.read_bytes())
    at = data.find(value[:64]) + 32  # inside the stored value
    assert at > 32
    data[at] ^= 0x01
    shard.write_bytes(bytes(data))


def test_flipped_byte_fails_the_checksum_and_never_reads_as_zeros(tmp_path, encoded):
    table, meta = encoded
    m = _write(tmp_path, table, meta)
    assert all(g["digests"][S.LATENT].startswith("xxh3_64:") for s in m["shards"] for g in s["row_groups"])
    clean = {s["clip_id"]: s["latent"] for s in LatentDataset(tmp_path)}
    _flip_inside(tmp_path / m["shards"][0]["file"], table.column(S.LATENT)[0].as_py())
    with pytest.raises(ShardError, match="sha256"):
        verify_shards(tmp_path, checksum=True)
    with pytest.raises(ShardError, match="sha256"):
        LatentDataset(tmp_path, verify="checksum")
    # without the up-front file checksum, the row group's digest stops the read
    ds = LatentDataset(tmp_path, verify="size", shuffle=False)
    with pytest.raises(ShardError, match=r"latent failed its checksum.*corrupt"):
        list(ds)
    # with no checks at all the flipped value comes through: the checks above are what catch it
    read = {s["clip_id"]: s["latent"] for s in LatentDataset(tmp_path, verify="none")}
    assert sum(not torch.equal(read[k], clean[k]) for k in clean) == 1


@pytest.mark.parametrize("column", [S.LATENT, S.TEXT_EMBEDDING])
@pytest.mark.parametrize("digests", [True, False])
def test_a_flipped_byte_in_either_big_column_raises(tmp_path, encoded, column, digests):
    """With the manifest's row-group digests, or without them (manifests written before
    digests existed): then Parquet page CRCs catch it."""
    table, meta = encoded
    m = _write(tmp_path, table, meta)
    if not digests:
        for s in m["shards"]:
            for g in s["row_groups"]:
                del g["digests"]
        (tmp_path / MANIFEST_NAME).write_text(json.dumps(m))
    _flip_inside(tmp_path / m["shards"][0]["file"], table.column(column)[0].as_py())
    with pytest.raises(ShardError, match=f"{column} failed its checksum" if digests else "corrupt"):
        list(LatentDataset(tmp_path, verify="size"))


def test_truncated_shard_and_missing_manifest_are_clear_errors(tmp_path, encoded):
    table, meta = encoded
    m = _write(tmp_path, table, meta)
    shard = tmp_path / m["shards"][-1]["file"]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ShardError, match="truncated"):
        LatentDataset(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(ShardError, match=r"no \.manifest\.json"):
        LatentDataset(tmp_path)


def test_rewrite_replaces_old_shards_only_after_the_new_manifest(tmp_path, encoded):
    table, meta = encoded
    first = _write(tmp_path, table, meta, run_id="one")
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, meta, run_id="two") as w:
        w.write(table)
        raise RuntimeError("killed mid-run")
    assert read_manifest(tmp_path) == first  # the old set is intact
    verify_shards(tmp_path)
    second = _write(tmp_path, table.slice(0, 2), meta, run_id="three")
    files = sorted(p.name for p in tmp_path.glob("shard-*.parquet"))
    assert files == sorted(s["file"] for s in second["shards"])


def test_samples_follow_the_contract(tmp_path, encoded):
    table, meta = encoded
    _write(tmp_path, table, meta)
    by_id = {r[S.CLIP_ID]: r for r in table.to_pylist()}
    longest: dict[str, int] = {}  # per latent shape = per row group here
    for r in by_id.values():
        key = str(r[S.LATENT_SHAPE])
        longest[key] = max(longest.get(key, 0), r[S.TEXT_EMBEDDING_SHAPE][0])
    assert max(longest.values()) < meta["text_encoder"]["max_length"]  # so the two paddings differ
    for kw in ({}, {"latent_dtype": "float32", "pad_text": "max_length"}):
        samples = list(LatentDataset(tmp_path, shuffle=False, **kw))
        assert len(samples) == 6
        for s in samples:
            row = by_id[s["clip_id"]]
            assert s["caption"] == row[S.CAPTION]
            stored = bytes_to_tensor(row[S.LATENT], row[S.LATENT_SHAPE], row[S.LATENT_DTYPE])
            want = stored.float() if kw else stored  # default: the stored dtype, as written
            assert s["latent"].dtype == want.dtype and torch.equal(s["latent"], want)
            # default: padded to the longest caption of the row group
            L = meta["text_encoder"]["max_length"] if kw else longest[str(row[S.LATENT_SHAPE])]
            assert s["text_embedding"].shape == (L, meta["text_encoder"]["dim"]) and s["text_mask"].shape == (
                L,
            )
            assert s["text_embedding"].dtype == (torch.float32 if kw else DTYPES[row[S.TEXT_EMBEDDING_DTYPE]])
            n = row[S.TEXT_EMBEDDING_SHAPE][0]
            assert s["text_mask"].sum() == n and s["text_embedding"][n:].abs().sum() == 0


def _ids(ds_or_loader) -> list[str]:
    out = []
    for item in ds_or_loader:
        ids = item["clip_id"]
        out.extend(ids if isinstance(ids, list) else [ids])
    return out


@pytest.fixture(scope="module")
def many(tmp_path_factory, encoded) -> Path:
    table, meta = encoded
    root = tmp_path_factory.mktemp("many")
    _write(root, _replicate(table, 10), meta, max_rows=16, row_group_rows=4)  # 60 rows, 3 shapes
    return root


def test_rank_and_worker_split_covers_every_row_once(many):
    all_ids = _ids(LatentDataset(many, shuffle=False))
    assert len(all_ids) == 60 == len(set(all_ids))
    seen: list[str] = []
    for rank in range(2):
        ds = LatentDataset(many, batch_size=3, seed=7, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        ids = _ids(loader)
        assert 27 <= len(ids) <= 33  # balanced (+- a row per reader)
        seen.extend(ids)
    assert sorted(seen) == sorted(all_ids)
    # odd reader counts too (plan only, no reading)
    ds = LatentDataset(many, batch_size=None, seed=1)
    rows = [r for k in range(7) for it in ds.plan(0, k, 7) for r in it]
    assert len(rows) == 60 == len(set(rows))


def test_batches_are_bucket_homogeneous(many):
    ds = LatentDataset(many, batch_size=4, seed=3)
    n = 0
    for b in ds:
        B = len(b["clip_id"])
        assert b["latent"].ndim == 5 and b["latent"].shape[0] == B <= 4
        assert b["text_embedding"].shape[:1] == (B,) and b["text_mask"].shape[0] == B
        n += B
    assert n == 60


def test_shuffle_is_deterministic_per_seed_and_epoch(many):
    a = _ids(LatentDataset(many, seed=5))
    assert a == _ids(LatentDataset(many, seed=5))
    assert a != _ids(LatentDataset(many, seed=6))
    ds = LatentDataset(many, seed=5)
    ds.set_epoch(1)
    b = _ids(ds)
    assert b != a and sorted(b) == sorted(a)


def test_resume_from_a_saved_position(many):
    full = _ids(LatentDataset(many, batch_size=2, seed=11))
    ds = LatentDataset(many, batch_size=2, seed=11)
    it = iter(ds)
    got = _ids([next(it) for _ in range(5)])
    state = json.loads(json.dumps(ds.state_dict()))  # survives a checkpoint as JSON
    resumed = LatentDataset(many, batch_size=2, seed=11)
    resumed.load_state_dict(state)
    assert got + _ids(resumed) == full
    # with DataLoader workers the trainer passes the items its rank consumed
    loader_full = _ids(
        torch.utils.data.DataLoader(LatentDataset(many, seed=2), batch_size=None, num_workers=2)
    )
    ds2 = LatentDataset(many, seed=2)
    ds2.load_state_dict({"epoch": 0, "consumed": 13, "seed": 2})
    rest = _ids(torch.utils.data.DataLoader(ds2, batch_size=None, num_workers=2))
    assert rest == loader_full[13:]


def test_pandas_and_datasets_folder_readers_skip_the_manifest(many, tmp_path):
    # the documented loaders, on the folder itself (the Ray reader: test_latents_encode's job
    # test). `datasets` skips only hidden files: "_manifest.json" used to break it.
    import datasets
    import pandas as pd

    assert (many / MANIFEST_NAME).is_file() and MANIFEST_NAME.startswith(".")
    df = pd.read_parquet(many)
    assert len(df) == 60 and {S.CAPTION, S.AESTHETIC, S.LATENT_SHAPE} <= set(df.columns)
    hf = datasets.load_dataset("parquet", data_dir=str(many), split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(hf[S.CLIP_ID]) == sorted(df[S.CLIP_ID])
    i = hf[S.CLIP_ID].index(df[S.CLIP_ID].iloc[0])
    assert hf[i][S.LATENT] == df[S.LATENT].iloc[0] and list(hf[i][S.LATENT_SHAPE]) == list(
        df[S.LATENT_SHAPE].iloc[0]
    )


def test_options_change_layout_not_content(many):
    ref = {}
    for b in LatentDataset(
        many, batch_size=4, seed=3, prefetch=0, pad_text="max_length", latent_dtype="float32"
    ):
        for k, cid in enumerate(b["clip_id"]):
            ref[cid] = (b["latent"][k], b["text_embedding"][k], b["text_mask"][k])
    n = 0
    for b in LatentDataset(many, batch_size=4, seed=3, prefetch=3):  # defaults: longest, stored
        assert b["latent"].dtype == torch.float16  # the smoke preset stores fp16
        L = b["text_mask"].shape[1]
        assert LatentDataset(many).text_length > L or b["text_mask"].all(dim=1).any()
        for k, cid in enumerate(b["clip_id"]):
            lat, emb, mask = ref[cid]
            assert torch.equal(b["latent"][k].float(), lat)
            assert torch.equal(b["text_embedding"][k], emb[:L]) and torch.equal(b["text_mask"][k], mask[:L])
            n += 1
    assert n == 60


def test_bf16_shards_read_exactly_as_float32_or_stored(tmp_path):
    from jobs.bench.shards import make_shards

    make_shards(
        tmp_path,
        rows=70,
        latent_shapes=[(2, 1, 3, 4), (2, 1, 4, 3)],
        text_tokens=4,
        text_dim=8,
        rows_per_shard=40,
    )
    f32 = {s["clip_id"]: s["latent"] for s in LatentDataset(tmp_path, seed=1, latent_dtype="float32")}
    stored = {s["clip_id"]: s["latent"] for s in LatentDataset(tmp_path, seed=1)}
    assert len(f32) == 70 and all(v.dtype == torch.bfloat16 for v in stored.values())
    assert all(torch.equal(stored[k].float(), f32[k]) for k in f32)
    batches = list(LatentDataset(tmp_path, batch_size=16, seed=1))
    assert sum(b["latent"].shape[0] for b in batches) == 70
    # shuffled stored samples are views of their row group's buffer in storage (= write) order:
    # no sample was copied into consumption order
    groups: dict[int, list[tuple[int, str]]] = {}
    for smp in LatentDataset(tmp_path, seed=3):
        lat = smp["latent"]
        offset = lat.data_ptr() - lat.untyped_storage().data_ptr()
        groups.setdefault(lat.untyped_storage().data_ptr(), []).append((offset, smp["clip_id"]))
    for rows in groups.values():
        assert [cid for _, cid in sorted(rows)] == sorted(cid for _, cid in rows)
    assert sum(len(r) for r in groups.values()) == 70 and len(groups) > 1


def test_a_sampler_gets_the_vae_and_text_encoder_back_from_the_manifest(tmp_path, encoded):
    from latents.text import load_text_encoder, text_config_from_manifest
    from latents.vae import load_vae, vae_config_from_manifest

    table, meta = encoded
    _write(tmp_path, table, meta)
    m = read_manifest(tmp_path)
    vae = load_vae(vae_config_from_manifest(m, device="cpu"))
    assert vae.info.latents_std == m["vae"]["latents_std"]
    batch = next(
        iter(
            LatentDataset(
                tmp_path, batch_size=2, shuffle=False, latent_dtype="float32", pad_text="max_length"
            )
        )
    )
    pixels = vae.decode(batch["latent"])  # (B, 3, F, H, W) in [-1, 1]
    _, t, h, w = batch["latent"].shape[1:]
    assert pixels.shape == (len(batch["clip_id"]), 3, (t - 1) * 4 + 1, h * 8, w * 8)
    te = load_text_encoder(text_config_from_manifest(m, device="cpu"))
    emb, mask = te.encode(batch["caption"])
    assert torch.allclose(emb, batch["text_embedding"], atol=1e-2)  # stored fp16, same encoder
    assert torch.equal(mask, batch["text_mask"])


@pytest.mark.parametrize("change", ["lower", "move"])
def test_row_group_counts_are_checked_against_the_footers(tmp_path, encoded, change):
    """A manifest row group whose `rows` was lowered (2 -> 1, the shard's total left as it was)
    would make the reader plan one row fewer and drop a sample silently; moved between groups it
    would misplace rows. Both are refused up front, naming the shard and both counts."""
    table, meta = encoded
    _write(tmp_path, table, meta)
    assert len(LatentDataset(tmp_path)) == table.num_rows  # as written: accepted
    m = json.loads((tmp_path / MANIFEST_NAME).read_text())
    s = m["shards"][0]
    counts = [g["rows"] for g in s["row_groups"]]
    assert len(counts) >= 2 and counts[0] >= 2, counts  # 3 shapes of 2 clips: groups of 2
    s["row_groups"][0]["rows"] -= 1
    if change == "move":
        s["row_groups"][1]["rows"] += 1
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(m))
    said = [counts[0] - 1, counts[1] + (change == "move"), *counts[2:]]
    with pytest.raises(
        ShardError, match=rf"row groups hold \[{counts[0]}, .*row_groups say \[{said[0]}, {said[1]}"
    ):
        LatentDataset(tmp_path)
