"""`python -m jobs.encode --input OUT/captions --output OUT/latents`: VAE latents into Parquet shards.

Plan: captioned clips -> CPU tasks (decode once at the target fps, bucket crop/resize) ->
VAE + text encoder actors (`--concurrency` actors, `--num-gpus` each) -> parts written by the
driver to OUT/latents/_parts/part-<key>.parquet, each followed by its marker
OUT/latents/_done/encode/<key>. A rerun skips clips already in a finished part with the same
config. At the end all encoded rows are (re)written as shards + .manifest.json
(latents/shards.py); errors are counted in the summary and the manifest, never sharded.

Locally a Ray instance is started on 127.0.0.1; with RAY_ADDRESS (or `ray job submit`) the
same command runs on the cluster (the output must then be on storage all nodes share).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate import schema as S
from curate import storage
from curate.errors import UsageError, check_range, error_key
from curate.storage import (
    check_writable,
    config_hash,
    is_done,
    mark_done,
    read_parts,
    write_json_atomic,
    write_parquet_atomic,
)
from curate.weights import local_repo, require
from jobs import flags, presets
from latents.encode import LTX, ROUNDTRIP_PSNR, SMOKE, SMOKE_LTX, EncodeConfig, manifest_meta
from latents.encode import STAGE as ENCODE_STAGE
from latents.shards import MANIFEST_NAME, ShardError, ShardWriter, verify_shards
from latents.text import text_weights
from latents.weights import stage_weights, with_weights_dir

# the two named presets plus the LTX-Video variants (fast on CPU)
PRESETS: dict[str, EncodeConfig] = {**{name: p.encode for name, p in presets.PRESETS.items()},
                                     "smoke-ltx": SMOKE_LTX, "ltx": LTX}
PARTS = "_parts"


@dataclass(frozen=True)
class EncodeJobConfig:
    input: str
    output: str
    encode: EncodeConfig = field(default_factory=lambda: SMOKE)
    address: str | None = None
    concurrency: int = 1  # VAE actors
    num_gpus: float = 0.0  # per actor
    actor_cpus: float = 0.5  # per actor; < 1 so CPU prepare tasks still get a core on small machines
    prepare_concurrency: int = 0  # parallel decode tasks (0: Ray decides)
    batch_size: int = 8  # clips per part / per actor call
    max_rows_per_shard: int = 2048
    max_shard_bytes: int = 1 << 30
    row_group_rows: int = 64
    verbose: bool = False


def part_key(clip_ids: list[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(clip_ids)).encode(), digest_size=10).hexdigest()


def _done_parts(out: str, cfg_hash: str) -> list[str]:
    """Finished parts (marker with this config) in OUT/_parts, local or object storage."""
    parts = [p for p in storage.list_files(storage.join(out, PARTS), ".parquet")
             if storage.basename(p).startswith("part-")]
    return [p for p in parts if is_done(out, ENCODE_STAGE, storage.stem(p).removeprefix("part-"), cfg_hash)]


def plan_work(table: pa.Table, out: str, cfg_hash: str) -> tuple[pa.Table, int]:
    """Rows still to encode (all captioned-stage rows not in a finished part) and the count skipped."""
    done: set[str] = set()
    for p in _done_parts(out, cfg_hash):
        done.update(storage.read_table(p, columns=[S.CLIP_ID]).column(S.CLIP_ID).to_pylist())
    ids = table.column(S.CLIP_ID).to_pylist()
    keep = pa.array([i not in done for i in ids], type=pa.bool_())
    todo = table.filter(keep)
    # stable order so a rerun forms the same batches
    todo = todo.take(pc.sort_indices(todo, [(S.CLIP_ID, "ascending")]))
    return todo, len(ids) - todo.num_rows


def vae_and_text_info(enc: EncodeConfig) -> tuple[dict, dict]:
    """Constants for the manifest, from the models themselves (CPU; the text encoder's config only)."""
    from latents.text import load_text_encoder
    from latents.vae import load_vae

    vae = load_vae(replace(enc.vae, device="cpu", tiling=False))
    if enc.text.smoke:
        text_info = load_text_encoder(replace(enc.text, device="cpu")).info.to_dict()
    else:
        from transformers import AutoConfig

        source = local_repo(enc.text.source, enc.text.weights_dir)
        sub = enc.text.model_subfolder
        kw = {"subfolder": sub} if sub and not (Path(source).is_dir() and not (Path(source) / sub).is_dir()) else {}
        try:
            c = AutoConfig.from_pretrained(source, revision=enc.text.revision, **kw)
        except (OSError, ValueError) as e:  # not in the cache / folder: the same message as the check's
            require(text_weights(enc.text), enc.text.weights_dir)
            raise UsageError(f"text encoder config of {enc.text.source!r} must be readable, got: "
                             f"{str(e).splitlines()[0][:200]}; pass a complete folder with --weights-dir") from e
        text_info = {"text_encoder_id": enc.text.source, "revision": enc.text.revision,
                     "max_length": enc.text.max_length, "dim": int(c.d_model), "smoke": False,
                     "config": asdict(enc.text)}
    vae_info = vae.info.to_dict()
    vae_info["config"] = asdict(enc.vae)  # the preset's own loader config (the driver used CPU, no tiling)
    return vae_info, text_info


def write_shards(cfg: EncodeJobConfig, counts: dict) -> dict:
    """All finished parts of this config -> shards + manifest (old set replaced atomically)."""
    out = cfg.output
    cfg_hash = config_hash(cfg.encode)
    parts = _done_parts(out, cfg_hash)
    # names + mtimes: a re-encoded part (same clips, new file) also rebuilds the shards
    stamp = "\n".join(f"{storage.basename(p)} {storage.mtime_ns(p)}" for p in parts)
    layout = {"parts": hashlib.blake2b(stamp.encode(), digest_size=8).hexdigest(),
              "max_rows": cfg.max_rows_per_shard, "max_bytes": cfg.max_shard_bytes, "row_group_rows": cfg.row_group_rows}
    try:
        current = verify_shards(out, checksum=False)
        if current.get("encode", {}).get("config_hash") == cfg_hash and current.get("layout") == layout:
            return current  # nothing new since the last run: keep the shards as they are
    except ShardError:
        pass
    vae_info, text_info = vae_and_text_info(cfg.encode)
    meta = manifest_meta(cfg.encode, vae_info, text_info)
    meta["counts"] = counts
    meta["layout"] = layout
    with ShardWriter(out, meta, max_rows=cfg.max_rows_per_shard, max_bytes=cfg.max_shard_bytes,
                     row_group_rows=cfg.row_group_rows, metric_columns=(ROUNDTRIP_PSNR,),
                     run_id=cfg_hash[:8] + "-" + hashlib.blake2b(str(time.time()).encode(), digest_size=2).hexdigest()) as w:
        for p in parts:
            t = storage.read_table(p)
            ok = pc.and_(pc.equal(t.column(S.STATUS), S.STATUS_OK), pc.is_valid(t.column(S.LATENT)))
            w.write(t.filter(ok))
    return w.manifest()


def _write_part(batch: pa.Table, out: str, cfg_hash: str) -> pa.Table:
    """Writer task: one atomic encoded part, then its marker; returns its row count."""
    if batch.num_rows == 0:
        return pa.table({"rows": pa.array([], pa.int64())})
    key = part_key(batch.column(S.CLIP_ID).to_pylist())
    write_parquet_atomic(batch, storage.join(out, PARTS, f"part-{key}.parquet"))
    # important: the marker goes last; a kill before it re-encodes this part's clips
    mark_done(out, ENCODE_STAGE, key, cfg_hash, clips=batch.num_rows)
    return pa.table({"rows": [batch.num_rows]})


def main(cfg: EncodeJobConfig) -> dict:
    from jobs.adapter import Resources, init_ray, map_stage, map_task, table_dataset
    from latents.encode import EncodeStage, eligible_mask, prepare_batch

    check_range("batch_size", cfg.batch_size, 1, fix="pass --batch-size >= 1")
    check_range("concurrency", cfg.concurrency, 1, fix="pass --actors >= 1")
    check_range("num_gpus", cfg.num_gpus, 0, fix="pass --gpus >= 0")
    flags.check_stage_folder("--input", cfg.input, "captions", "jobs.caption")
    # important: on the driver, before Ray: missing weights must not surface as an actor traceback
    require(stage_weights(encode=cfg.encode), cfg.encode.vae.weights_dir or cfg.encode.text.weights_dir)
    table = read_parts(cfg.input, S.CLIP_SCHEMA)
    out = cfg.output  # a local folder or a URI: every location below goes through curate.storage
    check_writable(out)
    t0 = time.perf_counter()
    cfg_hash = config_hash(cfg.encode)
    eligible = table.filter(pa.array(eligible_mask(table), type=pa.bool_()))
    todo, skipped = plan_work(eligible, out, cfg_hash)
    new_rows = 0
    if todo.num_rows:
        init_ray(cfg.address, quiet=not cfg.verbose, need=need_of(cfg))
        ds = table_dataset(todo, rows_per_block=cfg.batch_size)
        ds = map_task(ds, partial(prepare_batch, cfg=cfg.encode),
                      Resources(num_cpus=1, concurrency=cfg.prepare_concurrency, batch_size=cfg.batch_size))
        ds = map_stage(ds, EncodeStage, cfg.encode, Resources(num_cpus=cfg.actor_cpus, num_gpus=cfg.num_gpus,
                                                              concurrency=cfg.concurrency, batch_size=cfg.batch_size))
        # the workers write the parts; the driver only sums their row counts
        ds = map_task(ds, partial(_write_part, out=out, cfg_hash=cfg_hash), Resources(num_cpus=0.1, concurrency=0))
        for counts in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            new_rows += sum(counts.column("rows").to_pylist())
    parts = _done_parts(out, cfg_hash)
    status = pa.concat_tables([storage.read_table(p, columns=[S.STATUS, S.ERROR]) for p in parts]) if parts else None
    errors = Counter(map(error_key, status.filter(pc.equal(status.column(S.STATUS), S.STATUS_ERROR)).column(S.ERROR)
                         .to_pylist())) \
        if status is not None else Counter()
    counts = {"input_rows": table.num_rows, "eligible": eligible.num_rows,
              "errors": int(sum(errors.values()))}
    manifest = write_shards(cfg, counts)
    psnr = [v for s in manifest["shards"] for v in s["metrics"].get(ROUNDTRIP_PSNR.lstrip("_"), {}).get("values", [])]
    summary = {
        "input_rows": table.num_rows, "eligible": eligible.num_rows, "encoded_this_run": new_rows,
        "skipped_already_done": skipped, "shard_rows": manifest["counts"]["rows"],
        "shards": manifest["counts"]["shards"], "errors": counts["errors"],
        "errors_by_reason": dict(errors.most_common(10)),
        "roundtrip_psnr_mean": round(sum(psnr) / len(psnr), 2) if psnr else None,
        "vae": manifest["vae"]["vae_id"], "smoke": manifest["smoke"],
        "manifest": storage.join(out, MANIFEST_NAME), "wall_seconds": round(time.perf_counter() - t0, 2),
        "config_hash": cfg_hash,
    }
    write_json_atomic(summary, storage.join(storage.parent(out), "summary", "encode.json"))  # next to OUT/summary/split.json
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.encode", __doc__.split("\n\n")[0])
    flags.add_io(p, "captioned clips (OUT/captions)", "latent shard folder (OUT/latents)")
    flags.add_preset(p, sorted(PRESETS))
    # important: CPU actors ask for half a core, so the CPU prepare tasks still get one on small machines
    flags.add_resources(p, actors=1, gpus=0.0, cpus=0.5)
    p.add_argument("--batch-size", type=int, default=8, help="clips per actor call and per part")
    p.add_argument("--max-rows-per-shard", type=int, default=2048)
    p.add_argument("--max-shard-mb", type=int, default=1024)
    flags.add_device(p)
    flags.add_weights_dir(p)
    flags.add_ray(p)
    return p


def need_of(cfg: EncodeJobConfig) -> flags.Need:
    return flags.Need(gpus=cfg.num_gpus * cfg.concurrency, cpus=cfg.actor_cpus * cfg.concurrency + 1,
                      max_cpus_one=cfg.actor_cpus, what=f"encode ({cfg.concurrency} actor(s) + prepare tasks)")


def config_from_args(args: argparse.Namespace) -> EncodeJobConfig:
    """Every check that needs no Ray: flags, the input folder, this machine's GPUs and CPUs."""
    for flag, v in (("--actors", args.actors), ("--batch-size", args.batch_size),
                    ("--max-rows-per-shard", args.max_rows_per_shard), ("--max-shard-mb", args.max_shard_mb)):
        flags.check_int(flag, v, 1)
    flags.check_float("--gpus", args.gpus, 0, fix="pass --gpus 0 (CPU) or 1 per actor")
    flags.check_float("--cpus", args.cpus, 0, strict=True)
    flags.check_device(args.device, args.gpus)
    flags.check_stage_folder("--input", args.input, "captions", "jobs.caption")
    enc = with_weights_dir(PRESETS[args.preset], args.weights_dir)
    if args.device != "auto":
        enc = replace(enc, vae=replace(enc.vae, device=args.device))
    cfg = EncodeJobConfig(input=flags.canonical(args.input), output=flags.canonical(args.output), encode=enc,
                          address=args.address, concurrency=args.actors, num_gpus=args.gpus,
                          actor_cpus=args.cpus, batch_size=args.batch_size,
                          max_rows_per_shard=args.max_rows_per_shard, max_shard_bytes=args.max_shard_mb << 20,
                          verbose=args.verbose)
    flags.check_local(need_of(cfg), cfg.address)
    return cfg


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return flags.run_cli(lambda: _run_cli(args))


def _run_cli(args: argparse.Namespace) -> int:
    summary = main(config_from_args(args))
    smoke = " (SMOKE: random models, latents meaningless)" if summary["smoke"] else ""
    print(f"encode: {summary['eligible']} eligible clips, {summary['encoded_this_run']} encoded now, "
          f"{summary['skipped_already_done']} already done, {summary['errors']} errors -> "
          f"{summary['shard_rows']} rows in {summary['shards']} shards, round-trip PSNR "
          f"{summary['roundtrip_psnr_mean']} dB, {summary['wall_seconds']} s{smoke}")
    for reason, n in summary["errors_by_reason"].items():
        print(f"  error x{n}: {reason}")
    print(json.dumps({"manifest": summary["manifest"]}))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
