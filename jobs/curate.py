"""`python -m jobs.curate --input VIDEOS --output OUT --preset smoke|default`: every stage, two streams.

Phase 1, one Ray Data streaming plan:

  inputs ─▶ probe+split tasks ─▶ score CPU tasks (decode once, cheap scores, cheap gate)
     ─▶ CLIP actors ─▶ writer tasks: OUT/scored/part-<key>.parquet + marker

Then the run-level decisions (exact and near duplicates across videos, percentile
thresholds, absolute rules), distributed over the scored parts by `jobs/runtime/decide.py`: the code
`python -m jobs.filter` re-decides with.

Phase 2, a second streaming plan over the kept clips only (read by the workers):

  scored parts ─▶ kept, not yet written ─▶ decode tasks (one decode per clip: the caption
     frames and the encode frames) ─▶ VLM actors ─▶ VAE actors ─▶ writer tasks: OUT/captions
     part + latent shards, each with a marker carrying its shard entries

and the driver merges the shard entries into OUT/latents/.manifest.json (metadata only).
No clip dropped by a rule is captioned or encoded, and the driver never holds clip rows:
its memory is O(files).

Outputs are those of the stage-by-stage jobs (OUT/videos, clips, scored, captions, latents,
report). Resume: every part (scored, or captions + shards) is written atomically before its
marker; a rerun skips the clips of finished parts in each phase and rebuilds the manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate import schema as S
from curate.decisions import decide as D
from curate.decisions import filters
from curate.decisions.decide import read_columns
from curate.errors import UsageError, check_range
from curate.io import layout, storage
from curate.io.storage import (
    check_writable,
    config_hash,
    marker_path,
    read_json,
    write_json_atomic,
)
from curate.scores import clip_models
from curate.weights import expand
from jobs import guards, rule_flags, stage_flags
from jobs.runtime import flags, lease, parts
from jobs.runtime.inputs import list_inputs, skipped_line, skipped_summary
from jobs.runtime.presets import PRESETS, RANDOM_MODELS_WARNING, Preset, with_device
from jobs.runtime.progress import Progress
from jobs.runtime.split_parts import retract_replaced
from latents.encode import WRITE_ROWS

SCORED_STAGE = "curate-score"  # markers of phase-1 parts (OUT/scored)
WRITE_STAGE = "curate-write"  # markers of phase-2 parts (OUT/captions + shards), with shard entries
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
    max_rows_per_shard: int = 256  # latents.encode.WRITE_ROWS: a writer batch holds at most that many
    report: bool = True
    device: str = "auto"  # where every model runs (flags.check_device)
    verbose: bool = False
    weights_dir: str | None = None  # DIR/<hub repo id> of downloaded weights; None: HF cache only
    model_resource: str | None = None  # custom Ray resource the model actors need (pins them to such nodes)
    # the stage options (--rule, --detector, --num-frames, ...) applied over the preset; None: the preset's
    filters: filters.FilterConfig | None = None
    split: Any = None  # curate.shots.split.SplitConfig
    caption_edits: tuple[tuple[str, Any], ...] = ()  # CaptionConfig fields to replace
    encode_edits: tuple[tuple[str, Any], ...] = ()  # EncodeConfig fields to replace
    limit: int | None = None  # only the first N inputs (a trial run)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UsageError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for name in ("score_actors", "caption_actors", "encode_actors", "batch_size"):
            check_range(name, getattr(self, name), 1, fix=f"pass --{name.replace('_', '-')} >= 1")


def finished_parts(folder: str, root: str, stage: str, h: str) -> list[str]:
    """Parts of `folder` with a marker under config hash `h` (O(files): no rows read)."""
    return parts.finished(parts.PartSpec(folder, root, stage, h))


def _split_task(batch: pa.Table, preset: Preset, out: str, done: Any) -> pa.Table:
    """Probe + split one video (or reuse its finished split), minus clips already scored."""
    from jobs.runtime.adapter import resolve
    from jobs.runtime.split_parts import clips_part, process_one  # the same parts and markers as jobs.split

    done = resolve(done)
    rows: list[pa.Table] = []
    for uri in batch.column(S.SOURCE_URI).to_pylist():
        info = process_one(uri, preset.split, out)
        part = clips_part(out, info["video_id"])
        clips = S.conform(read_columns(part), S.CLIP_SCHEMA)
        keep = pa.array([c not in done for c in clips.column(S.CLIP_ID).to_pylist()], pa.bool_())
        rows.append(clips.filter(keep))
    return pa.concat_tables(rows) if rows else S.empty_table()


def _write_scored(batch: pa.Table, out: str, h: str) -> pa.Table:
    """Phase-1 writer task: one atomic scored part, then its marker; returns its row count."""
    table = S.conform(batch.select([c for c in batch.column_names if c in S.CLIP_SCHEMA.names]))
    if not table.num_rows:
        return parts.no_counts("rows")
    parts.write_part(
        table, parts.PartSpec(layout.folder(out, layout.SCORED), out, SCORED_STAGE, h), clips=table.num_rows
    )
    return parts.counts(rows=table.num_rows)


def _kept_todo(batch: pa.Table, done: Any) -> pa.Table:
    """Phase-2 input: kept clips not yet in a finished captions part."""
    from jobs.runtime.adapter import resolve

    done = resolve(done)
    kept = pc.fill_null(batch.column(S.KEPT), False).to_pylist()
    ids = batch.column(S.CLIP_ID).to_pylist()
    table = batch.filter(pa.array([k and c not in done for k, c in zip(kept, ids)], pa.bool_()))
    return S.conform(table.select([c for c in table.column_names if c in S.CLIP_SCHEMA.names]))


def _write_outputs(batch: pa.Table, out: str, h: str, meta: dict, max_rows: int, caption_h: str) -> pa.Table:
    """Phase-2 writer task: the captions part and the latent shards of a batch, then one marker
    that carries the shard entries (sha256, rows, row-group digests): the manifest fragment."""
    if not batch.num_rows:
        return parts.no_counts("rows", "encoded")
    shards: list[dict[str, Any]] = []

    def beside(rows: pa.Table, key: str) -> dict[str, Any]:
        # jobs.encode's shard writer: the same clips give the same shard bytes on both paths
        shards.extend(parts.write_shards(rows, layout.folder(out, layout.LATENTS), key, meta, max_rows))
        captioned = rows.num_rows - rows.column(S.CAPTION).null_count
        return {
            "clips": rows.num_rows,
            "captioned": captioned,
            "encoded": sum(s["rows"] for s in shards),
            "shards": shards,
        }

    parts.write_part(
        batch,
        parts.PartSpec(layout.folder(out, layout.CAPTIONS), out, WRITE_STAGE, h),
        select=functools.partial(_caption_columns, caption_h=caption_h),
        beside=beside,
    )
    return parts.counts(rows=batch.num_rows, encoded=sum(s["rows"] for s in shards))


def _caption_columns(batch: pa.Table, caption_h: str) -> pa.Table:
    """A captions part: the clip rows without the latent columns (those go to the shards), with
    the caption stage's config hash (the encode stage has since put its own in the rows), as
    jobs.caption writes them."""
    t = S.conform(
        batch.select([c for c in batch.column_names if c in S.CLIP_SCHEMA.names]).drop_columns(
            S.columns_of(S.LATENT_GROUP)
        )
    )
    i = t.schema.get_field_index(S.CONFIG_HASH)
    return t.set_column(i, t.schema.field(i), pa.array([caption_h] * t.num_rows, t.schema.field(i).type))


_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def _stage_timings(stats: str) -> dict[str, float]:
    """Seconds per operator from Ray Data's execution stats text: the operator's total remote
    wall time (the work its tasks did), else its "produced in Xs" wall time."""
    import re

    out: dict[str, float] = {}
    for block in re.split(r"\n(?=Operator \d+ )", "\n" + stats):
        head = re.match(r"Operator \d+ ([^:]+): .*? in ([\d.]+)s", block.strip())
        if head is None:
            continue
        total = re.search(r"Remote wall time: .*?([\d.]+)(us|ms|s|min|h) total", block)
        secs = float(total.group(1)) * _UNIT_SECONDS[total.group(2)] if total else float(head.group(2))
        name = head.group(1).strip()
        out[name] = round(out.get(name, 0.0) + secs, 3)
    return out


def _actors(cfg: CurateConfig, n: int, gpus: float, cpus: float):
    from jobs.runtime.adapter import Resources

    # important: an actor step asking for the same CPUs as the task before it gets fused
    # into it by Ray Data; different CPU asks keep decoding out of the model actors.
    pin = ((cfg.model_resource, MODEL_RESOURCE_SHARE),) if cfg.model_resource else ()
    return Resources(num_cpus=cpus, num_gpus=gpus, concurrency=n, batch_size=cfg.batch_size, resources=pin)


def _drain(ds: Any, progress: Progress) -> tuple[dict[str, int], dict[str, float]]:
    """Run a plan whose last step returns per-part counts: the driver sees counts only."""
    return parts.drain(ds, progress), _stage_timings(ds.stats() if hasattr(ds, "stats") else "")


def phase1(cfg: CurateConfig, preset: Preset, todo: list[str], out: str, h: str) -> dict[str, Any]:
    """Probe, split and score every input; workers write the scored parts."""
    import ray

    from curate.scores import score, score_frames
    from jobs.runtime.adapter import Resources, clip_ids_ref, map_stage, map_task

    if preset.score.smoke:
        clip_models.build_smoke_clip(preset.score.clip_model)  # once on the driver: actors must not race
    done = clip_ids_ref(finished_parts(layout.folder(out, layout.SCORED), out, SCORED_STAGE, h))
    task = Resources(num_cpus=cfg.task_cpus, concurrency=0, batch_size=cfg.batch_size)
    ds = ray.data.from_items([{S.SOURCE_URI: u} for u in todo], override_num_blocks=max(1, len(todo)))
    ds = ds.map_batches(
        functools.partial(_split_task, preset=preset, out=str(out), done=done),
        batch_format="pyarrow",
        batch_size=1,
        num_cpus=1,
    )
    ds = map_task(ds, functools.partial(score_frames.prepare_batch, cfg=preset.score), task)
    ds = map_stage(
        ds, score.ClipScoreStage, preset.score, _actors(cfg, cfg.score_actors, cfg.score_gpus, cfg.actor_cpus)
    )
    ds = map_task(
        ds,
        functools.partial(_write_scored, out=str(out), h=h),
        Resources(num_cpus=cfg.task_cpus * 0.5, concurrency=0),
    )
    t0 = time.perf_counter()
    totals, timings = _drain(ds, Progress("split+score", None, "clips"))
    return {
        "rows_streamed": totals.get("rows", 0),
        "phase1_seconds": round(time.perf_counter() - t0, 2),
        "stage_seconds": timings,
    }


def _add_phase(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two phase-1 passes' figures as one."""
    seconds = {
        k: round(a["stage_seconds"].get(k, 0.0) + b["stage_seconds"].get(k, 0.0), 3)
        for k in {**a["stage_seconds"], **b["stage_seconds"]}
    }
    return {
        "rows_streamed": a["rows_streamed"] + b["rows_streamed"],
        "phase1_seconds": round(a["phase1_seconds"] + b["phase1_seconds"], 2),
        "stage_seconds": seconds,
    }


def decide(preset: Preset, out: str, h: str) -> dict[str, Any]:
    """Run-level decisions over the scored parts, in place; parts of other runs are removed first."""
    from jobs.runtime.filter_plan import decide_dir, funnel_report

    scored = layout.folder(out, layout.SCORED)
    finished = set(finished_parts(scored, out, SCORED_STAGE, h))
    # safe: the output's lease (jobs/runtime/lease.py) means no other run writes here
    for stale in storage.list_parts(scored):  # a part whose marker never came, or another config
        if stale not in finished:
            storage.delete(stale)
    if not finished:
        raise UsageError(f"no clips were scored in {scored!r}; check the inputs and the log")
    funnel, _ = decide_dir(scored, scored, preset.score.filters, D.NearDupConfig(), marker_root=None)
    report = funnel_report(funnel, preset.score, smoke=preset.random_models)
    write_json_atomic(report, layout.funnel_path(scored))
    return report


def errors_of(report: dict[str, Any]) -> int:
    """Error rows (status=error, from any stage) in a funnel report: its status step's drops."""
    return sum(st["dropped"] for st in report.get("steps", []) if st["step"] == "status")


def phase2(cfg: CurateConfig, preset: Preset, out: str, h2: str, meta: dict, kept: int) -> dict[str, Any]:
    """Caption and encode the kept clips only; workers write captions parts and shards."""

    from captioner.stage import CaptionStage, caption_hash
    from jobs.runtime.adapter import Resources, clip_ids_ref, map_stage, map_task, read_parts_dataset
    from jobs.runtime.clip_frames import attach_frames_once
    from latents.encode import EncodeStage
    from latents.encode import prepare_batch as encode_prepare

    finished = finished_parts(layout.folder(out, layout.CAPTIONS), out, WRITE_STAGE, h2)
    written = sum(
        read_json(marker_path(out, WRITE_STAGE, layout.key_of(p))).get("clips", 0) for p in finished
    )
    if written >= kept:  # every kept clip is in a finished part: no model needs loading
        return {"rows_phase2": 0, "phase2_seconds": 0.0, "stage_seconds": {}}
    done = clip_ids_ref(finished)
    task = Resources(num_cpus=cfg.task_cpus, concurrency=0, batch_size=cfg.batch_size)
    columns = list(S.CLIP_SCHEMA.names)  # clip_embedding included: caption_clip_score is computed from it
    ds = read_parts_dataset(storage.list_parts(layout.folder(out, layout.SCORED)), columns)
    ds = map_task(
        ds, functools.partial(_kept_todo, done=done), Resources(num_cpus=cfg.task_cpus * 0.5, concurrency=0)
    )
    # one decode per clip for both models: caption frames + encode frames (carried past captioning)
    ds = map_task(
        ds, functools.partial(attach_frames_once, caption_cfg=preset.caption, encode_cfg=preset.encode), task
    )
    ds = map_stage(
        ds,
        CaptionStage,
        preset.caption,
        _actors(cfg, cfg.caption_actors, cfg.caption_gpus, cfg.actor_cpus * 1.01),
    )
    # no decode left here: pixel columns from the frames decoded ahead, for the captioned clips
    ds = map_task(
        ds,
        functools.partial(encode_prepare, cfg=preset.encode),
        Resources(num_cpus=cfg.task_cpus * 0.5, concurrency=0, batch_size=cfg.batch_size),
    )
    ds = map_stage(
        ds,
        EncodeStage,
        preset.encode,
        _actors(cfg, cfg.encode_actors, cfg.encode_gpus, cfg.actor_cpus * 1.02),
    )
    # writer batches of up to a shard's rows, capped at WRITE_ROWS (a writer task holds its batch)
    ds = map_task(
        ds,
        functools.partial(
            _write_outputs,
            out=str(out),
            h=h2,
            meta=meta,
            max_rows=cfg.max_rows_per_shard,
            caption_h=caption_hash(preset.caption),
        ),
        Resources(
            num_cpus=cfg.task_cpus * 0.5, concurrency=0, batch_size=min(cfg.max_rows_per_shard, WRITE_ROWS)
        ),
    )
    t0 = time.perf_counter()
    totals, timings = _drain(ds, Progress("caption+encode", kept - written, "clips"))
    return {
        "rows_phase2": totals.get("rows", 0),
        "phase2_seconds": round(time.perf_counter() - t0, 2),
        "stage_seconds": timings,
    }


def finalize(out: str, h2: str, meta: dict) -> dict[str, Any]:
    """Merge the shard entries of every finished phase-2 part into the manifest (metadata only)."""
    from latents.encode import ROUNDTRIP_PSNR
    from latents.shards import merge_manifest, metric_summary

    captions = layout.folder(out, layout.CAPTIONS)
    finished = finished_parts(captions, out, WRITE_STAGE, h2)
    # safe: the output's lease (jobs/runtime/lease.py) means no other run writes here
    for stale in set(storage.list_parts(captions)) - set(finished):
        storage.delete(stale)
    shards: list[dict] = []
    captioned = 0
    for p in finished:
        info = read_json(marker_path(out, WRITE_STAGE, layout.key_of(p)))
        shards += info["shards"]
        captioned += info["captioned"]
    manifest = merge_manifest(layout.folder(out, layout.LATENTS), meta, shards)
    psnr = metric_summary(manifest, ROUNDTRIP_PSNR.lstrip("_"))
    return {
        "captioned": captioned,
        "encoded": manifest["counts"]["rows"],
        "shards": manifest["counts"]["shards"],
        "roundtrip_psnr_mean": psnr["mean"] if psnr else None,
    }  # as jobs.encode's summary


def _manifest_meta(preset: Preset) -> dict:
    from latents.encode import manifest_meta
    from latents.models_info import vae_and_text_info

    vae_info, text_info = vae_and_text_info(preset.encode)
    meta = manifest_meta(preset.encode, vae_info, text_info)
    meta["preset"] = preset.name
    meta["smoke"] = preset.random_models
    return meta


def with_options(preset: Preset, cfg: CurateConfig) -> Preset:
    """The preset with the command line's stage options (rules, split, caption, encode) applied."""
    score = (
        dataclasses.replace(preset.score, filters=cfg.filters) if cfg.filters is not None else preset.score
    )
    return dataclasses.replace(
        preset,
        score=score,
        split=cfg.split or preset.split,
        caption=dataclasses.replace(preset.caption, **dict(cfg.caption_edits)),
        encode=dataclasses.replace(preset.encode, **dict(cfg.encode_edits)),
    )


def need_of(cfg: CurateConfig) -> flags.Need:
    """All three actor pools stream at once, beside the split and decode tasks."""
    pools = [
        (cfg.score_actors, cfg.score_gpus),
        (cfg.caption_actors, cfg.caption_gpus),
        (cfg.encode_actors, cfg.encode_gpus),
    ]
    return flags.Need(
        gpus=sum(n * g for n, g in pools),
        cpus=sum(n for n, _ in pools) * cfg.actor_cpus * 1.02 + cfg.task_cpus,
        max_cpus_one=max(cfg.actor_cpus * 1.02, 1.0),
        what="curate (3 actor pools + tasks)",
    )


def main(cfg: CurateConfig) -> dict[str, Any]:
    from latents.weights import stage_weights, with_weights_dir

    preset = with_device(
        with_weights_dir(with_options(PRESETS[cfg.preset], cfg), cfg.weights_dir), cfg.device
    )
    if preset.random_models:
        print(RANDOM_MODELS_WARNING)
    skipped: list[str] = []
    inputs = [
        flags.canonical(u) for u in list_inputs(cfg.input, skipped)
    ]  # source_uri is absolute (or a URI)
    inputs = inputs[: cfg.limit] if cfg.limit else inputs
    if line := skipped_line(skipped_summary(skipped)):
        print(line)
    out = flags.canonical(cfg.output)
    check_writable(out)
    with lease.hold(out, "jobs.curate", watch=lease.stage_folders(out)):
        filters.check_config(preset.score.filters)
        from curate.weights import require

        # every model of the run, on the driver before Ray: a missing one is this exit-2 message,
        # not an actor traceback
        require(
            stage_weights(score=preset.score, caption=preset.caption, encode=preset.encode), cfg.weights_dir
        )
        h = config_hash({"preset": dataclasses.asdict(preset)})
        meta = _manifest_meta(preset)
        t0 = time.perf_counter()
        import ray

        from jobs.runtime.adapter import init_ray

        init_ray(cfg.address, quiet=not cfg.verbose, need=need_of(cfg))
        if cfg.model_resource and cfg.model_resource not in ray.cluster_resources():
            raise UsageError(
                f"--model-resource must name a custom resource of a node in the cluster, got "
                f"{cfg.model_resource!r} (cluster has {sorted(ray.cluster_resources())}); start a node "
                f"with ray start --resources '{{\"{cfg.model_resource}\": 1}}' or drop the flag"
            )
        p1 = phase1(cfg, preset, inputs, out, h)
        redo: list[str] = []
        scored_spec = parts.PartSpec(layout.folder(out, layout.SCORED), out, SCORED_STAGE, h)
        retracted = retract_replaced(out, lambda gone: redo.extend(parts.drop_holding(scored_spec, gone)))
        if redo:  # the other clips of the scored parts that held retracted ones: scored again
            p1 = _add_phase(p1, phase1(cfg, preset, redo, out, h))
        t_decide = time.perf_counter()
        report = decide(preset, out, h)
        decide_seconds = round(time.perf_counter() - t_decide, 2)
        # phase 2 depends on the decisions: on the set of scored parts (their names hash their clips)
        h2 = config_hash(
            {
                "preset": h,
                "scored": [
                    storage.basename(p) for p in storage.list_parts(layout.folder(out, layout.SCORED))
                ],
            }
        )
        p2 = phase2(cfg, preset, out, h2, meta, report["kept"])
        summary = {
            "preset": cfg.preset,
            "random_models": preset.random_models,
            "videos": len(inputs),
            **{k: v for k, v in p1.items() if k != "stage_seconds"},
            **{k: v for k, v in p2.items() if k != "stage_seconds"},
            "stage_seconds": {
                "split+score": p1["phase1_seconds"],
                "decide": decide_seconds,
                "caption+encode": p2["phase2_seconds"],
                **p1["stage_seconds"],
                **p2["stage_seconds"],
            },
            # an error row is one per failed input or clip, not a clip: counted apart
            "clips": report["clips_in"] - errors_of(report),
            "errors": errors_of(report),
            "scored": report["clips_in"],
            "kept": report["kept"],
            "clip_sets_retracted": len(retracted),
            **finalize(out, h2, meta),
        }
        summary["wall_seconds"] = round(time.perf_counter() - t0, 2)
        summary.update(skipped_summary(skipped))
        write_json_atomic(summary, layout.summary_path(out, "curate"))
        if cfg.report:
            from jobs.report import write_report_to

            summary["report"] = write_report_to(
                out,
                run_config={"curate": dataclasses.asdict(cfg), "preset": dataclasses.asdict(preset)},
                stage_timings=summary["stage_seconds"],
                preset_name=preset.name,
                random_models=preset.random_models,
            )
        return summary


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.curate", __doc__.split("\n\n")[0])
    flags.add_io(p, "directory, glob, list file or one video", "output root OUT")
    flags.add_preset(p, sorted(PRESETS))
    stage_flags.add_limit(p)
    rule_flags.add_rule_flags(p)
    stage_flags.add_split_options(p)
    stage_flags.add_caption_options(p)
    stage_flags.add_encode_options(p)
    p.add_argument(
        "--max-rows-per-shard",
        type=int,
        default=WRITE_ROWS,
        help=f"rows per latent shard at most ({WRITE_ROWS} at most: a writer batch holds its clips)",
    )
    # important: CPU-only actors ask for a quarter core each, so the decode tasks keep the cores
    flags.add_resources(
        p,
        ("score", "caption", "encode"),
        actors=1,
        gpus=0.0,
        cpus=0.25,
        cpus_help="CPUs per actor (every stage)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="clips per actor call")
    p.add_argument("--no-report", action="store_true", help="skip OUT/report/index.html")
    flags.add_device(p)
    flags.add_weights_dir(p)
    p.add_argument(
        "--model-resource",
        default=None,
        metavar="NAME",
        help="run the model actors (score, caption, encode) only on Ray nodes that have the custom "
        "resource NAME (ray start --resources '{\"NAME\": 1}')",
    )
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
    stage_flags.check_limit(a)
    flags.check_int("--max-rows-per-shard", a.max_rows_per_shard, 1)
    if a.max_rows_per_shard > WRITE_ROWS:
        raise flags.fail(
            f"--max-rows-per-shard must be <= {WRITE_ROWS} (a writer batch holds at most that many clips)",
            a.max_rows_per_shard,
            f"pass --max-rows-per-shard {WRITE_ROWS} or less",
        )
    base = PRESETS[a.preset]
    cap, enc = stage_flags.caption_config(a, base.caption), stage_flags.encode_config(a, base.encode)
    guards.check_output(flags.canonical(a.output))  # a run root: not a stage's folder, nor inside one
    guards.check_outside_input(flags.canonical(a.input), flags.canonical(a.output))
    cfg = CurateConfig(
        input=flags.canonical(a.input),
        output=flags.canonical(a.output),
        preset=a.preset,
        address=a.address,
        score_actors=a.score_actors,
        caption_actors=a.caption_actors,
        encode_actors=a.encode_actors,
        score_gpus=a.score_gpus,
        caption_gpus=a.caption_gpus,
        encode_gpus=a.encode_gpus,
        actor_cpus=a.cpus,
        batch_size=a.batch_size,
        report=not a.no_report,
        device=a.device,
        verbose=a.verbose,
        weights_dir=expand(a.weights_dir),
        model_resource=a.model_resource,
        max_rows_per_shard=a.max_rows_per_shard,
        limit=a.limit,
        filters=rule_flags.filters_from_args(a, base.score.filters),
        split=stage_flags.split_config(a, base.split),
        caption_edits=_edits(cap, base.caption),
        encode_edits=_edits(enc, base.encode),
    )
    flags.check_local(need_of(cfg), cfg.address)
    return cfg


def _edits(new: Any, old: Any) -> tuple[tuple[str, Any], ...]:
    """The fields of a stage config the options changed (a small, hashable record for CurateConfig)."""
    return tuple(
        (f.name, getattr(new, f.name))
        for f in dataclasses.fields(new)
        if getattr(new, f.name) != getattr(old, f.name)
    )


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
