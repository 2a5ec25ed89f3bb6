"""`python -m jobs.caption --input OUT/scored --output OUT/captions`: dense captions for kept clips.

Plan (Ray Data, streaming; the workers read the scored parts, the driver lists file names):
    scored parts -> tasks: kept clips not captioned yet (the finished set is a Ray object),
                    sorted by planned frame count within each block
      -> CPU tasks: decode the uniformly sampled frames of each clip (small uint8 frames)
      -> actor pool: CaptionStage (model loaded once per actor; --actors, --gpus)
      -> writer tasks: one atomic Parquet part per batch, then its marker
Decoding runs in its own tasks ahead of the actors, so the model does not wait on ffmpeg;
each actor records how long it waited between batches (OUT/_stats/caption/*.json) and the
closing summary reports that share. Sorting by frame count puts clips with similar frame
counts into the same batch. The driver holds O(files), never clip rows.

Resumable: a rerun skips the clips of parts whose marker carries the same config hash; parts
without a marker (a crash) or of another caption config are removed first and redone.
Works with a local Ray (started on demand) and under `ray job submit` (RAY_ADDRESS set).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from captioner.engine import EngineUnavailable
from captioner.stage import (
    STAGE,
    CaptionConfig,
    CaptionStage,
    attach_frames,
    caption_hash,
    planned_frames,
    resolve_engine,
)
from curate.errors import UsageError
from curate.io import layout, storage
from curate.io.storage import (
    check_writable,
    write_json_atomic,
)
from curate.schema import (
    CLIP_ID,
    CLIP_SCHEMA,
    END_FRAME,
    KEPT,
    START_FRAME,
    STATUS,
    STATUS_ERROR,
    STATUS_OK,
)
from curate.weights import expand, require
from jobs import guards
from jobs.runtime import flags, lease, parts, presets
from jobs.runtime.current import check_parts, wanted_ref
from jobs.runtime.progress import Progress
from latents.weights import stage_weights

PRESETS: dict[str, CaptionConfig] = {name: p.caption for name, p in presets.PRESETS.items()}
WRITE_ROWS = 256  # captions per part (what a kill loses per writer in flight)
# actor counters -> the summary's caption_usage (tokens as the engine reported them; retries: HTTP retries)
USAGE_KEYS = {
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "requests": "requests",
    "http_retries": "retries",
    "http_failed": "failed_requests",
    "engine_s": "seconds",
}


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
    verbose: bool = False


@dataclass(frozen=True)
class _ActorCfg:
    caption: CaptionConfig
    stats_dir: str


class TimedCaptionStage(CaptionStage):
    """CaptionStage that writes its busy/wait timing after every batch (read by the summary)."""

    def __init__(self, acfg: _ActorCfg):
        super().__init__(acfg.caption)
        self.stats_path = storage.join(acfg.stats_dir, f"actor-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")

    def __call__(self, table: pa.Table) -> pa.Table:
        out = super().__call__(table)
        write_json_atomic(self.stats, self.stats_path)
        return out


def finished_parts(out: str, cfg_hash: str) -> list[str]:
    """Caption parts with a marker under this config; every other part is removed.

    A part without its marker (a crash between the two writes) or from another caption
    config is deleted, and its clips are captioned again: O(files), no rows read.
    """
    return parts.finished(_spec(out, cfg_hash), remove_others=True)


def _spec(out: str, h: str) -> parts.PartSpec:
    return parts.PartSpec(out, layout.run_root(out), STAGE, h)


def _stats_files(out: str) -> list[str]:
    return [
        f
        for f in storage.list_files(layout.stats_dir(layout.run_root(out), STAGE), ".json")
        if storage.basename(f).startswith("actor-")
    ]


def _model_wait(out: str) -> dict[str, float]:
    """Model-side timing summed over actors; `steady_s` spans first batch start to last batch end."""
    busy = wait = 0.0
    calls = clips = 0
    starts, ends = [], []
    usage = dict.fromkeys(USAGE_KEYS.values(), 0.0)
    for f in _stats_files(out):
        s = storage.read_json(f)
        busy, wait, calls, clips = (
            busy + s["busy_s"],
            wait + s["wait_s"],
            calls + s["calls"],
            clips + s["clips"],
        )
        for k, name in USAGE_KEYS.items():
            usage[name] += s.get(k, 0)
        starts.append(s["first_start"])
        ends.append(s["last_end"])
    share = wait / (busy + wait) if busy + wait > 0 else 0.0
    steady = max(ends) - min(starts) if starts else 0.0
    return {
        "model_busy_s": busy,
        "model_wait_s": wait,
        "model_wait_share": share,
        "model_calls": calls,
        "steady_s": steady,
        "steady_clips_per_s": clips / steady if steady > 0 else 0.0,
        "caption_usage": {k: round(v, 2) if k == "seconds" else int(v) for k, v in usage.items()},
    }


def main(cfg: CaptionJobConfig) -> dict[str, Any]:
    from jobs.runtime.adapter import clip_ids_ref, init_ray, read_parts_dataset

    t0 = time.perf_counter()
    # important: on the driver, before Ray: missing weights must not surface as an actor traceback
    require(stage_weights(caption=cfg.caption), cfg.caption.weights_dir)
    cfg = replace(
        cfg, caption=resolve_engine(cfg.caption)
    )  # engine openai: probe the server, before any actor
    out = cfg.output  # a local folder or a URI: every location below goes through curate.io.storage
    check_writable(out)
    with lease.hold(out, "jobs.caption", watch=[layout.run_root(out)]):  # curate on OUT writes here too
        inputs = storage.list_parts(cfg.input)
        if not inputs:
            raise UsageError(
                f"--input must hold part-*.parquet scored parts, got none in {cfg.input}; "
                "run jobs.score first"
            )
        h = caption_hash(cfg.caption)
        finished = finished_parts(out, h)
        init_ray(cfg.address, cfg.num_cpus, quiet=not cfg.verbose, need=need_of(cfg))
        # decisions propagate: captions of clips no longer kept leave the finished parts first
        finished = supersede(finished, wanted_ref(inputs, [KEPT, STATUS], _kept), out, h)
        # the workers read the scored parts and pick the kept clips not captioned yet; the driver
        # holds file names, the finished set's object ref and counts
        done = clip_ids_ref(finished)
        columns = list(CLIP_SCHEMA.names)  # clip_embedding included: caption_clip_score is computed from it
        todo = read_parts_dataset(inputs, columns).map_batches(
            functools.partial(_todo, done=done, cfg=cfg.caption),
            batch_format="pyarrow",
            batch_size=None,
            num_cpus=0.25,
        )
        counts = _count(read_parts_dataset(inputs, [CLIP_ID, KEPT, STATUS]), done)
        summary: dict[str, Any] = {
            "input_clips": counts["rows"],
            "kept": counts["kept"],
            "skipped_done": counts["done"],
            "captioned": 0,
            "errors": 0,
            "config_hash": h,
        }
        if counts["kept"] > counts["done"]:
            summary.update(_run(cfg, todo, out, h, counts["kept"] - counts["done"]))
        elif (
            not counts["kept"] and not finished
        ):  # 0 kept: one empty part, so encode writes an empty manifest
            _write(CLIP_SCHEMA.empty_table(), out, h)
        summary["wall_s"] = time.perf_counter() - t0
        summary["clips_per_s"] = (summary["captioned"] + summary["errors"]) / summary["wall_s"]
        return summary


def supersede(finished: list[str], wanted: Any, out: str, h: str) -> list[str]:
    """The finished parts after a re-decision: a part holding clips no longer kept is rewritten
    without them by a Ray task (no model runs); the driver gets back part names only."""
    from jobs.runtime.adapter import run_tasks

    stale = [p for p, ok in zip(finished, check_parts(finished, wanted)) if not ok]
    kept = [p for p in finished if p not in set(stale)]
    return sorted(kept + [p for p in run_tasks(_rewrite_part, stale, wanted, out, h, num_cpus=0.25) if p])


def _rewrite_part(part: str, wanted: Any, out: str, h: str) -> str | None:
    """Ray task: `part` without the clips no longer wanted (None: none is left)."""
    from jobs.runtime.adapter import resolve

    ids = resolve(wanted)
    t = storage.read_table(part)
    rest = t.filter(pa.array([c in ids for c in t.column(CLIP_ID).to_pylist()], pa.bool_()))
    # important: the old marker first; a kill after it leaves an unmarked part the next run removes
    storage.delete(storage.marker_path(layout.run_root(out), STAGE, layout.key_of(part)))
    new = _write(rest, out, h) if rest.num_rows else None
    storage.delete(part)
    return new


def _kept(batch: pa.Table) -> pa.Array:
    return pc.and_(
        pc.fill_null(batch.column(KEPT), False),
        pc.equal(pc.fill_null(batch.column(STATUS), STATUS_OK), STATUS_OK),
    )


def _todo(batch: pa.Table, done: Any, cfg: CaptionConfig) -> pa.Table:
    """Map task: the kept clips of a block not captioned yet, sorted by planned frame count.

    Similar frame counts next to each other, so model batches share a frame count, then clip
    ids; the sort is per block (a global sort would be a barrier across the whole run).
    """
    from jobs.runtime.adapter import resolve

    ids = resolve(done)
    todo = batch.filter(_kept(batch))
    todo = todo.filter(pa.array([c not in ids for c in todo.column(CLIP_ID).to_pylist()], pa.bool_()))
    frames = [
        planned_frames(s, e, cfg)
        for s, e in zip(todo.column(START_FRAME).to_pylist(), todo.column(END_FRAME).to_pylist())
    ]
    todo = todo.append_column("_planned", pa.array(frames, pa.int32()))
    todo = todo.sort_by([("_planned", "ascending"), (CLIP_ID, "ascending")])  # batches by clip id (issue 26)
    return todo.drop_columns(["_planned"])


def _count(ds: Any, done: Any) -> dict[str, int]:
    """Rows, kept clips and kept clips already captioned, counted by the workers."""

    def count(batch: pa.Table) -> pa.Table:
        from jobs.runtime.adapter import resolve

        ids = resolve(done)
        kept = batch.filter(_kept(batch)).column(CLIP_ID).to_pylist()
        return pa.table(
            {"rows": [batch.num_rows], "kept": [len(kept)], "done": [sum(c in ids for c in kept)]}
        )

    totals = {"rows": 0, "kept": 0, "done": 0}
    for b in ds.map_batches(count, batch_format="pyarrow", batch_size=None, num_cpus=0.25).iter_batches(
        batch_format="pyarrow", batch_size=None
    ):
        for k in totals:
            totals[k] += int(pc.sum(b.column(k)).as_py() or 0)
    return totals


def need_of(cfg: CaptionJobConfig) -> flags.Need:
    """important: actors asking for more than the cluster has wait forever instead of failing."""
    return flags.Need(
        gpus=cfg.num_gpus * cfg.concurrency,
        cpus=cfg.actor_cpus * cfg.concurrency + cfg.decode_cpus,
        max_cpus_one=cfg.actor_cpus,
        what=f"caption ({cfg.concurrency} actor(s) + decode tasks)",
    )


def _run(cfg: CaptionJobConfig, todo: Any, out: str, h: str, todo_count: int | None = None) -> dict[str, Any]:
    from jobs.runtime.adapter import Resources, map_stage, map_task

    stats_dir = layout.stats_dir(layout.run_root(out), STAGE)
    for f in _stats_files(out):
        storage.delete(f)
    bs = cfg.caption.batch_size
    ds = map_task(
        todo,
        functools.partial(attach_frames, cfg=cfg.caption),
        Resources(num_cpus=cfg.decode_cpus, concurrency=cfg.decode_concurrency, batch_size=bs),
    )
    ds = map_stage(
        ds,
        TimedCaptionStage,
        _ActorCfg(cfg.caption, stats_dir),
        Resources(num_cpus=cfg.actor_cpus, num_gpus=cfg.num_gpus, concurrency=cfg.concurrency, batch_size=bs),
    )
    # the workers write the parts; the driver only sums their counts
    # writer batches of WRITE_ROWS: parts of a few hundred captions, not one per model batch
    ds = map_task(
        ds,
        functools.partial(_write_part, out=out, h=h),
        Resources(num_cpus=0.1, concurrency=0, batch_size=WRITE_ROWS),
    )
    t0 = time.perf_counter()
    n = parts.drain(ds, Progress("caption", todo_count, "clips"), counted=("ok", "error"))
    return {
        "captioned": n.get("ok", 0),
        "errors": n.get("error", 0),
        "pipeline_s": time.perf_counter() - t0,
        **_model_wait(out),
    }


def _write(batch: pa.Table, out: str, h: str) -> str:
    """One caption part, then its marker; returns the part's path."""
    return layout.part_path(out, parts.write_part(batch, _spec(out, h)))


def _write_part(batch: pa.Table, out: str, h: str) -> pa.Table:
    """Writer task: one caption part, then its marker; returns (ok, error) counts."""
    if batch.num_rows == 0:
        return parts.no_counts("ok", "error")
    _write(batch, out, h)
    status = batch.column(STATUS).to_pylist()
    return parts.counts(ok=status.count(STATUS_OK), error=status.count(STATUS_ERROR))


def engine_unavailable(e: BaseException) -> str | None:
    """The EngineUnavailable message inside a Ray task failure, if that is what stopped the run."""
    seen: BaseException | None = e
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, EngineUnavailable):
            return str(seen)
        seen = getattr(seen, "cause", None) or seen.__cause__
    text = str(e)
    if "EngineUnavailable" in text:
        return next(
            ln.split("EngineUnavailable: ", 1)[1] for ln in text.splitlines() if "EngineUnavailable: " in ln
        )
    return None


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.caption", __doc__.split("\n")[0])
    flags.add_io(p, "folder of scored parts (OUT/scored)", "folder for caption parts (OUT/captions)")
    flags.add_preset(p, sorted(PRESETS))
    flags.add_resources(p, actors=1, gpus=0.0, cpus=1.0)
    p.add_argument(
        "--batch-size", type=int, default=None, help="clips per generate call (default: the preset's)"
    )
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the preset's)")
    p.add_argument("--decode-concurrency", type=int, default=0, help="max decode tasks (0: Ray decides)")
    flags.add_caption_engine(p, model_flag=True)
    flags.add_device(p)
    flags.add_weights_dir(p)
    flags.add_ray(p)
    return p


def config_from_args(a: argparse.Namespace) -> CaptionJobConfig:
    """Every check that needs no Ray: flags, the input folder, this machine's GPUs and CPUs."""
    for flag, v, lo in (
        ("--batch-size", a.batch_size, 1),
        ("--num-frames", a.num_frames, 1),
        ("--actors", a.actors, 1),
        ("--decode-concurrency", a.decode_concurrency, 0),
    ):
        if v is not None:
            flags.check_int(flag, v, lo)
    flags.check_float("--gpus", a.gpus, 0, fix="pass --gpus 0 (CPU) or 1 per actor")
    flags.check_float("--cpus", a.cpus, 0, strict=True)
    flags.check_device(a.device, a.gpus)
    guards.check_input("caption", flags.canonical(a.input))  # what it holds, not its name
    guards.check_output(flags.canonical(a.output), stage="caption")
    cap = flags.caption_engine_config(a, replace(PRESETS[a.preset], weights_dir=expand(a.weights_dir)))
    if a.batch_size:
        cap = replace(cap, batch_size=a.batch_size)
    elif cap.engine == "openai":  # an actor keeps at most a batch in flight
        cap = replace(cap, batch_size=max(cap.batch_size, cap.openai.max_in_flight))
    if a.num_frames:
        cap = replace(cap, num_frames=a.num_frames)
    if a.device != "auto":
        cap = replace(cap, device=a.device)
    cfg = CaptionJobConfig(
        input=flags.canonical(a.input),
        output=flags.canonical(a.output),
        caption=cap,
        concurrency=a.actors,
        num_gpus=a.gpus,
        actor_cpus=a.cpus,
        decode_concurrency=a.decode_concurrency,
        address=a.address,
        verbose=a.verbose,
    )
    flags.check_local(need_of(cfg), cfg.address)
    return cfg


def parse_args(argv: list[str] | None = None) -> CaptionJobConfig:
    return config_from_args(build_parser().parse_args(argv))


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = config_from_args(args)
        try:
            summary = main(cfg)
        except Exception as e:  # the caption server went away mid-run: one line, exit 1, a rerun resumes
            line = engine_unavailable(e)
            if line is None:
                raise
            sys.stderr.write(f"error: {line}\n")
            return 1
        if not summary["kept"]:
            print(
                "caption: no clip is kept in --input; the captions hold 0 rows (encode then writes an empty "
                "manifest); re-decide with jobs.filter --rule ... to keep some"
            )
        print(
            f"caption: {summary['captioned']} captioned, {summary['errors']} errors, "
            f"{summary['skipped_done']} already done, "
            f"{summary['kept']} kept of {summary['input_clips']} clips; "
            f"{summary['clips_per_s']:.2f} clips/s; model waited "
            f"{100 * summary.get('model_wait_share', 0.0):.1f}% of its time for frames -> {cfg.output}"
        )
        return 0

    return flags.run_cli(body)


if __name__ == "__main__":
    sys.exit(cli())
