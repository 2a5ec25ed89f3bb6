"""`python -m jobs.encode --input OUT/captions --output OUT/latents`: VAE latents into Parquet shards.

One Ray Data streaming plan; the workers read and write every row, the driver coordinates:

  captions parts (read by the workers) ─▶ eligible clips not yet written (tasks)
     ─▶ decode tasks (once at the target fps, bucket crop/resize)
     ─▶ VAE + text encoder actors (`--actors`, `--gpus` each)
     ─▶ writer tasks, one per batch of up to min(--max-rows-per-shard, 256) clips, each writing
          OUT/latents/shard-<key>-NNNNN.parquet    the batch's encoded rows
          OUT/latents/_index/part-<key>.parquet    clip_id, status, failed_stage, error of every row
          OUT/_done/encode/<key>                   the marker, last; it carries the shard entries

Then the driver merges the shard entries of the finished markers into .manifest.json
(latents/shards.py: metadata only) and removes what no finished marker references: index
parts and shards of another config, or of a writer killed before its marker. The counts come
from Ray tasks (eligible and already done per input part, errors by reason per index part), so
the driver's memory is O(files), never O(clips). Errors are counted in the summary and the
manifest, never sharded.

Resume: a rerun skips the clips in finished index parts of the same config (a clip that failed
stays failed until the config changes); a changed config re-encodes into new files, and the old
shard set stays valid until the new manifest replaces it; a rerun with nothing new loads no model.

Locally a Ray instance is started on 127.0.0.1; with RAY_ADDRESS (or `ray job submit`) the
same command runs on the cluster (the output must then be on storage all nodes share).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate import schema as S
from curate.errors import UsageError, check_range, error_key
from curate.io import layout, storage
from curate.io.storage import (
    check_writable,
    config_hash,
    marker_path,
    read_json,
    write_json_atomic,
)
from curate.weights import require
from jobs import guards
from jobs.runtime import flags, lease, parts, presets
from jobs.runtime.current import check_parts, wanted_ref
from jobs.runtime.progress import Progress
from latents import models_info
from latents.encode import (
    LTX,
    ROUNDTRIP_PSNR,
    SMOKE,
    SMOKE_LTX,
    WRITE_ROWS,
    EncodeConfig,
    eligible_mask,
    manifest_meta,
)
from latents.encode import STAGE as ENCODE_STAGE
from latents.shards import ShardError, merge_manifest, metric_summary, read_manifest
from latents.weights import stage_weights, with_weights_dir

# the two named presets plus the LTX-Video variants (fast on CPU)
PRESETS: dict[str, EncodeConfig] = {
    **{name: p.encode for name, p in presets.PRESETS.items()},
    "smoke-ltx": SMOKE_LTX,
    "ltx": LTX,
}
INDEX_SCHEMA = pa.schema([S.CLIP_SCHEMA.field(c) for c in (S.CLIP_ID, S.STATUS, S.FAILED_STAGE, S.ERROR)])
# what the eligible/done counts read of an input part (eligible_mask's columns)
COUNT_COLUMNS = [S.CLIP_ID, S.STATUS, S.KEPT, S.CAPTION]


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
    batch_size: int = 8  # clips per actor call
    max_rows_per_shard: int = WRITE_ROWS  # writer batches: min(this, WRITE_ROWS) clips (index part + marker)
    max_shard_bytes: int = 1 << 30
    row_group_rows: int = 64
    verbose: bool = False


def _index_parts(out: str) -> list[str]:
    return storage.list_parts(layout.index_dir(out))


def finished_batches(out: str, cfg_hash: str) -> dict[str, dict[str, Any]]:
    """Index part -> its marker, for every writer batch finished under this config.

    O(files): one listing and one small JSON per batch; no rows are read.
    """
    done: dict[str, dict[str, Any]] = {}
    for part in _index_parts(out):
        try:
            marker = read_json(marker_path(layout.run_root(out), ENCODE_STAGE, layout.key_of(part)))
        except (OSError, ValueError):
            continue
        if isinstance(marker, dict) and marker.get("config_hash") == cfg_hash:
            done[part] = marker
    return done


def _count_input(part: str, done: Any) -> Counter:
    """Ray task: one input part's rows, eligible rows and eligible rows already written."""
    from jobs.runtime.adapter import resolve

    done = resolve(done)
    t = storage.read_table(part, columns=COUNT_COLUMNS)
    eligible = [c for c, ok in zip(t.column(S.CLIP_ID).to_pylist(), eligible_mask(t)) if ok]
    return Counter(input_rows=t.num_rows, eligible=len(eligible), skipped=sum(c in done for c in eligible))


def _count_errors(part: str) -> Counter:
    """Ray task: an index part's error rows by reason (O(distinct reasons) back to the driver)."""
    t = storage.read_table(part, columns=[S.STATUS, S.ERROR])
    errors = t.filter(pc.equal(t.column(S.STATUS), S.STATUS_ERROR)).column(S.ERROR).to_pylist()
    return Counter(map(error_key, errors))


def _todo(batch: pa.Table, done: Any) -> pa.Table:
    """Plan step (tasks): the eligible clips of an input block that no finished batch holds."""
    from jobs.runtime.adapter import resolve

    done = resolve(done)
    ids = batch.column(S.CLIP_ID).to_pylist()
    keep = [ok and c not in done for ok, c in zip(eligible_mask(batch), ids)]
    return S.conform(batch.filter(pa.array(keep, pa.bool_())))


def write_batch(
    batch: pa.Table,
    out: str,
    cfg_hash: str,
    max_rows: int = WRITE_ROWS,
    max_bytes: int = 1 << 30,
    row_group_rows: int = 64,
) -> pa.Table:
    """Writer task: a batch's latent shards (ok rows), its index part (every row), then its
    marker carrying the shard entries (the manifest fragment). Returns its row counts."""
    if not batch.num_rows:
        return parts.no_counts("rows", "encoded")
    shards: list[dict[str, Any]] = []

    def beside(rows: pa.Table, key: str) -> dict[str, Any]:
        # meta={}: this writer writes no manifest; the driver merges one from every marker's entries
        shards.extend(parts.write_shards(rows, out, key, {}, max_rows, max_bytes, row_group_rows))
        return {"clips": rows.num_rows, "encoded": sum(s["rows"] for s in shards), "shards": shards}

    # the config in the key (salt): another config never reuses a name (its shards and markers
    # stay apart until the new manifest replaces the old one); a kill before the marker
    # re-encodes this batch's clips, and the shards it left are dropped by the next run
    parts.write_part(
        batch,
        parts.PartSpec(layout.index_dir(out), layout.run_root(out), ENCODE_STAGE, cfg_hash, salt=cfg_hash),
        select=_index_rows,
        beside=beside,
    )
    return parts.counts(rows=batch.num_rows, encoded=sum(s["rows"] for s in shards))


def _index_rows(batch: pa.Table) -> pa.Table:
    return S.conform(batch.select(INDEX_SCHEMA.names), INDEX_SCHEMA)


def drop_stale(out: str, finished: dict[str, dict[str, Any]]) -> None:
    """Remove index parts (and their markers) of no finished batch: another config, or a writer
    killed before its marker. Their shards go when `merge_manifest` drops unlisted shards."""
    for part in _index_parts(out):
        if part not in finished:
            storage.delete(part)
            storage.delete(marker_path(layout.run_root(out), ENCODE_STAGE, layout.key_of(part)))


def merge_shards(
    out: str, finished: dict[str, dict[str, Any]], meta: dict[str, Any], counts: dict[str, int]
) -> dict[str, Any]:
    """The manifest of the finished batches' shard entries, written to OUT/.manifest.json; every
    shard file no entry lists is deleted. Metadata only: O(shards), no shard is opened."""
    shards = [s for marker in finished.values() for s in marker.get("shards", [])]
    return merge_manifest(out, {**meta, "counts": counts}, shards)


def _meta(enc: EncodeConfig, out: str, cfg_hash: str, reuse: bool) -> dict[str, Any]:
    """The manifest's model constants: from the current manifest when `reuse` and it was made
    with this config (a rerun with nothing new loads no model), else from the models (CPU)."""
    if reuse:
        try:
            current = read_manifest(out)
        except ShardError:
            current = {}
        if current.get("encode", {}).get("config_hash") == cfg_hash:
            return {
                k: current[k] for k in ("vae", "text_encoder", "buckets", "encode", "smoke")
            }  # manifest_meta's
    vae_info, text_info = models_info.vae_and_text_info(enc)
    return manifest_meta(enc, vae_info, text_info)


def main(cfg: EncodeJobConfig) -> dict:
    from jobs.runtime.adapter import (
        Resources,
        clip_ids_ref,
        init_ray,
        map_stage,
        map_task,
        read_parts_dataset,
        run_tasks,
    )
    from latents.encode import EncodeStage, prepare_batch

    check_range("batch_size", cfg.batch_size, 1, fix="pass --batch-size >= 1")
    check_range("concurrency", cfg.concurrency, 1, fix="pass --actors >= 1")
    check_range("num_gpus", cfg.num_gpus, 0, fix="pass --gpus >= 0")
    guards.check_input("encode", cfg.input)
    inputs = storage.list_parts(cfg.input)  # names only: the workers read the rows
    if not inputs:
        raise UsageError(
            f"--input must hold part-*.parquet files written by jobs.caption, got {cfg.input!r} "
            "(Parquet files with other names); pass OUT/captions"
        )
    # important: on the driver, before Ray: missing weights must not surface as an actor traceback
    require(stage_weights(encode=cfg.encode), cfg.encode.vae.weights_dir or cfg.encode.text.weights_dir)
    out = cfg.output  # a local folder or a URI: every location below goes through curate.io.storage
    check_writable(out)
    with lease.hold(out, "jobs.encode", watch=[layout.run_root(out)]):  # curate on OUT writes here too
        t0 = time.perf_counter()
        cfg_hash = config_hash(cfg.encode)
        init_ray(cfg.address, quiet=not cfg.verbose, need=need_of(cfg))
        # decisions propagate: a finished batch holding a clip no longer eligible (re-decided, or no
        # longer captioned) is dropped, and its still-eligible clips are encoded again below
        finished = finished_batches(out, cfg_hash)
        batches = list(finished)
        for part, ok in zip(batches, check_parts(batches, wanted_ref(inputs, COUNT_COLUMNS, eligible_mask))):
            if not ok:
                storage.delete(marker_path(layout.run_root(out), ENCODE_STAGE, layout.key_of(part)))
                storage.delete(part)
        done = clip_ids_ref(list(finished_batches(out, cfg_hash)))  # the set stays in the object store
        # important: counted before the plan runs, against the same done set the plan skips
        seen = sum(run_tasks(_count_input, inputs, done), Counter())
        new_rows = 0
        if seen["eligible"] > seen["skipped"]:
            columns = [
                c for c in S.CLIP_SCHEMA.names if c != S.CLIP_EMBEDDING
            ]  # scores' embeddings: not needed
            ds = read_parts_dataset(inputs, columns)
            ds = map_task(ds, partial(_todo, done=done), Resources(num_cpus=0.25, concurrency=0))
            ds = map_task(
                ds,
                partial(prepare_batch, cfg=cfg.encode),
                Resources(num_cpus=1, concurrency=cfg.prepare_concurrency, batch_size=cfg.batch_size),
            )
            ds = map_stage(
                ds,
                EncodeStage,
                cfg.encode,
                Resources(
                    num_cpus=cfg.actor_cpus,
                    num_gpus=cfg.num_gpus,
                    concurrency=cfg.concurrency,
                    batch_size=cfg.batch_size,
                ),
            )
            # writer batches of up to a shard's rows, capped at WRITE_ROWS (a writer holds its batch);
            # the driver sums counts
            write = partial(
                write_batch,
                out=out,
                cfg_hash=cfg_hash,
                max_rows=cfg.max_rows_per_shard,
                max_bytes=cfg.max_shard_bytes,
                row_group_rows=cfg.row_group_rows,
            )
            ds = map_task(
                ds,
                write,
                Resources(num_cpus=0.1, concurrency=0, batch_size=min(cfg.max_rows_per_shard, WRITE_ROWS)),
            )
            progress = Progress("encode", seen["eligible"] - seen["skipped"], "clips")
            new_rows = parts.drain(ds, progress).get("rows", 0)
        finished = finished_batches(out, cfg_hash)
        drop_stale(out, finished)
        errors = sum(run_tasks(_count_errors, list(finished)), Counter())
        counts = {
            "input_rows": seen["input_rows"],
            "eligible": seen["eligible"],
            "errors": int(sum(errors.values())),
        }
        manifest = merge_shards(out, finished, _meta(cfg.encode, out, cfg_hash, reuse=new_rows == 0), counts)
        psnr = metric_summary(manifest, ROUNDTRIP_PSNR.lstrip("_"))
        summary = {
            "input_rows": seen["input_rows"],
            "eligible": seen["eligible"],
            "encoded_this_run": new_rows,
            "skipped_already_done": seen["skipped"],
            "shard_rows": manifest["counts"]["rows"],
            "shards": manifest["counts"]["shards"],
            "errors": counts["errors"],
            "errors_by_reason": dict(errors.most_common(10)),
            "roundtrip_psnr_mean": psnr["mean"] if psnr else None,
            "vae": manifest["vae"]["vae_id"],
            "smoke": manifest["smoke"],
            "manifest": layout.manifest_path(out),
            "wall_seconds": round(time.perf_counter() - t0, 2),
            "config_hash": cfg_hash,
        }
        write_json_atomic(
            summary, layout.summary_path(layout.run_root(out), "encode")
        )  # next to OUT/summary/split.json
        return summary


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.encode", __doc__.split("\n\n")[0])
    flags.add_io(p, "captioned clips (OUT/captions)", "latent shard folder (OUT/latents)")
    flags.add_preset(p, sorted(PRESETS))
    # important: CPU actors ask for half a core, so the CPU prepare tasks still get one on small machines
    flags.add_resources(p, actors=1, gpus=0.0, cpus=0.5)
    p.add_argument("--batch-size", type=int, default=8, help="clips per actor call")
    p.add_argument(
        "--max-rows-per-shard",
        type=int,
        default=WRITE_ROWS,
        help=f"rows per shard at most, default and cap {WRITE_ROWS} (each writer batch of up to "
        f"{WRITE_ROWS} clips writes its own shards)",
    )
    p.add_argument("--max-shard-mb", type=int, default=1024, help="close a shard at about this many MB")
    flags.add_device(p)
    flags.add_weights_dir(p)
    flags.add_ray(p)
    return p


def need_of(cfg: EncodeJobConfig) -> flags.Need:
    return flags.Need(
        gpus=cfg.num_gpus * cfg.concurrency,
        cpus=cfg.actor_cpus * cfg.concurrency + 1,
        max_cpus_one=cfg.actor_cpus,
        what=f"encode ({cfg.concurrency} actor(s) + prepare tasks)",
    )


def config_from_args(args: argparse.Namespace) -> EncodeJobConfig:
    """Every check that needs no Ray: flags, the input folder, this machine's GPUs and CPUs."""
    for flag, v in (
        ("--actors", args.actors),
        ("--batch-size", args.batch_size),
        ("--max-rows-per-shard", args.max_rows_per_shard),
        ("--max-shard-mb", args.max_shard_mb),
    ):
        flags.check_int(flag, v, 1)
    if args.max_rows_per_shard > WRITE_ROWS:  # as jobs.curate's: a writer batch holds at most that many clips
        raise flags.fail(
            f"--max-rows-per-shard must be <= {WRITE_ROWS} (a writer batch holds at most that many clips)",
            args.max_rows_per_shard,
            f"pass --max-rows-per-shard {WRITE_ROWS} or less",
        )
    flags.check_float("--gpus", args.gpus, 0, fix="pass --gpus 0 (CPU) or 1 per actor")
    flags.check_float("--cpus", args.cpus, 0, strict=True)
    flags.check_device(args.device, args.gpus)
    guards.check_input("encode", flags.canonical(args.input))
    guards.check_output(flags.canonical(args.output), stage="encode")
    enc = with_weights_dir(PRESETS[args.preset], args.weights_dir)
    if args.device != "auto":
        enc = replace(enc, vae=replace(enc.vae, device=args.device))
    cfg = EncodeJobConfig(
        input=flags.canonical(args.input),
        output=flags.canonical(args.output),
        encode=enc,
        address=args.address,
        concurrency=args.actors,
        num_gpus=args.gpus,
        actor_cpus=args.cpus,
        batch_size=args.batch_size,
        max_rows_per_shard=args.max_rows_per_shard,
        max_shard_bytes=args.max_shard_mb << 20,
        verbose=args.verbose,
    )
    flags.check_local(need_of(cfg), cfg.address)
    return cfg


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return flags.run_cli(lambda: _run_cli(args))


def _run_cli(args: argparse.Namespace) -> int:
    summary = main(config_from_args(args))
    smoke = " (SMOKE: random models, latents meaningless)" if summary["smoke"] else ""
    print(
        f"encode: {summary['eligible']} eligible clips, {summary['encoded_this_run']} encoded now, "
        f"{summary['skipped_already_done']} already done, {summary['errors']} errors -> "
        f"{summary['shard_rows']} rows in {summary['shards']} shards, round-trip PSNR "
        f"{summary['roundtrip_psnr_mean']} dB, {summary['wall_seconds']} s{smoke}"
    )
    if not summary["eligible"]:
        print(
            "encode: no clip is kept and captioned in --input, so the manifest lists 0 rows; "
            "re-decide with jobs.filter --rule ... (then jobs.caption) to keep some"
        )
    for reason, n in summary["errors_by_reason"].items():
        print(f"  error x{n}: {reason}")
    print(json.dumps({"manifest": summary["manifest"]}))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
