"""`python -m jobs.caption --input OUT/scored --output OUT/captions`: dense captions for kept clips.

Plan (Ray Data, streaming):
    kept, not-yet-done clips, sorted by planned frame count
      -> CPU tasks: decode the uniformly sampled frames of each clip (small uint8 frames)
      -> actor pool: CaptionStage (model loaded once per actor; --concurrency, --num-gpus)
      -> driver: one atomic Parquet part per batch + a done-marker per clip_id
Decoding runs in its own tasks ahead of the actors, so the model does not wait on ffmpeg;
each actor records how long it waited between batches (OUT/_stats/caption/*.json) and the
closing summary reports that share. Sorting by frame count before blocking puts clips with
similar frame counts into the same batch.

Resumable: a rerun skips clips whose marker carries the same config hash; parts written by
another caption config are removed first (a changed config re-runs the stage).
Works with a local Ray (started on demand) and under `ray job submit` (RAY_ADDRESS set).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from captioner.stage import (
    STAGE,
    CaptionConfig,
    CaptionStage,
    attach_frames,
    caption_hash,
    planned_frames,
)
from curate.errors import UsageError
from curate.schema import (
    CLIP_ID,
    CLIP_SCHEMA,
    CONFIG_HASH,
    END_FRAME,
    KEPT,
    START_FRAME,
    STATUS,
    STATUS_ERROR,
    STATUS_OK,
    VIDEO_ID,
)
from curate.storage import (
    check_writable,
    is_done,
    mark_done,
    read_parts,
    write_json_atomic,
    write_parquet_atomic,
)
from jobs import presets

PRESETS: dict[str, CaptionConfig] = {name: p.caption for name, p in presets.PRESETS.items()}
STATS_DIR = Path("_stats") / STAGE


@dataclass(frozen=True)
class CaptionJobConfig:
    input: str
    output: str
    caption: CaptionConfig
    concurrency: int = 1  # model actors
    num_gpus: float = 0.0  # per actor
    actor_cpus: float = 1.0
    decode_cpus: float = 0.5  # per decode task; differs from actor_cpus so Ray keeps them separate
    decode_concurrency: int = 0  # 0: as many decode tasks as Ray schedules
    address: str | None = None
    num_cpus: int | None = None  # for a local Ray instance


@dataclass(frozen=True)
class _ActorCfg:
    caption: CaptionConfig
    stats_dir: str


class TimedCaptionStage(CaptionStage):
    """CaptionStage that writes its busy/wait timing after every batch (read by the summary)."""

    def __init__(self, acfg: _ActorCfg):
        super().__init__(acfg.caption)
        self.stats_path = Path(acfg.stats_dir) / f"actor-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"

    def __call__(self, table: pa.Table) -> pa.Table:
        out = super().__call__(table)
        write_json_atomic(self.stats, self.stats_path)
        return out


def _part_name(clip_ids: list[str]) -> str:
    h = hashlib.blake2b("\n".join(sorted(clip_ids)).encode(), digest_size=8).hexdigest()
    return f"part-{h}.parquet"


def _reconcile(out: Path, cfg_hash: str) -> int:
    """Drop parts of another caption config; mark clips of parts written just before a crash."""
    removed = 0
    for part in sorted(out.glob("part-*.parquet")):
        t = pq.read_table(part, columns=[CLIP_ID, CONFIG_HASH])
        hashes = set(t.column(CONFIG_HASH).to_pylist())
        if hashes != {cfg_hash}:
            part.unlink()
            removed += 1
            continue
        for cid in t.column(CLIP_ID).to_pylist():
            if not is_done(out, STAGE, cid, cfg_hash):
                mark_done(out, STAGE, cid, cfg_hash, part=part.name)
    return removed


def _model_wait(out: Path) -> dict[str, float]:
    """Model-side timing summed over actors; `steady_s` spans first batch start to last batch end."""
    busy = wait = 0.0
    calls = clips = 0
    starts, ends = [], []
    for f in (out / STATS_DIR).glob("actor-*.json"):
        s = json.loads(f.read_text())
        busy, wait, calls, clips = busy + s["busy_s"], wait + s["wait_s"], calls + s["calls"], clips + s["clips"]
        starts.append(s["first_start"])
        ends.append(s["last_end"])
    share = wait / (busy + wait) if busy + wait > 0 else 0.0
    steady = max(ends) - min(starts) if starts else 0.0
    return {"model_busy_s": busy, "model_wait_s": wait, "model_wait_share": share, "model_calls": calls,
            "steady_s": steady, "steady_clips_per_s": clips / steady if steady > 0 else 0.0}


def main(cfg: CaptionJobConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(cfg.output)
    check_writable(out)
    table = read_parts(cfg.input, CLIP_SCHEMA)
    h = caption_hash(cfg.caption)
    removed = _reconcile(out, h)
    kept_mask = pc.and_(pc.fill_null(table.column(KEPT), False), pc.equal(pc.fill_null(table.column(STATUS),
                                                                                         STATUS_OK), STATUS_OK))
    kept = table.filter(kept_mask)
    done = [is_done(out, STAGE, cid, h) for cid in kept.column(CLIP_ID).to_pylist()]
    todo = kept.filter(pa.array([not d for d in done]))
    summary: dict[str, Any] = {"input_clips": table.num_rows, "kept": kept.num_rows, "skipped_done": sum(done),
                               "stale_parts_removed": removed, "captioned": 0, "errors": 0, "config_hash": h}
    if todo.num_rows:
        # similar frame counts next to each other, so blocks (= model batches) share a frame count
        frames = [planned_frames(s, e, cfg.caption) for s, e in
                  zip(todo.column(START_FRAME).to_pylist(), todo.column(END_FRAME).to_pylist())]
        todo = todo.append_column("_planned", pa.array(frames, pa.int32()))
        todo = todo.sort_by([("_planned", "ascending"), (VIDEO_ID, "ascending"), (START_FRAME, "ascending")])
        todo = todo.drop_columns(["_planned"])
        summary.update(_run(cfg, todo, out, h))
    summary["wall_s"] = time.perf_counter() - t0
    summary["clips_per_s"] = (summary["captioned"] + summary["errors"]) / summary["wall_s"]
    return summary


def _check_resources(cfg: CaptionJobConfig) -> None:
    """important: actors asking for more than the cluster has wait forever instead of failing."""
    import ray

    res = ray.cluster_resources()
    gpus, cpus = res.get("GPU", 0.0), res.get("CPU", 0.0)
    if cfg.num_gpus > 0 and gpus < cfg.num_gpus * cfg.concurrency:
        raise UsageError(f"--num-gpus {cfg.num_gpus:g} x --concurrency {cfg.concurrency} needs that many GPUs in the "
                         f"Ray cluster, got {gpus:g}; run on GPU nodes, lower --concurrency, or pass --num-gpus 0 "
                         "(the model then runs on CPU, slowly)")
    need = cfg.actor_cpus * cfg.concurrency + cfg.decode_cpus
    if need > cpus:
        raise UsageError(f"{cfg.concurrency} model actor(s) x {cfg.actor_cpus:g} CPU + {cfg.decode_cpus:g} CPU for "
                         f"decode tasks need {need:g} CPUs, the Ray cluster has {cpus:g}; lower --concurrency")


def _run(cfg: CaptionJobConfig, todo: pa.Table, out: Path, h: str) -> dict[str, Any]:
    from jobs.adapter import Resources, init_ray, map_stage, map_task, table_dataset

    stats_dir = out / STATS_DIR
    for f in stats_dir.glob("actor-*.json"):
        f.unlink()
    init_ray(cfg.address, cfg.num_cpus)
    _check_resources(cfg)
    bs = cfg.caption.batch_size
    ds = table_dataset(todo, rows_per_block=bs)
    ds = map_task(ds, functools.partial(attach_frames, cfg=cfg.caption),
                  Resources(num_cpus=cfg.decode_cpus, concurrency=cfg.decode_concurrency))
    ds = map_stage(ds, TimedCaptionStage, _ActorCfg(cfg.caption, str(stats_dir)),
                   Resources(num_cpus=cfg.actor_cpus, num_gpus=cfg.num_gpus, concurrency=cfg.concurrency,
                             batch_size=bs))
    # the workers write the parts; the driver only sums their counts
    ds = map_task(ds, functools.partial(_write_part, out=str(out), h=h), Resources(num_cpus=0.1, concurrency=0))
    t0 = time.perf_counter()
    ok = err = 0
    for counts in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        ok += sum(counts.column("ok").to_pylist())
        err += sum(counts.column("error").to_pylist())
    return {"captioned": ok, "errors": err, "pipeline_s": time.perf_counter() - t0, **_model_wait(out)}


def _write_part(batch: pa.Table, out: str, h: str) -> pa.Table:
    """Writer task: one caption part, then its clips' markers; returns (ok, error) counts."""
    if batch.num_rows == 0:
        return pa.table({"ok": pa.array([], pa.int64()), "error": pa.array([], pa.int64())})
    ids = batch.column(CLIP_ID).to_pylist()
    name = _part_name(ids)
    write_parquet_atomic(batch, Path(out) / name)  # part first, markers after: a crash loses no marker-less work
    for cid in ids:
        mark_done(out, STAGE, cid, h, part=name)
    status = batch.column(STATUS).to_pylist()
    return pa.table({"ok": [status.count(STATUS_OK)], "error": [status.count(STATUS_ERROR)]})


def parse_args(argv: list[str] | None = None) -> CaptionJobConfig:
    p = argparse.ArgumentParser(prog="python -m jobs.caption", description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="folder of scored parts (OUT/scored)")
    p.add_argument("--output", required=True, help="folder for caption parts (OUT/captions)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--model", default=None, help="override the preset's VLM: hub id, local folder or smoke:<family>")
    p.add_argument("--concurrency", type=int, default=1, help="model actors")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per actor (default: 1 for default, 0 smoke)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per generate call")
    p.add_argument("--num-frames", type=int, default=None)
    p.add_argument("--decode-concurrency", type=int, default=0)
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local instance)")
    a = p.parse_args(argv)
    cap = PRESETS[a.preset]
    if a.model:
        cap = replace(cap, model=a.model)
    for name, v, lo in (("--batch-size", a.batch_size, 1), ("--num-frames", a.num_frames, 1),
                        ("--concurrency", a.concurrency, 1), ("--decode-concurrency", a.decode_concurrency, 0)):
        if v is not None and v < lo:
            raise UsageError(f"{name} must be >= {lo}, got {v}; pass a larger value")
    if a.num_gpus is not None and a.num_gpus < 0:
        raise UsageError(f"--num-gpus must be >= 0, got {a.num_gpus}; pass 0 for CPU or 1 per actor")
    if a.batch_size:
        cap = replace(cap, batch_size=a.batch_size)
    if a.num_frames:
        cap = replace(cap, num_frames=a.num_frames)
    num_gpus = a.num_gpus if a.num_gpus is not None else (0.0 if a.preset == "smoke" else 1.0)
    if not Path(a.input).is_dir():
        raise UsageError(f"--input must be a folder of Parquet parts, got {a.input!r} (not a folder); "
                         "run the score stage first or fix the path")
    return CaptionJobConfig(input=a.input, output=a.output, caption=cap, concurrency=a.concurrency,
                            num_gpus=num_gpus, decode_concurrency=a.decode_concurrency, address=a.address)


def cli(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        summary = main(cfg)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"caption: {summary['captioned']} captioned, {summary['errors']} errors, "
          f"{summary['skipped_done']} already done, {summary['kept']} kept of {summary['input_clips']} clips; "
          f"{summary['clips_per_s']:.2f} clips/s; model waited "
          f"{100 * summary.get('model_wait_share', 0.0):.1f}% of its time for frames -> {cfg.output}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
