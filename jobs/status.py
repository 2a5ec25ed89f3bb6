"""Where a run stands, from its bookkeeping only: `python -m jobs.status OUT`.

Per stage folder: parts, rows and error rows (from the Parquet footers: `failed_stage` is null
on ok rows, so its footer null count gives the errors; a row group holding one stage's errors
names it); per marker stage (OUT/_done/<stage>/): markers and their config hashes; the filter
funnel (kept by rule, from `_funnel.json`); each job's summary (wall seconds, stage seconds);
and what a rerun would redo (parts without a marker, markers of a config other than the
newest). No row is read: a status of a large run costs one footer per part.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

import pyarrow.parquet as pq

from curate import schema as S
from curate.errors import UsageError
from curate.io import layout, storage


def footer_counts(part: str) -> tuple[int, Counter[str]]:
    """(rows, error rows by failed stage) of one part, from its footer alone."""
    fs, path = storage.filesystem(part)
    with fs.open_input_file(path) as f:
        meta = pq.ParquetFile(f).metadata
    idx = meta.schema.to_arrow_schema().get_field_index(S.FAILED_STAGE)
    errors: Counter[str] = Counter()
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        if idx < 0:
            continue
        st = rg.column(idx).statistics
        if st is None or not st.has_null_count:
            continue
        n = rg.num_rows - st.null_count
        if n:
            same = st.has_min_max and st.min == st.max
            errors[st.min if same else "mixed stages"] += n
    return meta.num_rows, errors


def _markers(out: str) -> dict[str, Counter[str]]:
    """Marker stage -> Counter(config_hash)."""
    done = storage.join(out, layout.DONE)
    got: dict[str, Counter[str]] = {}
    for m in storage.list_files(done, recursive=True):
        stage = m[len(str(done).rstrip("/")) + 1 :].split("/", 1)[0]
        try:
            h = storage.read_json(m).get("config_hash", "?")
        except (OSError, ValueError):
            h = "unreadable"
        got.setdefault(stage, Counter())[h] += 1
    return got


def _marker_keys(out: str) -> set[str]:
    done = storage.join(out, layout.DONE)
    return {storage.basename(m) for m in storage.list_files(done, recursive=True)}


def run_status(out: str) -> dict[str, Any]:
    """The status of OUT as a JSON-able dict (see the module docstring)."""
    if not storage.exists(out):
        raise UsageError(f"OUT must be a run folder, got {out!r} (missing); pass the --output of a job")
    keys = _marker_keys(out)
    stages: dict[str, Any] = {}
    redo: list[str] = []
    for name in layout.STAGE_FOLDERS:
        parts = storage.list_parts(layout.folder(out, name))
        if not parts:
            continue
        rows, errors = 0, Counter()
        for p in parts:
            n, e = footer_counts(p)
            rows += n
            errors.update(e)
        unmarked = [p for p in parts if layout.key_of(p) not in keys]
        stages[name] = {
            "parts": len(parts),
            "done": len(parts) - len(unmarked),
            "rows": rows,
            "errors": sum(errors.values()),
            "errors_by_stage": dict(errors),
        }
        if unmarked:
            redo.append(f"{name}: {len(unmarked)} of {len(parts)} parts have no marker and would be redone")
    markers = _markers(out)
    for stage, hashes in markers.items():
        if len(hashes) > 1:
            redo.append(
                f"{stage}: markers of {len(hashes)} configs ({dict(hashes)}); a rerun keeps only the "
                "current config's and redoes the rest"
            )
    funnel = None
    fpath = layout.funnel_path(layout.folder(out, layout.SCORED))
    if storage.exists(fpath):
        f = storage.read_json(fpath)
        funnel = {
            "clips_in": f.get("clips_in"),
            "kept": f.get("kept"),
            "smoke": f.get("smoke"),
            "config_hash": f.get("config_hash"),
            "dropped_by_rule": {s["step"]: s["dropped"] for s in f.get("steps", []) if s["dropped"]},
        }
    summaries = {}
    for s in storage.list_files(storage.join(out, layout.SUMMARY), ".json"):
        d = storage.read_json(s)
        summaries[storage.basename(s).removesuffix(".json")] = {
            k: d[k] for k in ("wall_seconds", "stage_seconds", "errors", "kept") if k in d
        }
    if not stages and not markers and not summaries:
        raise UsageError(
            f"OUT must hold a run (stage folders, markers or summaries), got {out!r} (none); "
            "pass the --output of a job"
        )
    return {
        "out": str(out),
        "stages": stages,
        "markers": {k: dict(v) for k, v in markers.items()},
        "funnel": funnel,
        "summaries": summaries,
        "held": _leases(out),
        "rerun_would_redo": redo or ["nothing"],
    }


def _leases(out: str) -> list[str]:
    """Who holds OUT or one of its stage folders now (a run in progress, or a stale lease a rerun
    takes over)."""
    from jobs.runtime import lease

    held = []
    for folder in [out, *lease.stage_folders(out)]:
        h = lease.read_holder(folder)
        if h is not None:
            why = lease.why_stale(h)
            held.append(f"{lease.lease_path(folder)}: {h.describe()}" + (f" (stale: {why})" if why else ""))
    return held


def format_status(st: dict[str, Any]) -> str:
    lines = [f"run {st['out']}", f"{'stage':<10}{'done/parts':>12}{'rows':>9}{'errors':>8}  errors by stage"]
    for name, s in st["stages"].items():
        by = ", ".join(f"{k} {v}" for k, v in s["errors_by_stage"].items()) or "-"
        lines.append(f"{name:<10}{s['done']:>6}/{s['parts']:<5}{s['rows']:>9}{s['errors']:>8}  {by}")
    if st["funnel"]:
        f = st["funnel"]
        lines.append(
            f"kept {f['kept']} of {f['clips_in']}"
            + ("  [SMOKE]" if f["smoke"] else "")
            + f"  (filter config {f['config_hash']})"
        )
        lines += [f"  dropped by {k}: {v}" for k, v in f["dropped_by_rule"].items()]
    for stage, hashes in st["markers"].items():
        lines.append(f"markers {stage}: " + ", ".join(f"{h} x{n}" for h, n in hashes.items()))
    for job, s in st["summaries"].items():
        secs = ", ".join(f"{k} {v:g}s" for k, v in (s.get("stage_seconds") or {}).items())
        lines.append(f"summary {job}: wall {s.get('wall_seconds', '?')}s" + (f" ({secs})" if secs else ""))
    lines += [f"held: {h}" for h in st["held"]]
    lines += [f"rerun would redo: {r}" for r in st["rerun_would_redo"]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.status",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("out", help="the run folder (a job's --output), local path or URI")
    ap.add_argument("--json", action="store_true", help="print the status as JSON instead of a table")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        st = run_status(args.out)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(st, indent=1) if args.json else format_status(st))
    return 0


if __name__ == "__main__":
    from jobs.runtime.flags import run_cli

    sys.exit(run_cli(main))  # Ctrl-C: one line, exit 130
