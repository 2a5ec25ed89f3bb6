"""`python -m jobs.report --output OUT [--random-models]`: the static HTML report of a run.

Reads whatever stage outputs exist under OUT (a later stage may not have run yet; the page
says which) and writes OUT/report/index.html plus its pictures under OUT/report/media/:

  OUT/videos/*.parquet        videos in, videos with errors by reason
  OUT/clips/*.parquet         clips after split
  OUT/scored/*.parquet        scores, kept / drop_reason (+ OUT/scored/_funnel.json: the filter
                              cascade, its rule names give the thresholds drawn on the histograms)
  OUT/captions/*.parquet      captions of kept clips
  OUT/latents/.manifest.json  rows and shards encoded, rows per latent shape, the VAE and text
                              encoder, the round-trip PSNR of the clips encode sampled

The page opens from disk: relative links only, no script, no network. Every string that comes
from data (paths, captions, errors) is HTML-escaped. The run config and stage timings given to
`write_report` are kept in OUT/report/run.json, so `python -m jobs.report` rebuilds the same page;
the funnel numbers are also written to OUT/report/funnel.json.

It scales with the run: the tables are folded one Parquet part at a time into counters,
fixed-edge histogram bins and a bounded sample of clips to show (jobs/report/fold.py), so the
report holds O(one part + previews) rows whether OUT has ten clips or 10^8.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from curate import schema as S
from curate.errors import UsageError, one_line
from curate.io import layout, storage
from curate.io.storage import write_json_atomic
from jobs import guards
from jobs.report import html as report_html
from jobs.report.fold import (
    SCORE_COLUMNS,
    PreviewSample,
    find_rows,
    fold_captions,
    fold_clips,
    fold_scored,
    fold_videos,
    is_boolean,
)
from jobs.report.media import Line, clip_preview, preview_name, score_histogram
from jobs.report.outputs import RunOutputs, ScoredTally, is_exact_copy, keeper_of
from jobs.runtime import flags, lease

REPORT_DIR = "report"
MEDIA_DIR = "media"
RUN_FILE = "run.json"  # the run config / timings / preset given to write_report (reused by a rebuild)
FUNNEL_FILE = "funnel.json"  # the page's funnel numbers, for machines
_ABS_RULE = re.compile(r"^(\w+) (>=|<=) (\S+)$")  # filters.Rule.name of an absolute rule
# a shard's metric in the manifest: latents.encode.ROUNDTRIP_PSNR without its "_" (that module imports torch)
ROUNDTRIP_PSNR = "roundtrip_psnr"
_PCT_RULE = re.compile(r"^((\w+) (?:top|bottom) \d+%) \(cutoff ([^)]+)\)")  # a percentile drop reason


def _load_json(uri: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        return storage.read_json(uri) if storage.is_file(uri) else None
    except (OSError, ValueError) as e:
        problems.append(f"unreadable {uri}: {one_line(e)}")
        return None


def _load_manifest(latents_dir: str, problems: list[str]) -> dict[str, Any] | None:
    """The shards' manifest through the one validating reader; none yet is no problem."""
    from latents.shards import ShardError, read_manifest

    if not storage.is_file(layout.manifest_path(latents_dir)):
        return None
    try:
        return read_manifest(latents_dir)
    except (ShardError, OSError) as e:
        problems.append(f"unreadable {layout.manifest_path(latents_dir)}: {one_line(e)}")
        return None


def load_outputs(
    out: str | Path, *, thresholds: Mapping[str, float] | None = None, max_previews: int = 24
) -> RunOutputs:
    """Fold OUT's stage outputs (a local folder or a URI), one Parquet part at a time: memory is
    O(one part + reasons + histogram bins + 3 x `max_previews` card rows: the sample and the
    keepers of its duplicates), never O(clips).
    `thresholds` (as in `write_report`) widen the histogram bins so their lines show."""
    out = str(out)
    r = RunOutputs(out)
    r.funnel = _load_json(layout.funnel_path(layout.folder(out, layout.SCORED)), r.problems)
    r.manifest = _load_manifest(layout.folder(out, layout.LATENTS), r.problems)
    r.videos = fold_videos(layout.folder(out, layout.VIDEOS), r.problems)
    sample = PreviewSample(max_previews, max_previews)
    # the lines known before any row is read (rules, `thresholds`): r.scored is still None here
    r.scored = fold_scored(
        layout.folder(out, layout.SCORED), thresholds_of(r, thresholds), sample, r.problems
    )
    # nothing scored yet: the cards show split's clips
    r.clips = fold_clips(
        layout.folder(out, layout.CLIPS), r.problems, sample=None if r.scored is not None else sample
    )
    r.shown_kept, r.shown_dropped = sample.picks()
    if r.scored is not None:
        add_keepers(r, layout.folder(out, layout.SCORED))
    shown = {str(x[S.CLIP_ID]) for x in r.shown_kept + r.shown_dropped}
    r.captions = fold_captions(layout.folder(out, layout.CAPTIONS), shown, r.problems)
    return r


def add_keepers(r: RunOutputs, scored_dir: str) -> None:
    """Show the keeper of every duplicate shown, so its reason can link to the keeper's card: at
    most one more card per dropped card (memory stays O(cards)). A keeper not found stays unshown
    and its reason names it in plain text."""
    shown = {str(x[S.CLIP_ID]) for x in r.shown_kept + r.shown_dropped if not is_exact_copy(x)}
    wanted = {k[0] for x in r.shown_dropped if (k := keeper_of(x)) is not None} - shown
    if not wanted:
        return
    problems: list[str] = []
    for _, row in sorted(find_rows(scored_dir, wanted, problems).items()):
        (r.shown_kept if row[S.KEPT] else r.shown_dropped).append(row)
    r.problems += [p for p in problems if p not in r.problems]  # fold_scored said so of a bad part
    r.shown_kept.sort(key=lambda row: str(row[S.CLIP_ID]))  # as PreviewSample.picks orders them


def latents_summary(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What the page says about the latent shards: counts, rows per latent shape, the codecs, and
    the round-trip PSNR over the clips encode sampled (the mean as jobs.encode's summary reports it)."""
    from latents.shards import metric_summary  # as _load_manifest: only once a manifest was read

    counts = manifest.get("counts", {})
    return {
        "rows": int(counts.get("rows", 0)),
        "shards": int(counts.get("shards", len(manifest.get("shards", [])))),
        "by_latent_shape": {str(k): int(n) for k, n in counts.get("by_latent_shape", {}).items()},
        "vae_id": (manifest.get("vae") or {}).get("vae_id"),
        "text_encoder_id": (manifest.get("text_encoder") or {}).get("text_encoder_id"),
        "roundtrip_psnr": metric_summary(dict(manifest), ROUNDTRIP_PSNR),
    }


def compute_funnel(r: RunOutputs) -> dict[str, Any]:
    """Counts per stage (keys as in the page's data-key attributes), errors and drops by reason."""
    counts: dict[str, int] = {}
    f: dict[str, Any] = {"counts": counts, "video_errors": {}, "clip_errors": {}, "drops": {}}
    if r.videos is not None:
        counts["videos_in"] = r.videos.rows
        counts["videos_error"] = r.videos.status[S.STATUS_ERROR]
        f["video_errors"] = dict(r.videos.errors.most_common())
    if r.clips is not None:
        counts["clips_split"] = r.clips.status[S.STATUS_OK]
    if r.scored is not None:
        counts["clips_scored"] = r.scored.status[S.STATUS_OK]
        counts["clips_error"] = r.scored.status[S.STATUS_ERROR]
        counts["kept"] = r.scored.kept
        counts["dropped"] = r.scored.rows - r.scored.kept
        f["drops"] = dict(r.scored.drops.most_common())
        f["clip_errors"] = dict(r.scored.errors.most_common())
    if r.captions is not None:
        counts["captioned"] = r.captions.status[S.STATUS_OK]
        counts["caption_error"] = r.captions.status[S.STATUS_ERROR]
    f["latents"] = latents_summary(r.manifest) if r.manifest is not None else None
    if f["latents"] is not None:
        counts["encoded"] = f["latents"]["rows"]
        counts["shards"] = f["latents"]["shards"]
    f["camera_motion"] = r.scored.camera if r.scored is not None else {}
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
        for reason in sorted(
            r.scored.drops
        ):  # the reason keys keep the cutoff: "aesthetic top 70% (cutoff 4.31)"
            m = _PCT_RULE.match(reason)
            if (
                m
                and _float(m[3]) is not None
                and all(not ln.label.startswith(m[1]) for ln in lines.get(m[2], []))
            ):
                lines.setdefault(m[2], []).append(Line(f"{m[1]} cutoff {m[3]}", float(m[3])))
    for col, value in (extra or {}).items():
        lines.setdefault(col, []).append(Line(f"threshold {float(value):g}", float(value)))
    return lines


def is_random(r: RunOutputs, preset_name: str | None) -> bool:
    """Whether any stage recorded random (smoke) models, so the page must say so."""
    return bool(
        (preset_name or "").startswith("smoke")
        or (r.funnel or {}).get("smoke")
        or (r.manifest or {}).get("smoke")
        or (r.captions is not None and r.captions.smoke)
    )


def make_previews(rows: Sequence[dict], media: Path, workers: int) -> dict[str, str]:
    """Animated preview per clip row (reused when already built); clip_id -> file name or error text."""

    def one(x: dict) -> tuple[str, str]:
        name = preview_name(x[S.CLIP_ID])
        if (media / name).is_file():
            return x[S.CLIP_ID], name
        try:
            clip_preview(
                x[S.SOURCE_URI], x[S.START_PTS], x[S.END_PTS], x[S.END_FRAME] - x[S.START_FRAME], media / name
            )
            return x[S.CLIP_ID], name
        except Exception as e:  # a preview failure never fails the report
            return x[S.CLIP_ID], f"error: {one_line(e)}"

    todo = [
        x
        for x in rows
        if x[S.STATUS] == S.STATUS_OK and x[S.START_PTS] is not None and x[S.END_PTS] is not None
    ]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(pool.map(one, todo))


def make_histograms(scored: ScoredTally, lines: Mapping[str, list[Line]], media: Path) -> list[str]:
    """One PNG per score column that has any value; returns the file names in column order.

    Rows with status=error were never scored and are left out (fold_scored)."""
    names = []
    for col in SCORE_COLUMNS:
        h = scored.hists[col]
        if not h.with_value:
            continue
        name = f"hist-{col}.png"
        score_histogram(
            col,
            h.edges,
            h.kept,
            h.dropped,
            lines.get(col, []),
            media / name,
            missing=h.rows - h.finite,
            boolean=is_boolean(col),
        )
        names.append(name)
    return names


def caption_histogram(r: RunOutputs, media: Path) -> list[str]:
    """Histogram of caption_clip_score over captioned clips (all kept), if any has one."""
    h = r.captions.hist if r.captions is not None else None
    if h is None or not h.with_value:
        return []
    name = f"hist-{S.CAPTION_CLIP_SCORE}.png"
    score_histogram(
        S.CAPTION_CLIP_SCORE, h.edges, h.kept, h.dropped, [], media / name, missing=h.with_value - h.finite
    )
    return [name]


def write_report(
    out_dir: Path | str,
    *,
    run_config: dict | None = None,
    stage_timings: dict[str, float] | None = None,
    preset_name: str | None = None,
    random_models: bool = False,
    thresholds: dict[str, float] | None = None,
    max_previews: int = 24,
    workers: int = 2,
    report_dir: Path | None = None,
) -> Path:
    """Build OUT/report/index.html from whatever OUT holds; returns its path.

    `thresholds` adds lines to the histograms for rules funnel.json does not name. At most
    `max_previews` kept and `max_previews` dropped clips get an animated preview. The page is
    built in `report_dir` (default OUT/report; `write_report_to` passes a local folder for a
    remote OUT, whose parts are read where they are).
    """
    out = str(out_dir)
    if report_dir is None and storage.is_remote(out):
        raise ValueError(
            f"write_report builds the page in a local folder, got OUT={out!r} and no report_dir; "
            "call write_report_to for a URI"
        )
    report = Path(report_dir) if report_dir is not None else Path(out) / REPORT_DIR
    media = report / MEDIA_DIR
    media.mkdir(parents=True, exist_ok=True)
    stored = json.loads((report / RUN_FILE).read_text()) if (report / RUN_FILE).is_file() else {}
    rebuild = run_config is None and stage_timings is None and preset_name is None
    run = {
        "run_config": run_config if run_config is not None else stored.get("run_config"),
        "stage_timings": stage_timings if stage_timings is not None else stored.get("stage_timings"),
        "preset_name": preset_name if preset_name is not None else stored.get("preset_name"),
        "random_models": bool(random_models or (rebuild and stored.get("random_models"))),
    }
    r = load_outputs(out, thresholds=thresholds, max_previews=max_previews)
    run["random_models"] = run["random_models"] or is_random(r, run["preset_name"])
    write_json_atomic(run, report / RUN_FILE)

    funnel = compute_funnel(r)
    write_json_atomic(funnel, report / FUNNEL_FILE)
    hists = make_histograms(r.scored, thresholds_of(r, thresholds), media) if r.scored is not None else []
    hists += caption_histogram(r, media)
    previews = make_previews(r.shown_kept + r.shown_dropped, media, workers)
    used = set(hists) | {v for v in previews.values() if not v.startswith("error:")}
    for stale in media.iterdir():  # pictures of a previous build that this page no longer shows
        if stale.is_file() and stale.name not in used:
            stale.unlink()
    page = report_html.render(
        r,
        funnel,
        run,
        hists=hists,
        kept=r.shown_kept,
        dropped=r.shown_dropped,
        previews=previews,
        captions=r.captions.by_clip if r.captions is not None else {},
        score_columns=SCORE_COLUMNS,
        media_dir=MEDIA_DIR,
    )
    return report_html.write_text_atomic(page, report / "index.html")


def write_report_to(out: str, **kwargs: Any) -> str:
    """`write_report` for a local OUT or an object-store URI. For a URI the parts are read from
    the store one at a time (nothing of OUT's tables is copied); the page is built in a local
    folder seeded with the previous OUT/report (its run.json and previews, bounded by
    --max-previews) and uploaded to OUT/report. Previews stream their clips from the source objects."""
    if not storage.is_remote(out):
        return str(write_report(Path(out), **kwargs))
    with tempfile.TemporaryDirectory(prefix="tubelet-report-") as tmp:
        report = Path(tmp, REPORT_DIR)
        storage.download_tree(storage.join(out, REPORT_DIR), str(report))
        page = write_report(out, report_dir=report, **kwargs)
        storage.upload_tree(str(page.parent), storage.join(out, REPORT_DIR))
    return storage.join(out, REPORT_DIR, page.name)


def main(argv: list[str] | None = None) -> int:
    p = flags.JobParser("python -m jobs.report", __doc__.split("\n\n")[0])
    p.add_argument(
        "--output", required=True, help="the run's output root OUT (the report goes to OUT/report/)"
    )
    p.add_argument(
        "--random-models", action="store_true", help="say on the first line that models are random"
    )
    p.add_argument(
        "--max-previews", type=int, default=24, help="animated previews per group (kept / dropped)"
    )
    a = p.parse_args(argv)
    try:
        out = flags.canonical(a.output)
        if not storage.is_dir(out):
            raise UsageError(
                f"--output must be an existing run folder, got {str(out)!r}; pass the OUT of a run"
            )
        guards.check_run_folder(out)  # not OUT/scored (the page would land among its parts), not empty
        if a.max_previews < 0:
            raise UsageError(f"--max-previews must be >= 0, got {a.max_previews}; e.g. 24")
        # OUT/report is this job's; a run still writing OUT (curate writes the report too) must end first
        with lease.hold(storage.join(out, REPORT_DIR), "jobs.report", watch=[out]):
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
