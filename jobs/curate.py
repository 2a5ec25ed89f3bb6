"""`python -m jobs.curate --input VIDEOS --output OUT --preset smoke|default`: every stage, one stream.

One Ray Data streaming plan, no barrier between stages:

  inputs ─▶ probe+split tasks ─▶ score CPU tasks (decode once, cheap scores, cheap gate)
     ─▶ CLIP actors ─▶ streaming filter ─▶ caption decode tasks ─▶ VLM actors
     ─▶ encode decode tasks ─▶ VAE actors ─▶ driver: staging parts + latent shards

Each stage has its own resources (CPU tasks, actor pools, GPUs per actor); Ray Data's
backpressure bounds memory, and the first shards appear while videos are still being split.

Rules that need the whole run (exact and near duplicates across videos, percentile
thresholds) cannot be decided on a stream: the stream applies the absolute rules, and a
final pass applies the full cascade to every scored clip, then rewrites the shards without
the clips it drops (their captions and latents were computed in vain: the price of
streaming; run the stage-by-stage jobs to spend nothing on them).

Outputs are those of the stage-by-stage jobs (OUT/videos, clips, scored, captions, latents,
report). Resume: every batch reaching the driver is written as an atomic staging part
(OUT/_stream) with its marker; a rerun skips clips already staged and rebuilds the outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate import filters
from curate import schema as S
from curate.errors import UsageError, check_range
from curate.storage import (
    check_writable,
    config_hash,
    delete,
    is_done,
    join,
    list_files,
    mark_done,
    read_parts,
    read_table,
    stem,
    write_json_atomic,
    write_parquet_atomic,
)
from curate.weights import expand
from jobs import flags
from jobs.inputs import list_inputs
from jobs.presets import PRESETS, RANDOM_MODELS_WARNING, Preset, with_device

STAGE = "curate"
STREAM = "_stream"
MODEL_RESOURCE_SHARE = 0.01  # of --model-resource per model actor: any number of actors fit a node with 1


@dataclass(frozen=True)
class CurateConfig:
    input: str
    output: str
    preset: str = "smoke"
    address: str | None = None
    score_actors: int = 1
    caption_actors: int = 1
    encode_actors: int = 1
    score_gpus: float = 0.0  # per actor
    caption_gpus: float = 0.0
    encode_gpus: float = 0.0
    actor_cpus: float = 0.25  # CPU-only actors ask for a share, so decode tasks keep the cores
    task_cpus: float = 0.5
    batch_size: int = 4  # clips per actor call
    max_rows_per_shard: int = 2048
    report: bool = True
    device: str = "auto"  # where every model runs (flags.check_device)
    verbose: bool = False
    weights_dir: str | None = None  # DIR/<hub repo id> of downloaded weights; None: HF cache only
    model_resource: str | None = None  # custom Ray resource the model actors need (pins them to such nodes)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UsageError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for name in ("score_actors", "caption_actors", "encode_actors", "batch_size"):
            check_range(name, getattr(self, name), 1, fix=f"pass --{name.replace('_', '-')} >= 1")


def stream_filters(cfg: filters.FilterConfig) -> filters.FilterConfig:
    """The part of the cascade a stream can decide batch by batch: absolute thresholds."""
    return filters.FilterConfig(rules=tuple(r for r in cfg.rules if r.threshold is not None),
                                exact_dedup=False, near_dup_cosine=None)


def _stream_filter(batch: pa.Table, cfg: filters.FilterConfig) -> pa.Table:
    table = S.conform(batch.select([c for c in batch.column_names if c in S.CLIP_SCHEMA.names]))
    table, _ = filters.apply_cascade(table, cfg)
    return table


def _split_task(batch: pa.Table, preset: Preset, out: str, staged: frozenset[str]) -> pa.Table:
    """Probe + split one video (or reuse its finished split), minus clips already staged."""
    from jobs.split import process_one  # the same parts and markers as jobs.split

    rows: list[pa.Table] = []
    for uri in batch.column(S.SOURCE_URI).to_pylist():
        info = process_one(uri, preset.split, out)
        part = join(out, "clips", f"part-{info['video_id']}.parquet")
        clips = S.conform(read_table(part), S.CLIP_SCHEMA)
        keep = pa.array([c not in staged for c in clips.column(S.CLIP_ID).to_pylist()], pa.bool_())
        rows.append(clips.filter(keep))
    return pa.concat_tables(rows) if rows else S.empty_table()


def _part_key(ids: list[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(ids)).encode(), digest_size=10).hexdigest()


def staged_clip_ids(out: str, h: str) -> frozenset[str]:
    ids: set[str] = set()
    for p in list_files(join(out, STREAM), ".parquet"):
        if is_done(out, STAGE, stem(p).removeprefix("part-"), h):
            ids.update(read_table(p, columns=[S.CLIP_ID]).column(S.CLIP_ID).to_pylist())
    return frozenset(ids)


def _with_psnr(part: pa.Table) -> pa.Table:
    """A staged part in the clip schema plus its round-trip PSNR, the transient metric column the
    shard writer summarises in the manifest (conform alone would drop it: `metrics: {}`)."""
    from latents.encode import ROUNDTRIP_PSNR

    t = S.conform(part.select([c for c in part.column_names if c in S.CLIP_SCHEMA.names]))
    psnr = part.column(ROUNDTRIP_PSNR).cast(pa.float32()) if ROUNDTRIP_PSNR in part.column_names \
        else pa.nulls(part.num_rows, pa.float32())
    return t.append_column(ROUNDTRIP_PSNR, psnr)


def _staged(out: str, h: str) -> pa.Table:
    parts = [p for p in list_files(join(out, STREAM), ".parquet")
             if is_done(out, STAGE, stem(p).removeprefix("part-"), h)]
    if not parts:
        return _with_psnr(S.empty_table())
    t = pa.concat_tables([_with_psnr(read_table(p)) for p in parts])
    # a clip staged twice (a retried batch after a crash between part and marker): keep the first
    first: dict[str, int] = {}
    for i, c in enumerate(t.column(S.CLIP_ID).to_pylist()):
        first.setdefault(c, i)
    return t.take(pa.array(sorted(first.values()), pa.int64()))


def _stage_timings(stats: str) -> dict[str, float]:
    """Wall seconds per operator from Ray Data's execution stats text."""
    import re

    out: dict[str, float] = {}
    for name, secs in re.findall(r"Operator \d+ ([^:]+): .*? executed in ([\d.]+)s", stats):
        out[name.strip()] = float(secs)
    return out


def run_stream(cfg: CurateConfig, preset: Preset, todo: list[str], out: str, h: str, meta: dict) -> dict[str, Any]:
    """The streaming plan; returns counts and timings."""
    import ray

    from captioner.stage import CaptionStage, attach_frames
    from curate import score, score_frames
    from jobs.adapter import Resources, init_ray, map_stage, map_task
    from latents.encode import ROUNDTRIP_PSNR, EncodeStage
    from latents.encode import prepare_batch as encode_prepare
    from latents.shards import ShardWriter

    init_ray(cfg.address, quiet=not cfg.verbose, need=need_of(cfg))
    if cfg.model_resource and cfg.model_resource not in ray.cluster_resources():
        raise UsageError(f"--model-resource must name a custom resource of a node in the cluster, got "
                         f"{cfg.model_resource!r} (cluster has {sorted(ray.cluster_resources())}); start a node "
                         f"with ray start --resources '{{\"{cfg.model_resource}\": 1}}' or drop the flag")
    if preset.score.smoke:
        score.build_smoke_clip(preset.score.clip_model)  # once on the driver: actors must not race
    staged = staged_clip_ids(out, h)
    task = Resources(num_cpus=cfg.task_cpus, concurrency=0, batch_size=cfg.batch_size)

    def actors(n: int, gpus: float, cpus: float) -> Resources:
        # important: an actor step asking for the same CPUs as the task before it gets fused
        # into it by Ray Data; different CPU asks keep decoding out of the model actors.
        pin = ((cfg.model_resource, MODEL_RESOURCE_SHARE),) if cfg.model_resource else ()
        return Resources(num_cpus=cpus, num_gpus=gpus, concurrency=n, batch_size=cfg.batch_size, resources=pin)

    ds = ray.data.from_items([{S.SOURCE_URI: u} for u in todo], override_num_blocks=max(1, len(todo)))
    ds = ds.map_batches(functools.partial(_split_task, preset=preset, out=str(out), staged=staged),
                        batch_format="pyarrow", batch_size=1, num_cpus=1)
    ds = map_task(ds, functools.partial(score_frames.prepare_batch, cfg=preset.score), task)
    ds = map_stage(ds, score.ClipScoreStage, preset.score, actors(cfg.score_actors, cfg.score_gpus, cfg.actor_cpus))
    ds = map_task(ds, functools.partial(_stream_filter, cfg=stream_filters(preset.score.filters)),
                  Resources(num_cpus=cfg.task_cpus * 0.5, concurrency=0))
    ds = map_task(ds, functools.partial(attach_frames, cfg=preset.caption), task)
    ds = map_stage(ds, CaptionStage, preset.caption,
                   actors(cfg.caption_actors, cfg.caption_gpus, cfg.actor_cpus * 1.01))
    ds = map_task(ds, functools.partial(encode_prepare, cfg=preset.encode), task)
    ds = map_stage(ds, EncodeStage, preset.encode, actors(cfg.encode_actors, cfg.encode_gpus, cfg.actor_cpus * 1.02))

    t0 = time.perf_counter()
    first_shard_at = None
    rows = 0
    with ShardWriter(join(out, "latents"), meta, max_rows=cfg.max_rows_per_shard, row_group_rows=64,
                     metric_columns=(ROUNDTRIP_PSNR,), run_id=h[:8] + "-s") as writer:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if batch.num_rows == 0:
                continue
            ids = batch.column(S.CLIP_ID).to_pylist()
            key = _part_key(ids)
            write_parquet_atomic(batch, join(out, STREAM, f"part-{key}.parquet"))
            mark_done(out, STAGE, key, h, clips=len(ids))  # important: marker after the part
            ok = pc.and_(pc.equal(batch.column(S.STATUS), S.STATUS_OK), pc.is_valid(batch.column(S.LATENT)))
            writer.write(batch.filter(ok))
            rows += batch.num_rows
            if first_shard_at is None and writer.shards:
                first_shard_at = time.perf_counter() - t0
    stats = ds.stats() if hasattr(ds, "stats") else ""
    return {"rows_streamed": rows, "stream_seconds": round(time.perf_counter() - t0, 2),
            "first_shard_seconds": first_shard_at, "stage_seconds": _stage_timings(stats)}


def finalize(cfg: CurateConfig, preset: Preset, out: str, h: str, meta: dict) -> dict[str, Any]:
    """Whole-run decisions over every staged clip, then the stage outputs and exact shards."""
    from latents.encode import ROUNDTRIP_PSNR
    from latents.shards import ShardWriter

    table = _staged(out, h)
    clips = read_parts(join(out, "clips"), S.CLIP_SCHEMA)
    # clips whose video failed (error rows from split) are staged too: they flow through every stage
    scored = table.drop_columns([c for c in S.columns_of(S.CAPTION_GROUP) + S.columns_of(S.LATENT_GROUP)])
    scored, funnel = filters.apply_cascade(S.conform(scored), preset.score.filters)
    kept_ids = {c for c, k in zip(scored.column(S.CLIP_ID).to_pylist(), scored.column(S.KEPT).to_pylist()) if k}
    for old in list_files(join(out, "scored"), ".parquet"):
        delete(old)
    write_parquet_atomic(scored, join(out, "scored", "part-00000.parquet"))
    write_json_atomic({"clips_in": scored.num_rows, "steps": funnel, "kept": len(kept_ids),
                       "dropped": scored.num_rows - len(kept_ids), "smoke": preset.random_models,
                       "config_hash": config_hash(preset.score)}, join(out, "scored", "_funnel.json"))
    final_kept = pa.array([c in kept_ids for c in table.column(S.CLIP_ID).to_pylist()], pa.bool_())
    cap = table.filter(pc.and_(final_kept, pc.is_valid(table.column(S.CAPTION))))
    for old in list_files(join(out, "captions"), ".parquet"):
        delete(old)
    write_parquet_atomic(S.conform(cap.drop_columns(S.columns_of(S.LATENT_GROUP))),
                         join(out, "captions", "part-00000.parquet"))
    enc = table.filter(pc.and_(final_kept, pc.and_(pc.equal(table.column(S.STATUS), S.STATUS_OK),
                                                   pc.is_valid(table.column(S.LATENT)))))
    # rewrite the shards from the staging parts: exact after run-level drops and after a resume
    with ShardWriter(join(out, "latents"), meta, max_rows=cfg.max_rows_per_shard, row_group_rows=64,
                     metric_columns=(ROUNDTRIP_PSNR,), run_id=h[:8] + "-f") as writer:
        writer.write(enc)
    manifest = writer.manifest()
    psnr = [v for sh in manifest["shards"] for v in sh["metrics"].get(ROUNDTRIP_PSNR.lstrip("_"), {}).get("values", [])]
    return {"clips": clips.num_rows, "scored": scored.num_rows, "kept": len(kept_ids),
            "captioned": cap.num_rows, "encoded": enc.num_rows, "shards": manifest["counts"]["shards"],
            "roundtrip_psnr_mean": round(sum(psnr) / len(psnr), 2) if psnr else None}  # as jobs.encode's summary


def _manifest_meta(preset: Preset) -> dict:
    from jobs.encode import vae_and_text_info
    from latents.encode import manifest_meta

    vae_info, text_info = vae_and_text_info(preset.encode)
    meta = manifest_meta(preset.encode, vae_info, text_info)
    meta["preset"] = preset.name
    meta["smoke"] = preset.random_models
    return meta


def need_of(cfg: CurateConfig) -> flags.Need:
    """All three actor pools stream at once, beside the split and decode tasks."""
    pools = [(cfg.score_actors, cfg.score_gpus), (cfg.caption_actors, cfg.caption_gpus),
             (cfg.encode_actors, cfg.encode_gpus)]
    return flags.Need(gpus=sum(n * g for n, g in pools),
                      cpus=sum(n for n, _ in pools) * cfg.actor_cpus * 1.02 + cfg.task_cpus,
                      max_cpus_one=max(cfg.actor_cpus * 1.02, 1.0), what="curate (3 actor pools + tasks)")


def main(cfg: CurateConfig) -> dict[str, Any]:
    from latents.weights import stage_weights, with_weights_dir

    preset = with_device(with_weights_dir(PRESETS[cfg.preset], cfg.weights_dir), cfg.device)
    if preset.random_models:
        print(RANDOM_MODELS_WARNING)
    inputs = [flags.canonical(u) for u in list_inputs(cfg.input)]  # source_uri is absolute (or a URI)
    out = flags.canonical(cfg.output)
    check_writable(out)
    filters.check_config(preset.score.filters)
    from curate.weights import require

    # every model of the run, on the driver before Ray: a missing one is this exit-2 message, not an actor traceback
    require(stage_weights(score=preset.score, caption=preset.caption, encode=preset.encode), cfg.weights_dir)
    h = config_hash({"preset": dataclasses.asdict(preset)})
    meta = _manifest_meta(preset)
    t0 = time.perf_counter()
    stream = run_stream(cfg, preset, inputs, out, h, meta)
    summary = {"preset": cfg.preset, "random_models": preset.random_models, "videos": len(inputs),
               **stream, **finalize(cfg, preset, out, h, meta)}
    summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(summary, join(out, "summary", "curate.json"))
    if cfg.report:
        from jobs.report import write_report_to

        summary["report"] = write_report_to(out, run_config={"curate": dataclasses.asdict(cfg),
                                                             "preset": dataclasses.asdict(preset)},
                                            stage_timings=stream["stage_seconds"], preset_name=preset.name,
                                            random_models=preset.random_models)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.curate", __doc__.split("\n\n")[0])
    flags.add_io(p, "directory, glob, list file or one video", "output root OUT")
    flags.add_preset(p, sorted(PRESETS))
    # important: CPU-only actors ask for a quarter core each, so the decode tasks keep the cores
    flags.add_resources(p, ("score", "caption", "encode"), actors=1, gpus=0.0, cpus=0.25,
                        cpus_help="CPUs per actor (every stage)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per actor call")
    p.add_argument("--no-report", action="store_true")
    flags.add_device(p)
    flags.add_weights_dir(p)
    p.add_argument("--model-resource", default=None, metavar="NAME",
                   help="run the model actors (score, caption, encode) only on Ray nodes that have the custom "
                        "resource NAME (ray start --resources '{\"NAME\": 1}')")
    flags.add_ray(p)
    return p


def config_from_args(a: argparse.Namespace) -> CurateConfig:
    """Every check that needs no Ray: flags, this machine's GPUs and CPUs."""
    for s in ("score", "caption", "encode"):
        flags.check_int(f"--{s}-actors", getattr(a, f"{s}_actors"), 1)
        flags.check_float(f"--{s}-gpus", getattr(a, f"{s}_gpus"), 0, fix=f"pass --{s}-gpus 0 (CPU) or 1")
    flags.check_int("--batch-size", a.batch_size, 1)
    flags.check_float("--cpus", a.cpus, 0, strict=True, fix="pass --cpus 0.25")
    gpus = (a.score_gpus, a.caption_gpus, a.encode_gpus)
    flags.check_device(a.device, max(gpus) if a.device == "cpu" else min(gpus))
    cfg = CurateConfig(
        input=flags.canonical(a.input), output=flags.canonical(a.output), preset=a.preset, address=a.address,
        score_actors=a.score_actors, caption_actors=a.caption_actors, encode_actors=a.encode_actors,
        score_gpus=a.score_gpus, caption_gpus=a.caption_gpus, encode_gpus=a.encode_gpus,
        actor_cpus=a.cpus, batch_size=a.batch_size, report=not a.no_report, device=a.device, verbose=a.verbose,
        weights_dir=expand(a.weights_dir), model_resource=a.model_resource)
    flags.check_local(need_of(cfg), cfg.address)
    return cfg


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return flags.run_cli(lambda: _run_cli(args))


def _run_cli(args: argparse.Namespace) -> int:
    summary = main(config_from_args(args))
    print(json.dumps({k: v for k, v in summary.items() if k != "stage_seconds"}, indent=1))
    if summary["random_models"]:
        print(RANDOM_MODELS_WARNING)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
