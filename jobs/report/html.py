"""The HTML of the run report (jobs/report/build.py gathers the data): one static page, no script.

Every string that comes from data goes through `e()` (html.escape, quotes included), so a
caption or a file name can never inject markup. Links are relative to OUT/report/.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from curate import schema as S
from curate.io import storage
from jobs.report.outputs import RunOutputs, is_exact_copy, keeper_of

RANDOM_MODELS_WARNING = (
    "SMOKE RUN: the models are random, so every score and caption in this report is meaningless."
)

# (stage, key in compute_funnel()["counts"], label), in flow order
FUNNEL_ROWS = (
    ("split", "videos_in", "videos in"),
    ("split", "videos_error", "videos with errors"),
    ("split", "clips_split", "clips after split"),
    ("score", "clips_scored", "clips scored (status ok)"),
    ("score", "clips_error", "clip rows with status=error"),
    ("filter", "dropped", "clips dropped"),
    ("filter", "kept", "clips kept"),
    ("caption", "captioned", "clips captioned"),
    ("caption", "caption_error", "caption errors"),
    ("encode", "encoded", "clips in latent shards"),
    ("encode", "shards", "latent shards"),
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2em 2em;\
color:#222;max-width:1400px}
.banner{background:#c0392b;color:#fff;font-weight:bold;padding:.7em 1em;font-size:1.1em;border-radius:4px}
.note{background:#fff6d9;border:1px solid #e6c96b;padding:.5em .8em;border-radius:4px;margin:.6em 0}
table{border-collapse:collapse;margin:.4em 0 1em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-size:.92em;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.na{color:#999;font-style:italic}
.hists img{margin:.3em;border:1px solid #eee}
.grid{display:flex;flex-wrap:wrap;gap:.8em}
.card{width:220px;border:1px solid #ccc;border-radius:4px;padding:.4em;font-size:.82em;background:#fafafa}
.card.kept{border-top:4px solid #2f8f46}.card.dropped{border-top:4px solid #999}
.card img{display:block;max-width:100%;margin:0 auto .3em}
.card table{margin:.2em 0;width:100%}.card td,.card th{font-size:.95em;padding:.1em .3em}
.src{font-family:monospace;word-break:break-all}
.reason{color:#a33;margin:.2em 0;overflow-wrap:anywhere}.caption{margin:.3em 0;white-space:pre-wrap}
.nopreview{height:60px;display:flex;align-items:center;justify-content:center;background:#eee;color:#777}
.card:target{outline:3px solid #e67e22}
table.cfg td:first-child{font-family:monospace;white-space:nowrap}
table.cfg td.v{font-family:monospace;white-space:pre-wrap;word-break:break-all}
"""
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9-]")  # kept as they are in a card's id; the rest are escaped


def e(value: Any) -> str:
    """HTML-escape anything from data (quotes too: values also land in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _counts_table(title: str, counts: Mapping[str, int], attr: str, empty: str) -> list[str]:
    if not counts:
        return [f"<h3>{e(title)}</h3>", f"<p class='na'>{e(empty)}</p>"]
    rows = "".join(
        f'<tr><td>{e(k)}</td><td class="n" data-{attr}="{e(k)}">{n}</td></tr>' for k, n in counts.items()
    )
    return [f"<h3>{e(title)}</h3>", f"<table><tr><th>reason</th><th>count</th></tr>{rows}</table>"]


def funnel_section(r: RunOutputs, funnel: Mapping[str, Any]) -> list[str]:
    counts = funnel["counts"]
    rows = []
    for stage, key, label in FUNNEL_ROWS:
        cell = (
            f'<td class="n" data-key="{key}">{counts[key]}</td>'
            if key in counts
            else f'<td class="na" data-key="{key}">not run</td>'
        )
        rows.append(f"<tr><td>{stage}</td><td>{e(label)}</td>{cell}</tr>")
    out = [
        "<h2>Funnel</h2>",
        f"<table><tr><th>stage</th><th>what</th><th>count</th></tr>{''.join(rows)}</table>",
    ]
    out += _counts_table("Videos with errors, by reason", funnel["video_errors"], "video-error", "none")
    out += _counts_table(
        "Clips dropped, by reason (first rule failed)",
        funnel["drops"],
        "drop",
        "no filter decisions yet" if r.scored is None else "none dropped",
    )
    if funnel["clip_errors"]:
        out += _counts_table(
            "Clip rows with status=error, by reason", funnel["clip_errors"], "clip-error", "none"
        )
    steps = (r.funnel or {}).get("steps", [])
    if steps:
        body = "".join(
            f"<tr><td>{e(s.get('step'))}</td><td class='n'>{e(s.get('in'))}</td>"
            f"<td class='n'>{e(s.get('dropped'))}</td><td class='n'>{e(s.get('out'))}</td></tr>"
            for s in steps
        )
        out += [
            "<h3>Filter cascade (OUT/scored/_funnel.json, in the order rules ran)</h3>",
            f"<table><tr><th>step</th><th>in</th><th>dropped</th><th>out</th></tr>{body}</table>",
        ]
        if (r.funnel or {}).get("model"):
            out.append(f"<p>score model: {e(r.funnel['model'])}</p>")
    return out


def anchor_id(clip_id: Any) -> str:
    """The HTML id of a clip's card: "clip-" and the clip_id, any character but a letter, digit or
    "-" written as _<hex>_ so that no two clip ids get the same id (ids may not hold spaces)."""
    return "clip-" + _UNSAFE_ID.sub(lambda m: f"_{ord(m[0]):x}_", str(clip_id))


def card_anchors(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """(each card's id, in order; clip_id -> the id a link to that clip points at).

    An exact duplicate's copy has its keeper's clip_id, so links go to the card that is no copy,
    and every other card of a clip_id gets the id with "_<n>" added: an odd number of "_", which
    no `anchor_id` has, so the ids on a page are unique."""
    targets: dict[str, str] = {}
    for x in rows:
        if not is_exact_copy(x):
            targets.setdefault(str(x[S.CLIP_ID]), anchor_id(x[S.CLIP_ID]))
    ids: list[str] = []
    used: set[str] = set()
    for x in rows:
        base = anchor_id(x[S.CLIP_ID])
        own, n = (base if not is_exact_copy(x) and base not in used else None), 1
        while own is None or own in used:
            n += 1
            own = f"{base}_{n}"
        used.add(own)
        ids.append(own)
    return ids, targets


def reason_html(x: Mapping[str, Any], targets: Mapping[str, str]) -> str:
    """A drop reason, escaped, with the keeper it names (a duplicate's) linked to the keeper's card
    when that card is on the page; plain text otherwise, so no link dangles."""
    reason = str(x[S.DROP_REASON])
    keeper = keeper_of(x)
    if keeper is None or not keeper[1] or keeper[1] not in reason:
        return e(reason)
    clip_id, named = keeper
    head, _, tail = reason.rpartition(named)
    ref = e(named)
    if clip_id in targets:
        ref = f'<a href="#{e(targets[clip_id])}" title="clip {e(clip_id)}">{ref}</a>'
    return f"{e(head)}{ref}{e(tail)}"


def _card(
    x: Mapping[str, Any],
    group: str,
    preview: str | None,
    caption: Mapping[str, Any] | None,
    score_columns: Sequence[str],
    media_dir: str,
    anchor: str,
    targets: Mapping[str, str],
) -> str:
    if preview and not preview.startswith("error:"):
        img = f'<img src="{e(media_dir)}/{e(preview)}" alt="preview of clip {e(x[S.CLIP_ID])}">'
    else:
        why = preview or (
            f"{x[S.FAILED_STAGE]}: {x[S.ERROR]}" if x[S.STATUS] == S.STATUS_ERROR else "no span"
        )
        img = f'<div class="nopreview" title="{e(why)}">no preview</div>'
    span = ""
    if x[S.START_PTS] is not None and x[S.END_PTS] is not None:
        span = f" · {x[S.START_PTS]:.2f}–{x[S.END_PTS]:.2f} s"
    parts = [
        f'<div class="card {group}" id="{e(anchor)}" data-clip="{e(x[S.CLIP_ID])}">',
        img,
        f'<div class="src" title="{e(x[S.SOURCE_URI])}">{e(Path(str(x[S.SOURCE_URI])).name)}{e(span)}</div>',
    ]
    if x[S.STATUS] == S.STATUS_ERROR:
        parts.append(f'<div class="reason">error ({e(x[S.FAILED_STAGE])}): {e(x[S.ERROR])}</div>')
    if x.get(S.DROP_REASON):
        parts.append(f'<div class="reason">{reason_html(x, targets)}</div>')
    scores = "".join(
        f"<tr><th>{e(c)}</th><td>{e(_fmt(x.get(c)))}</td></tr>" for c in score_columns if x.get(c) is not None
    )
    if x.get(S.CAMERA_MOTION):
        scores += f"<tr><th>{e(S.CAMERA_MOTION)}</th><td>{e(x[S.CAMERA_MOTION])}</td></tr>"
    if x.get(S.OCR_TEXT):
        scores += f"<tr><th>{e(S.OCR_TEXT)}</th><td>{e('; '.join(x[S.OCR_TEXT]))}</td></tr>"
    if scores:
        parts.append(f"<table>{scores}</table>")
    if caption is not None:
        if caption[S.STATUS] == S.STATUS_ERROR:
            parts.append(f'<div class="reason">caption error: {e(caption[S.ERROR])}</div>')
        else:
            parts.append(
                f'<div class="caption"><b>{e(caption[S.CAPTION_SHORT])}</b>\n{e(caption[S.CAPTION])}</div>'
                f"<div class='na'>{e(caption[S.CAPTION_MODEL])}</div>"
            )
            if caption.get(S.CAPTION_CLIP_SCORE) is not None:
                parts.append(
                    f"<div>{e(S.CAPTION_CLIP_SCORE)}: {e(_fmt(caption[S.CAPTION_CLIP_SCORE]))}</div>"
                )
            flags = _grounding_flags(caption.get(S.CAPTION_QA))
            if flags:
                parts.append(f'<div class="reason">caption QA: {e("; ".join(flags))}</div>')
    parts.append("</div>")
    return "".join(parts)


def _grounding_flags(caption_qa: str | None) -> list[str]:
    """The grounding flags recorded in a caption_qa JSON string (none when absent or unreadable)."""
    try:
        return list(json.loads(caption_qa or "{}").get("grounding", []))
    except (ValueError, AttributeError):
        return []


def camera_section(camera: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Counts of the camera-motion classes (optical flow), kept and dropped."""
    if not camera:
        return []
    body = "".join(
        f'<tr><td>{e(c)}</td><td class="n" data-camera-kept="{e(c)}">{n["kept"]}</td>'
        f'<td class="n" data-camera-dropped="{e(c)}">{n["dropped"]}</td></tr>'
        for c, n in camera.items()
    )
    return [
        "<h3>Camera motion (optical flow), clips per class</h3>",
        f"<table><tr><th>camera_motion</th><th>kept</th><th>dropped</th></tr>{body}</table>",
    ]


def clips_section(
    title: str,
    group: str,
    rows: Sequence[Mapping[str, Any]],
    total: int,
    previews: Mapping[str, str],
    captions: Mapping[str, Mapping[str, Any]],
    score_columns: Sequence[str],
    media_dir: str,
    anchors: Sequence[str],
    targets: Mapping[str, str],
) -> list[str]:
    """The cards of `rows`; `anchors` are their ids (card_anchors over every card of the page)."""
    head = f"<h2>{e(title)} <small>({len(rows)} shown of {total})</small></h2>"
    if not rows:
        return [head, "<p class='na'>none</p>"]
    cards = [
        _card(
            x,
            group,
            previews.get(x[S.CLIP_ID]),
            captions.get(x[S.CLIP_ID]),
            score_columns,
            media_dir,
            anchor,
            targets,
        )
        for x, anchor in zip(rows, anchors, strict=True)
    ]
    return [head, f'<div class="grid">{"".join(cards)}</div>']


def run_section(run: Mapping[str, Any]) -> list[str]:
    out = ["<h2>Run</h2>"]
    timings = run.get("stage_timings") or {}
    if timings:
        total = sum(float(v) for v in timings.values()) or 1.0
        body = "".join(
            f"<tr><td>{e(k)}</td><td class='n'>{float(v):.2f}</td>"
            f"<td class='n'>{100 * float(v) / total:.0f}%</td></tr>"
            for k, v in timings.items()
        )
        out += [
            "<h3>Time per stage (seconds)</h3>",
            f"<table><tr><th>stage</th><th>s</th><th>share</th></tr>{body}"
            f"<tr><th>sum</th><th class='n'>{sum(float(v) for v in timings.values()):.2f}</th>"
            "<th></th></tr></table>",
        ]
    else:
        out.append("<p class='na'>no stage timings recorded</p>")
    cfg = run.get("run_config")
    out.append("<h3>Run config</h3>")
    if cfg is None:
        return [*out, "<p class='na'>no run config recorded</p>"]
    body = "".join(
        f'<tr><td>{e(k)}</td><td class="v" data-config="{e(k)}">{e(v)}</td></tr>' for k, v in flat_config(cfg)
    )
    return [*out, f"<table class='cfg'><tr><th>key</th><th>value</th></tr>{body}</table>"]


def flat_config(cfg: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, readable value) per leaf of a nested config, keys sorted as in run.json (so a
    page built in the run and one rebuilt from run.json list them alike)."""
    if isinstance(cfg, Mapping) and cfg:
        return [
            row
            for k in sorted(cfg, key=str)
            for row in flat_config(cfg[k], f"{prefix}.{k}" if prefix else str(k))
        ]
    return [(prefix or "(config)", config_value(cfg))]


def config_value(v: Any) -> str:
    """A leaf's value: a list of plain values joined with ", ", a list of dicts or lists one item
    a line (a dict as k=v, ...), JSON's spelling for null, booleans, numbers and the empty string."""
    if isinstance(v, list | tuple) and any(isinstance(x, Mapping | list | tuple) for x in v):
        return "\n".join(_inline(x) for x in v)
    if isinstance(v, list | tuple):
        return ", ".join(_inline(x) for x in v) if v else "[]"
    return _inline(v)


def _inline(v: Any) -> str:
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_inline(x)}" for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))) or "{}"
    if isinstance(v, list | tuple):
        return f"[{', '.join(_inline(x) for x in v)}]"
    return v if isinstance(v, str) and v else json.dumps(v, default=str)  # "" shows as ""


def latents_section(latents: Mapping[str, Any] | None) -> list[str]:
    """The latent shards (OUT/latents/.manifest.json, folded by build.latents_summary)."""
    out = ["<h2 id='latents'>Latents</h2>"]
    if latents is None:
        return [*out, "<p class='na' id='latents-none'>not encoded yet (no OUT/latents/.manifest.json)</p>"]
    psnr = latents.get("roundtrip_psnr")
    rows: list[tuple[str, str, Any]] = [
        ("clips in latent shards", "rows", latents["rows"]),
        ("latent shards", "shards", latents["shards"]),
        ("VAE", "vae", latents.get("vae_id") or "not recorded"),
        ("text encoder", "text-encoder", latents.get("text_encoder_id") or "not recorded"),
    ]
    if psnr is not None:
        rows += [
            ("round-trip PSNR, mean (dB)", "psnr-mean", psnr["mean"]),
            ("round-trip PSNR, min – max (dB)", "psnr-range", f"{psnr['min']} – {psnr['max']}"),
            ("clips the PSNR was measured on", "psnr-clips", psnr["clips"]),
        ]
    else:
        rows.append(("round-trip PSNR (dB)", "psnr-mean", "not measured"))
    body = "".join(
        f'<tr><td>{e(label)}</td><td data-latents="{key}">{e(v)}</td></tr>' for label, key, v in rows
    )
    shapes = "".join(
        f'<tr><td>{e(k)}</td><td class="n" data-latent-shape="{e(k)}">{n}</td></tr>'
        for k, n in latents["by_latent_shape"].items()
    )
    out.append(f"<table>{body}</table>")
    out.append("<h3>Clips per latent shape (C×T×H×W)</h3>")
    out.append(
        f"<table><tr><th>latent_shape</th><th>clips</th></tr>{shapes}</table>"
        if shapes
        else "<p class='na'>no rows</p>"
    )
    return out


def render(
    r: RunOutputs,
    funnel: Mapping[str, Any],
    run: Mapping[str, Any],
    *,
    hists: Sequence[str],
    kept: Sequence[Mapping[str, Any]],
    dropped: Sequence[Mapping[str, Any]],
    previews: Mapping[str, str],
    captions: Mapping[str, Mapping[str, Any]],
    score_columns: Sequence[str],
    media_dir: str,
) -> str:
    random = bool(run.get("random_models"))
    title = f"tubelet report: {storage.basename(r.out)}" + (" (SMOKE, random models)" if random else "")
    # important: with random models the warning is the file's first line and the page's first line
    lines = [f"<!-- {RANDOM_MODELS_WARNING} -->"] if random else []
    lines += [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{CSS}</style></head><body>",
    ]
    if random:
        lines.append(f'<div class="banner" id="random-models">{e(RANDOM_MODELS_WARNING)}</div>')
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(
        f"<h1>{e(title)}</h1><p>output <span class='src'>{e(r.out)}</span> · preset "
        f"<b>{e(run.get('preset_name') or 'unknown')}</b> · built {stamp}</p>"
    )
    stages = r.stages()
    missing = [s for s, ran in stages.items() if not ran]
    if missing:
        lines.append(
            "<div class='note' id='not-run'>Stages not run yet (no output found): "
            f"{e(', '.join(missing))}</div>"
        )
    for p in r.problems:
        lines.append(f"<div class='note'>{e(p)}</div>")
    lines += funnel_section(r, funnel)
    lines.append("<h2>Scores</h2>")
    if hists:
        lines.append(
            "<p>Stacked: kept (green) and dropped (grey) clips; red lines are filter thresholds "
            "and percentile cutoffs.</p><div class='hists'>"
        )
        lines += [f'<img src="{e(media_dir)}/{e(h)}" alt="{e(h)}">' for h in hists]
        lines.append("</div>")
    else:
        lines.append("<p class='na'>no scores yet</p>")
    lines += camera_section(funnel.get("camera_motion") or {})
    counts = funnel["counts"]
    anchors, targets = card_anchors([*kept, *dropped])
    cards = (previews, captions, score_columns, media_dir)
    if r.scored is not None:
        lines += clips_section(
            "Kept clips", "kept", kept, counts["kept"], *cards, anchors[: len(kept)], targets
        )
        lines += clips_section(
            "Dropped clips", "dropped", dropped, counts["dropped"], *cards, anchors[len(kept) :], targets
        )
    elif r.clips is not None:
        lines += clips_section("Clips (not scored yet)", "kept", kept, r.clips.rows, *cards, anchors, targets)
    lines += latents_section(funnel.get("latents"))
    lines += run_section(run)
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"


def write_text_atomic(text: str, path: Path) -> Path:
    storage.write_bytes_atomic(text.encode("utf-8"), path)  # temp + rename; the file follows the umask
    return path
