"""Re-decide from stored scores: `python -m jobs.filter --input OUT/scored --output OUT/filtered`.

Reads the scored parts (every clip, with its scores and embedding), applies the preset's
filter cascade with the same distributed code `jobs.score` and `jobs.curate` use
(`jobs/runtime/decide.py`), and writes one decided part per input part plus `_funnel.json`. No
model runs: a changed threshold costs a pass over the scores.

Resumable: each written part has its marker (OUT/_done/filter/<part>) carrying a hash of
the filters and of the input parts; a rerun decides again (deterministic) and writes only
the parts without a matching marker.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from curate.decisions import decide as D
from curate.decisions import filters
from curate.io import layout, storage
from curate.io.storage import check_writable, is_done, read_json, write_json_atomic
from curate.scores import score_config
from jobs import guards, rule_flags
from jobs.runtime import flags, lease
from jobs.runtime.filter_plan import (
    STAGE,
    decide_dir,
    format_funnel,
    funnel_report,
    inputs_hash,
    part_name,
    scored_parts,
)

# the presets' filters, without importing the model stages (torch) into this driver
PRESET_FILTERS = {"smoke": score_config.SMOKE.filters, "default": score_config.DEFAULT.filters}


@dataclass(frozen=True)
class FilterJob:
    input: str
    output: str
    filters: filters.FilterConfig = filters.DEFAULT
    near: D.NearDupConfig = dataclasses.field(default_factory=D.NearDupConfig)
    address: str | None = None
    num_cpus: int | None = None  # local Ray instance only
    smoke: bool = False  # the scores came from random models (the input's _funnel.json says so)


def main(job: FilterJob) -> dict[str, Any]:
    filters.check_config(job.filters)
    src, dst = job.input, job.output
    parts = scored_parts(src)
    check_writable(dst)
    root = layout.run_root(dst)
    with lease.hold(dst, "jobs.filter", watch=[root, *([src] if src != dst else [])]):
        h = inputs_hash(parts, job.filters, job.near)
        funnel_path = layout.funnel_path(dst)
        if storage.exists(funnel_path) and all(is_done(root, STAGE, part_name(p), h) for p in parts):
            print(f"filter: {len(parts)} parts already decided under this config; nothing to do")
            return read_json(funnel_path)
        from jobs.runtime.adapter import init_ray

        init_ray(job.address, num_cpus=job.num_cpus)
        funnel, n = decide_dir(src, dst, job.filters, job.near, root)
        report = funnel_report(funnel, job.filters, smoke=job.smoke)
        write_json_atomic(report, funnel_path)
        print(format_funnel(report))
        print(f"filter: {n} parts -> {dst}")
        return report


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.filter", __doc__.splitlines()[0])
    flags.add_io(p, "scored directory (OUT/scored)", "decided directory (e.g. OUT/filtered)")
    flags.add_preset(p, sorted(PRESET_FILTERS))
    rule_flags.add_rule_flags(p)
    p.add_argument(
        "--cluster-rows",
        type=int,
        default=D.NearDupConfig.cluster_rows,
        help="target clips per near-duplicate cluster (bigger: closer to exact greedy, slower)",
    )
    p.add_argument(
        "--border-margin",
        type=flags.float_or_inf,
        default=D.NearDupConfig.border_margin,
        help="border pass: kept clips within this many pair bounds of their second-nearest cluster "
        "are compared there too (0: no border pass; inf: every kept clip)",
    )
    flags.add_ray(p)
    return p


def config_from_args(a: argparse.Namespace) -> FilterJob:
    """Every check that needs no Ray."""
    flags.check_int("--cluster-rows", a.cluster_rows, 1, "e.g. --cluster-rows 2000")
    flags.check_float("--border-margin", a.border_margin, 0, fix="pass --border-margin 1 (the default)")
    cfg = rule_flags.filters_from_args(a, PRESET_FILTERS[a.preset])
    src, dst = flags.canonical(a.input), flags.canonical(a.output)
    guards.check_input(STAGE, src)
    guards.check_output(dst, stage=STAGE, same_as=src)
    smoke = scores_are_smoke(src)
    if smoke and a.preset == "default" and not rule_flags.edited(a):
        raise flags.fail(
            "--preset default has thresholds for real-model scores; these scores come from the smoke "
            "preset's random models",
            f"{src!r} (its _funnel.json says smoke)",
            "pass --preset smoke, give your own --rule/--filters, or score with jobs.score --preset default",
        )
    flags.quiet_logs(a.verbose)
    return FilterJob(
        input=src,
        output=dst,
        filters=cfg,
        near=D.NearDupConfig(cluster_rows=a.cluster_rows, border_margin=a.border_margin or None),
        address=a.address,
        smoke=smoke,
    )


def scores_are_smoke(src: str) -> bool:
    """Whether the input's scores came from random models, as the stage that scored them recorded."""
    try:
        return bool(read_json(storage.join(src, "_funnel.json")).get("smoke", False))
    except (OSError, ValueError, AttributeError):
        return False  # no funnel beside the parts: nothing says so


def parse_args(argv: Sequence[str] | None = None) -> FilterJob:
    return config_from_args(build_parser().parse_args(argv))


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return flags.run_cli(lambda: main(config_from_args(args)) and 0)


if __name__ == "__main__":
    sys.exit(cli())
