"""`python -m jobs.split --input DIR|GLOB|LISTFILE --output OUT`: probe + split as a Ray Data plan.

Writes OUT/videos/part-<source key>.parquet (one row per input, unreadable ones included),
OUT/clips/part-<video_id>.parquet (the clip records, or one error row) and the
completion marker OUT/_done/split/<video_id>. A rerun skips inputs whose content is done
under the same config, so a killed run resumes without duplicates or gaps.

Locally, a Ray instance is started on 127.0.0.1; with RAY_ADDRESS (or under
`ray job submit`) the same command runs on the cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from curate import schema as S
from curate.errors import error_key
from curate.io import layout
from curate.io.storage import (
    check_writable,
    config_hash,
    list_files,
    read_table,
    write_json_atomic,
)
from curate.shots.split import SplitConfig
from jobs import guards, stage_flags
from jobs.runtime import flags, lease
from jobs.runtime.inputs import list_inputs, skipped_line, skipped_summary
from jobs.runtime.progress import Progress
from jobs.runtime.split_parts import process_one, retract_replaced

SUMMARY_SCHEMA = pa.schema(
    [
        ("source_uri", pa.string()),
        ("video_id", pa.string()),
        ("status", pa.string()),
        ("failed_stage", pa.string()),
        ("error", pa.string()),
        ("num_clips", pa.int64()),
        ("skipped", pa.bool_()),
        ("seconds", pa.float64()),
    ]
)


@dataclass(frozen=True)
class SplitJobConfig:
    input: str
    output: str
    split: SplitConfig = field(default_factory=SplitConfig)
    address: str | None = None
    num_cpus: float = 1.0  # per video task
    concurrency: int = 0  # max parallel video tasks (0: as many as CPUs allow)
    verbose: bool = False
    limit: int | None = None  # only the first N inputs (a trial run)


def _task(cfg: SplitConfig, out: str):
    def run(batch: pa.Table) -> pa.Table:
        rows = [process_one(uri, cfg, out) for uri in batch.column(S.SOURCE_URI).to_pylist()]
        return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)

    return run


def clips_in_output(out: str) -> tuple[int, float]:
    """(ok clips, their seconds) over OUT/clips, folded part by part on three columns: the
    driver holds one part, never the run's clips (O(clips) time, O(one part) memory)."""
    n, seconds = 0, 0.0
    for part in list_files(layout.folder(out, layout.CLIPS), layout.SUFFIX):
        t = read_table(part, columns=[S.STATUS, S.START_PTS, S.END_PTS])
        ok = t.filter(pc.equal(t.column(S.STATUS), S.STATUS_OK))
        n += ok.num_rows
        seconds += float(pc.sum(pc.subtract(ok.column(S.END_PTS), ok.column(S.START_PTS))).as_py() or 0.0)
    return n, seconds


def summarize(rows: list[dict], out: str, wall: float) -> dict:
    """The run's summary: `rows` are this run's per-video results (one small dict per input), the
    clip totals are folded from OUT/clips (`clips_in_output`)."""
    clips, clip_seconds = clips_in_output(out)
    errors = Counter(
        f"{r['failed_stage']}: {error_key(r['error'])}" for r in rows if r["status"] == S.STATUS_ERROR
    )
    return {
        "videos": len(rows),
        "videos_ok": sum(r["status"] == S.STATUS_OK for r in rows),
        "videos_skipped_already_done": sum(bool(r["skipped"]) for r in rows),
        "videos_error": sum(r["status"] == S.STATUS_ERROR for r in rows),
        "clips_total_in_output": clips,
        "clips_this_run": sum(r["num_clips"] or 0 for r in rows),
        "clip_seconds_total": clip_seconds,
        "errors_by_reason": dict(errors.most_common()),
        "wall_seconds": round(wall, 2),
    }


def main(cfg: SplitJobConfig) -> dict:
    import ray

    from jobs.runtime.adapter import init_ray

    skipped: list[str] = []
    inputs = [
        flags.canonical(u) for u in list_inputs(cfg.input, skipped)
    ]  # source_uri is absolute (or a URI)
    inputs = inputs[: cfg.limit] if cfg.limit else inputs
    check_writable(cfg.output)
    with lease.hold(cfg.output, "jobs.split", watch=lease.stage_folders(cfg.output)):
        t0 = time.perf_counter()
        init_ray(cfg.address, quiet=not cfg.verbose, need=need_of(cfg))
        ds = ray.data.from_items([{S.SOURCE_URI: u} for u in inputs], override_num_blocks=max(1, len(inputs)))
        kwargs = {"compute": ray.data.TaskPoolStrategy(size=cfg.concurrency)} if cfg.concurrency else {}
        ds = ds.map_batches(
            _task(cfg.split, cfg.output),
            batch_format="pyarrow",
            batch_size=1,
            num_cpus=cfg.num_cpus,
            **kwargs,
        )
        rows: list[dict] = []
        progress = Progress("split", len(inputs), "videos")
        for batch in ds.iter_batches(batch_size=1, batch_format="pyarrow"):
            rows.extend(batch.to_pylist())
            progress.add(batch.num_rows)
        progress.close()
        retracted = retract_replaced(cfg.output)  # after every input: another may name the same content
        summary = summarize(rows, cfg.output, time.perf_counter() - t0)
        summary["clip_sets_retracted"] = len(retracted)
        summary["config"] = asdict(cfg.split)
        summary["config_hash"] = config_hash(cfg.split)
        summary.update(skipped_summary(skipped))
        write_json_atomic(summary, layout.summary_path(cfg.output, "split"))
        return summary


def print_summary(summary: dict) -> None:
    print(
        f"split: {summary['videos']} videos ({summary['videos_ok']} ok, {summary['videos_error']} error, "
        f"{summary['videos_skipped_already_done']} already done) -> {summary['clips_total_in_output']} clips "
        f"({summary['clip_seconds_total']:.1f} s) in {summary['wall_seconds']:.1f} s"
    )
    for reason, n in summary["errors_by_reason"].items():
        print(f"  error x{n}: {reason}")
    if line := skipped_line(summary):
        print(f"  {line}")
    if n := summary.get("clip_sets_retracted"):
        print(f"  {n} clip set(s) retracted: their sources now hold other content, and no source names them")


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.split", __doc__.split("\n\n")[0])
    flags.add_io(
        p, "directory, glob, list file (.txt) or one video", "output root OUT (videos/, clips/, _done/)"
    )
    stage_flags.add_split_options(p)
    stage_flags.add_limit(p)
    flags.add_resources(
        p,
        actors=0,
        gpus=None,
        cpus=1.0,
        actors_help="max parallel video tasks (0: Ray decides)",
        cpus_help="CPUs per video task",
    )
    flags.add_ray(p)
    return p


def config_from_args(args: argparse.Namespace) -> SplitJobConfig:
    """Every check that needs no Ray: flags, input paths, the output folder, this machine's CPUs."""
    flags.check_int("--actors", args.actors, 0, "pass --actors 0 to let Ray decide")
    flags.check_float("--cpus", args.cpus, 0, strict=True, fix="pass --cpus 1")
    stage_flags.check_limit(args)
    split = stage_flags.split_config(args)
    cfg = SplitJobConfig(
        input=flags.canonical(args.input),
        output=flags.canonical(args.output),
        split=split,
        address=args.address,
        num_cpus=args.cpus,
        concurrency=args.actors,
        verbose=args.verbose,
        limit=args.limit,
    )
    guards.check_output(cfg.output)  # a run root: not a stage's folder, nor inside one
    guards.check_outside_input(cfg.input, cfg.output)
    flags.check_local(need_of(cfg), cfg.address)
    return cfg


def need_of(cfg: SplitJobConfig) -> flags.Need:
    # tasks beyond the free CPUs just queue; only one task larger than the machine never starts
    return flags.Need(max_cpus_one=cfg.num_cpus, what="split")


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = config_from_args(args)
        summary = main(cfg)
        print_summary(summary)
        print(json.dumps({"summary": layout.summary_path(cfg.output, "split")}))
        return 0

    return flags.run_cli(body)


if __name__ == "__main__":
    sys.exit(cli())
