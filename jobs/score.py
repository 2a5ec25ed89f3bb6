"""Score and filter clips: `python -m jobs.score --input OUT/clips --output OUT/scored`.

Ray Data plan (streaming; the workers read the clip parts, the driver lists file names):
  clip parts ─▶ tasks: ok clips not scored before (the finished set is a Ray object)
            ─▶ CPU tasks: decode each clip once, cheap scores, CLIP frames (small arrays)
            ─▶ actor pool: CLIP embeddings + aesthetic (only clips passing the cheap gate)
            ─▶ writer tasks: atomic score parts OUT/scored/_scores/part-<key>.parquet + markers
then every clip row joined with its score row by a hash shuffle on clip_id in Ray tasks
(`jobs/runtime/score_merge.py`), which write OUT/scored/part-*.parquet, and the run-level decisions
(exact/near dedup, percentile and absolute rules), distributed by `jobs/runtime/decide.py` (the code
`python -m jobs.filter` uses): every clip, kept or not, with reasons + OUT/scored/_funnel.json.
The driver holds file names, object refs and counts: O(files), not O(clips).

Resumable: a score part's marker (OUT/_done/score/<key>) carries the hash of the scoring
config (filters excluded), so a rerun skips scored clips and a changed filter only re-runs
the decision step. Works with a local Ray or under `ray job submit` (RAY_ADDRESS set).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from curate.decisions import decide as D
from curate.decisions import filters
from curate.errors import UsageError
from curate.io import layout, storage
from curate.io.storage import (
    check_writable,
    config_hash,
    is_done,
    write_json_atomic,
)
from curate.schema import (
    CLIP_EMBEDDING,
    CLIP_ID,
    STATUS,
    STATUS_OK,
)
from curate.scores import clip_models, score, score_config, score_frames
from curate.weights import expand
from jobs import guards, rule_flags
from jobs.runtime import flags, lease, presets
from jobs.runtime.parts import PartSpec, counts, drain, no_counts, write_part
from jobs.runtime.progress import Progress
from jobs.runtime.score_merge import SCORE_PART_COLUMNS, join_scores, scored_part

STAGE = "score"
DECODE_CPUS = 1.0  # per decode task
WRITE_ROWS = 512  # clips per score part (what a kill loses per writer in flight)
PRESETS = {name: preset.score for name, preset in presets.PRESETS.items()}


@dataclass(frozen=True)
class ScoreJob:
    input: str
    output: str
    score: score_config.ScoreConfig
    concurrency: int = 1  # model actors
    num_gpus: float = 0.0  # per model actor
    batch_size: int = 16  # clips per model batch
    cpu_batch: int = 4  # clips per CPU task
    actor_cpus: float = 1.0
    address: str | None = None
    part_rows: int = 50_000  # rows per output part
    verbose: bool = False


def scoring_hash(cfg: score_config.ScoreConfig) -> str:
    """What the score parts depend on: everything but the filters (re-applied on every run)."""
    return config_hash(dataclasses.replace(cfg, filters=filters.FilterConfig()))


def finished_score_parts(scores_dir: str, root: str, cfg: score_config.ScoreConfig) -> list[str]:
    """Score parts with a marker under the current scoring config, oldest first (names only)."""
    h = scoring_hash(cfg)
    parts = sorted(storage.list_parts(scores_dir), key=lambda p: (storage.mtime_ns(p), storage.basename(p)))
    return [p for p in parts if is_done(root, STAGE, layout.key_of(p), h)]


def finished_ids(paths: Sequence[str], cfg: score_config.ScoreConfig) -> frozenset[str]:
    """Runs as a Ray task: clip ids with a usable score row under the current gate.

    A clip cheap-gated out by an earlier run has no embedding; if the gate has loosened since,
    it needs the model now, so it is not finished.
    """
    finished: set[str] = set()
    cols = [CLIP_ID, CLIP_EMBEDDING, STATUS, *filters.CHEAP_COLUMNS, *filters.FRAME_COLUMNS]
    for p in paths:
        t = storage.read_table(p, columns=cols)
        has_emb = t.column(CLIP_EMBEDDING).is_valid().to_pylist()
        for r, emb in zip(t.drop_columns([CLIP_EMBEDDING]).to_pylist(), has_emb):
            if r[STATUS] != STATUS_OK or emb or filters.cpu_gate(cfg.filters, r) is not None:
                finished.add(r[CLIP_ID])
    return frozenset(finished)


def pending(batch: pa.Table, finished: Any) -> pa.Table:
    """Map task: ok clips of a block without a usable score row, once per clip_id."""
    from jobs.runtime.adapter import resolve

    done = resolve(finished)
    ids = batch.column(CLIP_ID).to_pylist()
    ok = batch.column(STATUS).to_pylist()
    seen: set[str] = set()
    keep = []
    for i, (cid, st) in enumerate(zip(ids, ok)):
        if st == STATUS_OK and cid not in done and cid not in seen:
            keep.append(i)
            seen.add(cid)
    return batch.take(pa.array(keep, pa.int64()))


def run_plan(job: ScoreJob, todo: Any, scores_dir: str, root: str, total: int | None = None) -> int:
    """Stream the pending clips (a Dataset the workers read) through CPU tasks and the model pool."""
    from jobs.runtime.adapter import Resources, map_stage, map_task

    cfg = job.score
    if cfg.smoke:
        clip_models.build_smoke_clip(cfg.clip_model)  # once on the driver, so the actors don't race
    # important: Ray Data fuses a task step into the next actor step when their remote args
    # are equal; the decode tasks then run inside the model actors, serialised behind the
    # model. A CPU-only actor asking for the same CPUs is nudged so the steps stay separate.
    actor_cpus = job.actor_cpus
    if job.num_gpus == 0 and actor_cpus == DECODE_CPUS:
        actor_cpus = DECODE_CPUS - 0.01
    ds = map_task(
        todo,
        functools.partial(score_frames.prepare_batch, cfg=cfg),
        Resources(num_cpus=DECODE_CPUS, concurrency=0, batch_size=job.cpu_batch),
    )
    ds = map_stage(
        ds,
        score.ClipScoreStage,
        cfg,
        Resources(
            num_cpus=actor_cpus, num_gpus=job.num_gpus, concurrency=job.concurrency, batch_size=job.batch_size
        ),
    )
    # the workers write the score parts; the driver only sums their row counts
    # writer batches of WRITE_ROWS: score parts of a few hundred rows, not one per model batch
    ds = map_task(
        ds,
        functools.partial(_write_scores, scores_dir=scores_dir, root=root, h=scoring_hash(cfg)),
        Resources(num_cpus=0.1, concurrency=0, batch_size=WRITE_ROWS),
    )
    return drain(ds, Progress("score", total, "clips")).get("rows", 0)


def _write_scores(batch: pa.Table, scores_dir: str, root: str, h: str) -> pa.Table:
    """Writer task: one atomic score part, then its marker."""
    if batch.num_rows == 0:
        return no_counts("rows")
    write_part(batch, PartSpec(scores_dir, root, STAGE, h), select=_score_columns)
    return counts(rows=batch.num_rows)


def _score_columns(batch: pa.Table) -> pa.Table:
    return batch.select(SCORE_PART_COLUMNS)


def main(job: ScoreJob) -> dict[str, Any]:
    import ray

    from jobs.runtime.adapter import Resources, init_ray, map_task, read_parts_dataset, row_counts
    from jobs.runtime.filter_plan import decide_dir, format_funnel, funnel_report

    filters.check_config(job.score.filters)
    score.check_weights(job.score)
    out = job.output  # a local folder or a URI: every location below goes through curate.io.storage
    root = layout.run_root(out)
    scores_dir = layout.scores_dir(out)
    check_writable(out)
    with lease.hold(out, "jobs.score", watch=[root]):  # curate/split on OUT write here too
        clip_parts = storage.list_parts(job.input)
        if not clip_parts:
            raise UsageError(
                f"--input must hold part-*.parquet clip parts, got none in {job.input}; run jobs.split first"
            )
        init_ray(address=job.address, quiet=not job.verbose, need=need_of(job))
        counts = row_counts(clip_parts)  # from the footers, read by Ray tasks: no rows
        n_clips = sum(counts)
        # the workers read the clip parts and skip clips scored before; the driver sees counts
        finished = ray.remote(finished_ids).remote(
            finished_score_parts(scores_dir, root, job.score), job.score
        )
        todo = map_task(
            read_parts_dataset(clip_parts),
            functools.partial(pending, finished=finished),
            Resources(num_cpus=0.25, concurrency=0),
        )
        n_todo = todo.count()
        print(f"score: {n_clips} clips in, {n_todo} to score, model: {score.model_label(job.score)}")
        if n_todo:
            run_plan(job, todo, scores_dir, root, n_todo)
        # every clip row with its score row, joined by clip_id in Ray tasks that write the parts
        n_parts = max(1, -(-n_clips // job.part_rows))
        outputs = [storage.join(out, f"part-{k:05d}.parquet") for k in range(n_parts)]
        join_scores(
            clip_parts,
            finished_score_parts(scores_dir, root, job.score),
            SCORE_PART_COLUMNS,
            functools.partial(scored_part, cfg_hash=config_hash(job.score)),
            outputs,
            clip_counts=counts,
        )
        for stale in set(storage.list_parts(out)) - set(outputs):  # a previous run with more parts
            storage.delete(stale)
        # run-level decisions: the distributed code `python -m jobs.filter` re-decides with, in place
        funnel, _ = decide_dir(out, out, job.score.filters, D.NearDupConfig(), marker_root=None)
        report = funnel_report(funnel, job.score, smoke=job.score.smoke, model=score.model_label(job.score))
        funnel_path = layout.funnel_path(out)
        write_json_atomic(report, funnel_path)
        print(format_funnel(report))
        print(f"funnel: {funnel_path}")
        return report


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.score", __doc__.splitlines()[0])
    flags.add_io(p, "clips directory (OUT/clips)", "scored directory (OUT/scored)")
    flags.add_preset(p, sorted(PRESETS))
    rule_flags.add_rule_flags(p)
    flags.add_resources(p, actors=1, gpus=0.0, cpus=1.0)
    p.add_argument("--batch-size", type=int, default=16, help="clips per model batch")
    p.add_argument("--cpu-batch", type=int, default=4, help="clips per decode task")
    p.add_argument("--clip-model", help="open_clip architecture, hf-hub:org/repo, or local directory")
    p.add_argument("--clip-pretrained", help="open_clip pretrained tag or weights file")
    p.add_argument("--aesthetic-head", help="aesthetic head weights: file, directory or cache name")
    flags.add_device(p)
    flags.add_weights_dir(p)
    flags.add_ray(p)
    return p


def need_of(job: ScoreJob) -> flags.Need:
    # the decode tasks need one CPU besides the actors, or the plan starves
    return flags.Need(
        gpus=job.num_gpus * job.concurrency,
        cpus=job.actor_cpus * job.concurrency + DECODE_CPUS,
        max_cpus_one=job.actor_cpus,
        what=f"score ({job.concurrency} actor(s) + decode tasks)",
    )


def config_from_args(a: argparse.Namespace) -> ScoreJob:
    """Every check that needs no Ray: flags, the input folder, this machine's GPUs and CPUs."""
    for flag, v in (("--actors", a.actors), ("--batch-size", a.batch_size), ("--cpu-batch", a.cpu_batch)):
        flags.check_int(flag, v, 1)
    flags.check_float("--gpus", a.gpus, 0, fix="pass --gpus 0 (CPU) or 1")
    flags.check_float("--cpus", a.cpus, 0, strict=True)
    flags.check_device(a.device, a.gpus)
    guards.check_input(STAGE, flags.canonical(a.input))
    guards.check_output(flags.canonical(a.output), stage=STAGE)
    cfg = PRESETS[a.preset]
    cfg = dataclasses.replace(cfg, filters=rule_flags.filters_from_args(a, cfg.filters))
    overrides = {
        k: v
        for k, v in {
            "clip_model": a.clip_model,
            "clip_pretrained": a.clip_pretrained,
            "aesthetic_head": a.aesthetic_head,
            "weights_dir": expand(a.weights_dir),
        }.items()
        if v
    }
    if a.device != "auto":
        overrides["device"] = a.device
    elif a.gpus > 0:
        overrides["device"] = "cuda"
    job = ScoreJob(
        input=flags.canonical(a.input),
        output=flags.canonical(a.output),
        score=dataclasses.replace(cfg, **overrides),
        concurrency=a.actors,
        num_gpus=a.gpus,
        batch_size=a.batch_size,
        cpu_batch=a.cpu_batch,
        actor_cpus=a.cpus,
        address=a.address,
        verbose=a.verbose,
    )
    flags.check_local(need_of(job), job.address)
    return job


def parse_args(argv: Sequence[str] | None = None) -> ScoreJob:
    return config_from_args(build_parser().parse_args(argv))


def cli(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return flags.run_cli(lambda: main(config_from_args(args)) and 0)


if __name__ == "__main__":
    sys.exit(cli())
