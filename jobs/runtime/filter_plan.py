"""The decide step as every job runs it: which scored parts, their resume key, the funnel.

`jobs.filter`, `jobs.score` (its decision step) and `jobs.curate` call `decide_dir`; the Ray
tasks themselves are in `jobs/runtime/decide.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from curate.decisions import decide as D
from curate.decisions import filters
from curate.errors import UsageError
from curate.io import storage
from curate.io.storage import config_hash

STAGE = "filter"


def scored_parts(directory: str) -> list[str]:
    """The scored parts (part-*.parquet) of a folder or prefix, local or object storage."""
    parts = storage.list_parts(directory)
    if not parts:
        raise UsageError(
            f"--input must hold scored parts (part-*.parquet), found none in {str(directory)!r}; "
            "run python -m jobs.score (or jobs.curate) first"
        )
    return parts


def part_name(part: str) -> str:
    return storage.basename(part).removesuffix(".parquet")


def inputs_hash(parts: Sequence[str], cfg: filters.FilterConfig, near: D.NearDupConfig) -> str:
    """Decisions depend on the filters and on every input part (any changed part changes all)."""
    files = [(storage.basename(p), storage.file_size(p)) for p in parts]
    return config_hash(
        {"filters": dataclasses.asdict(cfg), "near": dataclasses.asdict(near), "inputs": files}
    )


def funnel_report(
    funnel: list[dict[str, Any]], cfg: Any, smoke: bool, model: str | None = None
) -> dict[str, Any]:
    """OUT/scored/_funnel.json: clips in and out of each decision step; `cfg` is what decided them
    (the filters, or the whole score config when the score job decided), hashed."""
    clips = funnel[0]["in"] if funnel else 0
    kept = funnel[-1]["out"] if funnel else 0
    report = {"clips_in": clips, "steps": funnel, "kept": kept, "dropped": clips - kept}
    if model is not None:
        report["model"] = model
    return {**report, "smoke": smoke, "config_hash": config_hash(cfg)}


def format_funnel(report: dict[str, Any]) -> str:
    lines = [f"{'step':<36}{'in':>8}{'dropped':>9}{'out':>8}"]
    for s in report["steps"]:
        lines.append(f"{s['step'][:35]:<36}{s['in']:>8}{s['dropped']:>9}{s['out']:>8}")
    lines.append(
        f"clips in {report['clips_in']}, kept {report['kept']}, dropped {report['dropped']}"
        + ("  [SMOKE: random model, scores meaningless]" if report["smoke"] else "")
    )
    return "\n".join(lines)


def decide_dir(
    src: str,
    dst: str,
    cfg: filters.FilterConfig,
    near: D.NearDupConfig,
    marker_root: str | None,
    stage: str = STAGE,
) -> tuple[list[dict[str, Any]], int]:
    """Decide every part of `src` into `dst` (may be the same folder); Ray must be initialised.

    Returns (funnel, parts written). With `marker_root`, each written part gets its marker.
    """
    from jobs.runtime.decide import decide_parts

    src, dst = str(src), str(dst)
    parts = scored_parts(src)
    h = inputs_hash(parts, cfg, near)
    markers = [(marker_root, stage, part_name(p), h) for p in parts] if marker_root is not None else None
    outputs = [storage.join(dst, storage.basename(p)) for p in parts]
    funnel, written = decide_parts(parts, outputs, cfg, near, markers=markers)
    if src.rstrip("/") != dst.rstrip("/"):
        names = {storage.basename(p) for p in parts}
        for stale in storage.list_parts(dst):  # a previous run over more parts
            if storage.basename(stale) not in names:
                storage.delete(stale)
    return funnel, len(written)
