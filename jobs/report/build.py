"""`python -m jobs.report --output OUT [--random-models]`: the static HTML report of a run.

Reads whatever stage outputs exist under OUT (a later stage may not have run yet; the page
says which) and writes OUT/report/index.html plus its pictures under OUT/report/media/:

  OUT/videos/*.parquet        videos in, videos with errors by reason
  OUT/clips/*.parquet         clips after split
  OUT/scored/*.parquet        scores, kept / drop_reason (+ OUT/scored/_funnel.json: the filter
                              cascade, its rule names give the thresholds drawn on the histograms)
  OUT/captions/*.parquet      captions of kept clips
  OUT/latents/.manifest.json  (or _manifest.json) rows and shards encoded

The page opens from disk: relative links only, no script, no network. Every string that comes
from data (paths, captions, errors) is HTML-escaped. The run config and stage timings given to
`write_report` are kept in OUT/report/run.json, so `python -m jobs.report` rebuilds the same page;
the funnel numbers are also written to OUT/report/funnel.json.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import schema as S
from curate import storage
from curate.errors import UsageError, error_key, one_line
from curate.storage import write_json_atomic
from jobs import flags
from jobs.report import html as report_html
from jobs.report.media import Line, clip_preview, even_sample, preview_name, score_histogram
from jobs.report.outputs import RunOutputs

REPORT_DIR = "report"
MEDIA_DIR = "media"
RUN_FILE = "run.json"  # the run config / timings / preset given to write_report (reused by a rebuild)
FUNNEL_FILE = "funnel.json"  # the page's funnel numbers, for machines
MANIFEST_NAMES = (".manifest.json", "_manifest.json", "manifest.json")
# Score columns drawn as histograms and shown on each clip card: the numeric/bool ones of the group.
SCORE_COLUMNS = tuple(f.name for f in S.SCORE.fields
                      if pa.types.is_floating(f.type) or pa.types.is_integer(f.type) or pa.types.is_boolean(f.type))
# Heavy columns never read for the report.
_SKIP = {S.CLIP_EMBEDDING, *S.columns_of(S.LATENT_GROUP)}
_CLIP_COLUMNS = [n for n in S.CLIP_SCHEMA.names if n not in _SKIP]
_ABS_RULE = re.compile(r"^(\w+) (>=|<=) (\S+)$")  # filters.Rule.name of an absolute rule
_PCT_RULE = re.compile(r"^((\w+) (?:top|bottom) \d+%) \(cutoff ([^)]+)\)")  # a percentile drop reason


def _load_parts(directory: Path, schema: pa.Schema, columns: Sequence[str], problems: list[str]) -> pa.Table | None:
    """All Parquet parts of a folder, only `columns`, conformed to `schema`; None when there are none."""
    parts = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith((".", "_")))
    want = pa.schema([schema.field(c) for c in columns])
    tables = []
    for p in parts:
        try:
            have = set(pq.read_schema(p).names)
            tables.append(S.conform(pq.read_table(p, columns=[c for c in columns if c in have]), want))
        except (OSError, pa.ArrowException) as e:
            problems.append(f"unreadable part {p}: {one_line(e)}")
    return pa.concat_tables(tables) if tables else None


def _load_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        problems.append(f"unreadable {path}: {one_line(e)}")
        return None


def load_outputs(out: Path) -> RunOutputs:
    r = RunOutputs(out)
    r.videos = _load_parts(out / "videos", S.VIDEO_SCHEMA, S.VIDEO_SCHEMA.names, r.problems)
    r.clips = _load_parts(out / "clips", S.CLIP_SCHEMA, _CLIP_COLUMNS, r.problems)
    r.scored = _load_parts(out / "scored", S.CLIP_SCHEMA, _CLIP_COLUMNS, r.problems)
    r.funnel = _load_json(out / "scored" / "_funnel.json", r.problems)
    r.captions = _load_parts(out / "captions", S.CLIP_SCHEMA, _CLIP_COLUMNS, r.problems)
    for name in MANIFEST_NAMES:
        r.manifest = r.manifest or _load_json(out / "latents" / name, r.problems)
    return r


def reason_key(drop_reason: str) -> str:
    """The rule part of a drop reason ("sharpness >= 100: sharpness=43.2" -> "sharpness >= 100")."""
    return drop_reason.split(": ", 1)[0]


def _error_reasons(table: pa.Table) -> dict[str, int]:
    rows = table.select([S.STATUS, S.FAILED_STAGE, S.ERROR]).to_pylist()
    return dict(Counter(f"{r[S.FAILED_STAGE]}: {error_key(r[S.ERROR])}" for r in rows if r[S.STATUS] == S.STATUS_ERROR)
                .most_common())


def _status_count(table: pa.Table, status: str) -> int:
    return sum(s == status for s in table.column(S.STATUS).to_pylist())


def captions_by_clip(captions: pa.Table | None) -> dict[str, dict[str, Any]]:
    """clip_id -> its caption row (the last part wins if a clip appears twice)."""
    if captions is None:
        return {}
    return {r[S.CLIP_ID]: r for r in captions.to_pylist()}


def compute_funnel(r: RunOutputs) -> dict[str, Any]:
    """Counts per stage (keys as in the page's data-key attributes), errors and drops by reason."""
    counts: dict[str, int] = {}
    f: dict[str, Any] = {"counts": counts, "video_errors": {}, "clip_errors": {}, "drops": {}}
    if r.videos is not None:
        counts["videos_in"] = r.videos.num_rows
        counts["videos_error"] = _status_count(r.videos, S.STATUS_ERROR)
        f["video_errors"] = _error_reasons(r.videos)
    if r.clips is not None:
        counts["clips_split"] = _status_count(r.clips, S.STATUS_OK)
    if r.scored is not None:
        counts["clips_scored"] = _status_count(r.scored, S.STATUS_OK)
        counts["clips_error"] = _status_count(r.scored, S.STATUS_ERROR)
        kept = [bool(k) for k in r.scored.column(S.KEPT).to_pylist()]
        counts["kept"] = sum(kept)
        counts["dropped"] = len(kept) - sum(kept)
        reasons = r.scored.column(S.DROP_REASON).to_pylist()
        f["drops"] = dict(Counter(reason_key(d or "(no reason recorded)") for d, k in zip(reasons, kept) if not k)
                          .most_common())
        f["clip_errors"] = _error_reasons(r.scored)
    caps = captions_by_clip(r.captions)
    if r.captions is not None:
        counts["captioned"] = sum(c[S.STATUS] == S.STATUS_OK for c in caps.values())
        counts["caption_error"] = sum(c[S.STATUS] == S.STATUS_ERROR for c in caps.values())
    if r.manifest is not None:
        mc = r.manifest.get("counts", {})
        counts["encoded"] = int(mc.get("rows", 0))
        counts["shards"] = int(mc.get("shards", len(r.manifest.get("shards", []))))
    return f


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def thresholds_of(r: RunOutputs, extra: Mapping[str, float] | None = None) -> dict[str, list[Line]]:
    """Column -> lines to draw: absolute rules from funnel.json's step names, percentile cutoffs
    from the drop reasons (the cutoff is only recorded there), and `extra` thresholds given by hand."""
    lines: dict[str, list[Line]] = {}
    for step in (r.funnel or {}).get("steps", []):
        m = _ABS_RULE.match(str(step.get("step", "")))
        if m and _float(m[3]) is not None:
            lines.setdefault(m[1], []).append(Line(m[0], float(m[3])))
    if r.scored is not None:
        for reason in sorted({d for d in r.scored.column(S.DROP_REASON).to_pylist() if d}):
            m = _PCT_RULE.match(reason)
            if m and _float(m[3]) is not None and all(not ln.label.startswith(m[1]) for ln in lines.get(m[2], [])):
                lines.setdefault(m[2], []).append(Line(f"{m[1]} cutoff {m[3]}", float(m[3])))
    for col, value in (extra or {}).items():
        lines.setdefault(col, []).append(Line(f"threshold {float(value):g}", float(value)))
    return lines


def is_random(r: RunOutputs, preset_name: str | None) -> bool:
    """Whether any stage recorded random (smoke) models, so the page must say so."""
    caps = r.captions.column(S.CAPTION_MODEL).to_pylist() if r.captions is not None else []
    return bool((preset_name or "").startswith("smoke") or (r.funnel or {}).get("smoke")
                or (r.manifest or {}).get("smoke") or any(str(m).startswith("smoke") for m in caps if m))


def pick_clips(table: pa.Table, max_kept: int, max_dropped: int) -> tuple[list[dict], list[dict]]:
    """Deterministic samples: kept clips spread over clip_id order; dropped clips taken round-robin
    over drop reasons (so every reason shows), each reason in clip_id order. Unscored: all 'kept'."""
    rows = sorted(table.to_pylist(), key=lambda x: str(x[S.CLIP_ID]))
    scored = any(x[S.KEPT] is not None for x in rows)
    kept = [x for x in rows if x[S.KEPT] or not scored]
    kept = [kept[i] for i in even_sample(len(kept), max_kept)]
    by_reason: dict[str, list[dict]] = {}
    for x in rows:
        if scored and not x[S.KEPT]:
            by_reason.setdefault(reason_key(x[S.DROP_REASON] or ""), []).append(x)
    dropped: list[dict] = []
    queues = [by_reason[k] for k in sorted(by_reason)]
    while len(dropped) < max_dropped and any(queues):
        for q in queues:
            if q and len(dropped) < max_dropped:
                dropped.append(q.pop(0))
    return kept, dropped


def make_previews(rows: Sequence[dict], media: Path, workers: int) -> dict[str, str]:
    """Animated preview per clip row (reused when already built); clip_id -> file name or error text."""

    def one(x: dict) -> tuple[str, str]:
        name = preview_name(x[S.CLIP_ID])
        if (media / name).is_file():
            return x[S.CLIP_ID], name
        try:
            clip_preview(x[S.SOURCE_URI], x[S.START_PTS], x[S.END_PTS], x[S.END_FRAME] - x[S.START_FRAME], media / name)
            return x[S.CLIP_ID], name
        except Exception as e:  # a preview failure never fails the report
            return x[S.CLIP_ID], f"error: {one_line(e)}"

    todo = [x for x in rows if x[S.STATUS] == S.STATUS_OK and x[S.START_PTS] is not None and x[S.END_PTS] is not None]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(pool.map(one, todo))


def camera_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """camera_motion class -> {"kept": n, "dropped": n} over scored clips (status ok, class measured)."""
    from curate.flow import CAMERA_CLASSES

    rows = table.select([S.STATUS, S.KEPT, S.CAMERA_MOTION]).to_pylist()
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        if r[S.STATUS] == S.STATUS_OK and r[S.CAMERA_MOTION]:
            c = out.setdefault(r[S.CAMERA_MOTION], {"kept": 0, "dropped": 0})
            c["kept" if r[S.KEPT] else "dropped"] += 1
    order = {c: i for i, c in enumerate(CAMERA_CLASSES)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))


def caption_histogram(captions: pa.Table | None, media: Path) -> list[str]:
    """Histogram of caption_clip_score over captioned clips (all kept), if any has one."""
    if captions is None:
        return []
    ok = captions.filter(pc.equal(captions.column(S.STATUS), S.STATUS_OK))
    values = [float(v) for v in ok.column(S.CAPTION_CLIP_SCORE).to_pylist() if v is not None]
    if not values:
        return []
    name = f"hist-{S.CAPTION_CLIP_SCORE}.png"
    score_histogram(S.CAPTION_CLIP_SCORE, values, [], [], media / name)
    return [name]


def make_histograms(table: pa.Table, lines: Mapping[str, list[Line]], media: Path) -> list[str]:
    """One PNG per score column that has any value; returns the file names in column order.

    Rows with status=error were never scored and are left out."""
    table = table.filter(pc.equal(table.column(S.STATUS), S.STATUS_OK))
    kept = [bool(k) for k in table.column(S.KEPT).to_pylist()]
    names = []
    for col in SCORE_COLUMNS:
        values = [None if v is None else float(v) for v in table.column(col).to_pylist()]
        if all(v is None for v in values):
            continue
        name = f"hist-{col}.png"
        score_histogram(col, [v for v, k in zip(values, kept) if k], [v for v, k in zip(values, kept) if not k],
                        lines.get(col, []), media / name, boolean=pa.types.is_boolean(table.schema.field(col).type))
        names.append(name)
    return names


def write_report(
    out_dir: Path,
    *,
    run_config: dict | None = None,
    stage_timings: dict[str, float] | None = None,
    preset_name: str | None = None,
    random_models: bool = False,
    thresholds: dict[str, float] | None = None,
    max_previews: int = 24,
    workers: int = 2,
) -> Path:
    """Build OUT/report/index.html from whatever OUT holds; returns its path.

    `thresholds` adds lines to the histograms for rules funnel.json does not name. At most
    `max_previews` kept and `max_previews` dropped clips get an animated preview.
    """
    out_dir = Path(out_dir)
    report = out_dir / REPORT_DIR
    media = report / MEDIA_DIR
    media.mkdir(parents=True, exist_ok=True)
    stored = json.loads((report / RUN_FILE).read_text()) if (report / RUN_FILE).is_file() else {}
    rebuild = run_config is None and stage_timings is None and preset_name is None
    run = {"run_config": run_config if run_config is not None else stored.get("run_config"),
           "stage_timings": stage_timings if stage_timings is not None else stored.get("stage_timings"),
           "preset_name": preset_name if preset_name is not None else stored.get("preset_name"),
           "random_models": bool(random_models or (rebuild and stored.get("random_models")))}
    r = load_outputs(out_dir)
    run["random_models"] = run["random_models"] or is_random(r, run["preset_name"])
    write_json_atomic(run, report / RUN_FILE)

    funnel = compute_funnel(r)
    funnel["camera_motion"] = camera_counts(r.scored) if r.scored is not None else {}
    write_json_atomic(funnel, report / FUNNEL_FILE)
    table = r.scored if r.scored is not None else r.clips
    hists = make_histograms(r.scored, thresholds_of(r, thresholds), media) if r.scored is not None else []
    hists += caption_histogram(r.captions, media)
    kept, dropped = pick_clips(table, max_previews, max_previews) if table is not None else ([], [])
    previews = make_previews(kept + dropped, media, workers)
    used = set(hists) | {v for v in previews.values() if not v.startswith("error:")}
    for stale in media.iterdir():  # pictures of a previous build that this page no longer shows
        if stale.is_file() and stale.name not in used:
            stale.unlink()
    page = report_html.render(
        r, funnel, run, hists=hists, kept=kept, dropped=dropped, previews=previews,
        captions=captions_by_clip(r.captions), score_columns=SCORE_COLUMNS, media_dir=MEDIA_DIR,
    )
    return report_html.write_text_atomic(page, report / "index.html")


def write_report_to(out: str, **kwargs: Any) -> str:
    """`write_report` for a local OUT or an object-store URI: for a URI the page is built in a
    worker-local mirror of OUT's tables (parts, funnel, manifest and the previous report; no
    latents) and uploaded to OUT/report; previews stream their clips from the source objects."""
    if not storage.is_remote(out):
        return str(write_report(Path(out), **kwargs))
    with tempfile.TemporaryDirectory(prefix="tubelet-report-") as tmp:
        for sub in ("videos", "clips", "scored", "captions", REPORT_DIR):
            storage.download_tree(storage.join(out, sub), os.path.join(tmp, sub))
        for name in MANIFEST_NAMES:  # the manifest only: the shards stay where they are
            if storage.exists(storage.join(out, "latents", name)):
                os.makedirs(os.path.join(tmp, "latents"), exist_ok=True)
                Path(tmp, "latents", name).write_bytes(storage.read_bytes(storage.join(out, "latents", name)))
        page = write_report(Path(tmp), **kwargs)
        storage.upload_tree(str(page.parent), storage.join(out, REPORT_DIR))
    return storage.join(out, REPORT_DIR, page.name)


def main(argv: list[str] | None = None) -> int:
    p = flags.JobParser("python -m jobs.report", __doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="the run's output root OUT (the report goes to OUT/report/)")
    p.add_argument("--random-models", action="store_true", help="say on the first line that models are random")
    p.add_argument("--max-previews", type=int, default=24, help="animated previews per group (kept / dropped)")
    a = p.parse_args(argv)
    try:
        out = flags.canonical(a.output)
        if not storage.is_dir(out):
            raise UsageError(f"--output must be an existing run folder, got {str(out)!r}; pass the OUT of a run")
        if a.max_previews < 0:
            raise UsageError(f"--max-previews must be >= 0, got {a.max_previews}; e.g. 24")
        path = write_report_to(out, random_models=a.random_models, max_previews=a.max_previews)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = storage.read_json(storage.join(storage.parent(path), FUNNEL_FILE))["counts"]
    print(f"report: {path}  ({', '.join(f'{k} {v}' for k, v in counts.items()) or 'no stage output found'})")
    return 0


cli = main  # every job's entry point is also reachable as cli(argv)


if __name__ == "__main__":
    sys.exit(main())
