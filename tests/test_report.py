"""The run report: funnel numbers equal the tables, links resolve, previews animate, data is escaped.

OUT is built without Ray: jobs.runtime.split_parts.process_one (the split job's unit of work) on two generated
videos and one bad file, then deterministic scores through the real filter cascade and
jobs.runtime.filter_plan.funnel_report (what the score job writes), then a captions part.
"""

from __future__ import annotations

import dataclasses
import html
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from curate.decisions.filters import EXACT_DUP, NEAR_DUP, FilterConfig, Rule, apply_cascade
from curate.io.storage import read_parts, write_json_atomic, write_parquet_atomic
from curate.schema import (
    AESTHETIC,
    BLACK_FRACTION,
    BRIGHTNESS,
    CAPTION,
    CAPTION_MODEL,
    CAPTION_SHORT,
    CLIP_EMBEDDING,
    CLIP_ID,
    CLIP_SCHEMA,
    DROP_REASON,
    DUPLICATE_OF,
    IS_STATIC,
    KEPT,
    MOTION,
    PROMPT_VERSION,
    SCHEMA_VERSION,
    SHARPNESS,
    SOURCE_URI,
    STATUS,
    STATUS_ERROR,
    STATUS_OK,
    VIDEO_SCHEMA,
    set_columns,
)
from curate.scores import score, score_config
from curate.shots.split import SplitConfig
from curate.synthetic.synth import Segment, make_video
from jobs import report
from jobs.report import build, fold
from jobs.report import html as report_html
from jobs.report.html import RANDOM_MODELS_WARNING
from jobs.runtime.filter_plan import funnel_report
from jobs.runtime.split_parts import process_one
from latents.encode import ROUNDTRIP_PSNR
from latents.shards import MANIFEST_FORMAT, build_manifest

EVIL = "<script>alert('x')</script> a red & blue ball"
FILTERS = FilterConfig(
    rules=(Rule(BLACK_FRACTION, "<=", 0.5), Rule(SHARPNESS, ">=", 100.0), Rule(AESTHETIC, ">=", share=0.7)),
    near_dup_cosine=None,
)


def _split_out(tmp_path: Path) -> Path:
    """OUT with videos/ and clips/ written by the split job's per-video function (no Ray)."""
    src = tmp_path / "in"
    make_video(
        src / "cuts.mp4",
        [Segment("shot", 36, 0), Segment("shot", 36, 1), Segment("shot", 36, 3)],
        fps=24,
        width=160,
        height=96,
    )
    make_video(
        src / "still_then_fast.mp4",
        [Segment("shot", 36, 2, speed=0.0), Segment("shot", 36, 3, speed=3.0)],
        fps=24,
        width=160,
        height=96,
    )
    (src / "broken.mp4").write_text("not a video\n")
    out = tmp_path / "out"
    cfg = SplitConfig(min_seconds=0.5, max_seconds=1.0)  # 1.5 s shots -> two windows each
    for name in ("cuts.mp4", "still_then_fast.mp4", "broken.mp4"):
        process_one(str(src / name), cfg, str(out))
    return out


def _score_out(out: Path) -> pa.Table:
    """OUT/scored + funnel.json as the score job writes them, with deterministic scores."""
    clips = read_parts(out / "clips", CLIP_SCHEMA)
    n = clips.num_rows
    ok = [s == STATUS_OK for s in clips.column(STATUS).to_pylist()]
    scores = {
        MOTION: [0.3 * i if o else None for i, o in enumerate(ok)],
        SHARPNESS: [60.0 + 25.0 * i if o else None for i, o in enumerate(ok)],
        BRIGHTNESS: [100.0 + i if o else None for i, o in enumerate(ok)],
        BLACK_FRACTION: [0.9 if i == 1 else 0.0 if o else None for i, o in enumerate(ok)],
        AESTHETIC: [float((i * 7) % 5) if o else None for i, o in enumerate(ok)],
        IS_STATIC: [i % 4 == 0 if o else None for i, o in enumerate(ok)],
    }
    table, steps = apply_cascade(set_columns(clips, scores), FILTERS)
    write_parquet_atomic(table, out / "scored" / "part-00000.parquet")
    cfg = dataclasses.replace(score_config.SMOKE, filters=FILTERS)
    write_json_atomic(
        funnel_report(steps, cfg, smoke=cfg.smoke, model=score.model_label(cfg)),
        out / "scored" / "_funnel.json",
    )
    assert n >= 8 and sum(table.column(KEPT).to_pylist()) >= 2  # the fixture exercises both groups
    return table


def _caption_out(out: Path, scored: pa.Table) -> pa.Table:
    kept = scored.filter(pa.array([bool(k) for k in scored.column(KEPT).to_pylist()]))
    n = kept.num_rows
    caps = set_columns(
        kept,
        {
            CAPTION: [EVIL] + [f"caption {i}" for i in range(1, n)],
            CAPTION_SHORT: ["short"] * n,
            CAPTION_MODEL: ["smoke:qwen2_5_vl"] * n,
            PROMPT_VERSION: ["v1"] * n,
        },
    )
    write_parquet_atomic(caps, out / "captions" / "part-abc.parquet")
    return caps


def _links(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', page)


def _count(page: str, attr: str, key: str) -> int:
    m = re.search(rf'data-{attr}="{re.escape(html.escape(key, quote=True))}">(\d+)<', page)
    assert m, f"no data-{attr}={key!r} cell in the page"
    return int(m[1])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> tuple[Path, pa.Table, pa.Table]:
    out = _split_out(tmp_path_factory.mktemp("report"))
    scored = _score_out(out)
    return out, scored, _caption_out(out, scored)


def test_report_of_a_smoke_run(full_run):
    out, scored, caps = full_run
    index = report.write_report(
        out,
        run_config={"preset": "smoke", "note": "<b>bold</b>"},
        stage_timings={"split": 1.5, "score": 2.25},
        preset_name="smoke",
        random_models=True,
    )
    page = index.read_text()
    assert index == out / "report" / "index.html"
    assert RANDOM_MODELS_WARNING in page.splitlines()[0]
    body = page.split("<body>", 1)[1]
    assert body.lstrip().startswith('<div class="banner" id="random-models">')

    # every picture or link is relative and exists on disk (the page opens from disk)
    links = _links(page)
    assert links and all(not re.match(r"^(/|[a-z]+:)", u) for u in links)
    assert all((index.parent / u).is_file() for u in links), [
        u for u in links if not (index.parent / u).is_file()
    ]

    # previews: one animated GIF per ok clip shown (the still clip too), histograms as PNG
    gifs = [index.parent / u for u in links if u.endswith(".gif")]
    ok = [r for r in scored.to_pylist() if r[STATUS] == STATUS_OK]
    assert len(gifs) == len(ok)  # all fit under the cap of 24 per group
    for g in gifs:
        with Image.open(g) as im:
            assert im.format == "GIF" and im.n_frames > 1
    pngs = {Path(u).name for u in links if u.endswith(".png")}
    assert pngs == {
        f"hist-{c}.png" for c in (AESTHETIC, MOTION, SHARPNESS, BRIGHTNESS, BLACK_FRACTION, IS_STATIC)
    }

    # the funnel equals the tables
    videos = read_parts(out / "videos", VIDEO_SCHEMA)
    clips = read_parts(out / "clips", CLIP_SCHEMA)
    kept = [bool(k) for k in scored.column(KEPT).to_pylist()]
    assert _count(page, "key", "videos_in") == videos.num_rows == 3
    assert _count(page, "key", "videos_error") == videos.column(STATUS).to_pylist().count(STATUS_ERROR) == 1
    assert _count(page, "key", "clips_split") == clips.column(STATUS).to_pylist().count(STATUS_OK)
    assert _count(page, "key", "kept") == sum(kept)
    assert _count(page, "key", "dropped") == len(kept) - sum(kept)
    assert _count(page, "key", "captioned") == caps.num_rows
    drops = Counter(
        report.reason_key(d) for d, k in zip(scored.column(DROP_REASON).to_pylist(), kept) if not k
    )
    assert {"black_fraction <= 0.5", "sharpness >= 100"} <= set(drops) and any("cutoff" in d for d in drops)
    for reason, n in drops.items():
        assert _count(page, "drop", reason) == n
    assert 'data-key="encoded">not run<' in page
    assert (
        re.search(r"id='not-run'>[^<]*encode", page) and "caption," not in page.split("id='not-run'>")[1][:80]
    )

    # data is escaped: the only markup is ours
    assert "<script" not in page and "<b>bold</b>" not in page
    assert html.escape(EVIL, quote=True) in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and ">2.25<" in page  # run config and timings shown

    # thresholds drawn: the absolute rules from funnel.json, the percentile cutoff from drop reasons
    lines = report.thresholds_of(report.load_outputs(out), {MOTION: 0.5})
    assert [ln.value for ln in lines[SHARPNESS]] == [100.0] and [ln.value for ln in lines[MOTION]] == [0.5]
    assert len(lines[AESTHETIC]) == 1 and "cutoff" in lines[AESTHETIC][0].label

    # the CLI rebuilds the same page from OUT alone (config and timings kept in report/run.json)
    first_gif = gifs[0].stat().st_mtime_ns
    assert report.main(["--output", str(out)]) == 0
    again = index.read_text()
    assert RANDOM_MODELS_WARNING in again.splitlines()[0] and "&lt;b&gt;bold&lt;/b&gt;" in again
    assert gifs[0].stat().st_mtime_ns == first_gif  # previews are reused, not decoded again


def test_report_after_split_only_says_what_has_not_run(tmp_path, capsys):
    out = _split_out(tmp_path)
    index = report.write_report(out, max_previews=2)
    page = index.read_text()
    assert page.splitlines()[0] == "<!DOCTYPE html>" and RANDOM_MODELS_WARNING not in page
    assert "id='latents-none'>not encoded yet" in page and "data-latents=" not in page
    assert re.search(r"id='not-run'>[^<]*score \+ filter, caption, encode", page)
    assert 'data-key="kept">not run<' in page and _count(page, "key", "videos_in") == 3
    assert "hist-" not in page
    gifs = [u for u in _links(page) if u.endswith(".gif")]
    assert len(gifs) == 2 and all((index.parent / u).is_file() for u in gifs)
    # the bad input, by reason: the reason without its file name, so the same failure of many files is one row
    assert _count(page, "key", "videos_error") == 1 and "&lt;file&gt;" in page and "broken.mp4" not in page

    # a later stage's output alone: counted, and its smoke flag alone puts the warning first
    # (a manifest of this format and schema: the report reads it through the validating reader)
    write_json_atomic(
        {
            "format": MANIFEST_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "smoke": True,
            "counts": {"rows": 3, "shards": 1},
            "shards": [],
        },
        out / "latents" / ".manifest.json",
    )
    page = report.write_report(out, max_previews=2).read_text()
    assert RANDOM_MODELS_WARNING in page.splitlines()[0]
    assert _count(page, "key", "encoded") == 3 and _count(page, "key", "shards") == 1

    assert report.main(["--output", str(tmp_path / "nope")]) == 2
    assert "--output must be an existing run folder" in capsys.readouterr().err


def _copy_out(full_run, dst: Path) -> Path:
    """A copy of the full run's OUT (its report too, so the previews are reused, not decoded again)."""
    out, _, _ = full_run
    return Path(shutil.copytree(out, dst / "out"))


def _cells(page: str, attr: str) -> dict[str, str]:
    """data-<attr> key -> the text of its cell (unescaped)."""
    found = re.findall(rf'data-{attr}="([^"]*)">([^<]*)</td>', page)
    return {html.unescape(k): html.unescape(v) for k, v in found}


def test_latents_section_shows_what_the_manifest_records(full_run, tmp_path):
    out = _copy_out(full_run, tmp_path)
    metric = ROUNDTRIP_PSNR.lstrip("_")  # how the shard writer names a metric column in the manifest

    def shard(name: str, groups: list[tuple[list[int], int]], psnr: list[float]) -> dict:
        return {
            "file": name,
            "rows": sum(n for _, n in groups),
            "bytes": 1,
            "sha256": "0" * 64,
            "row_groups": [{"rows": n, "latent_shape": shape} for shape, n in groups],
            "metrics": {metric: {"n": len(psnr), "mean": sum(psnr) / len(psnr), "values": psnr}}
            if psnr
            else {},
        }

    meta = {
        "vae": {"vae_id": "wan-2.1-vae <x>"},
        "text_encoder": {"text_encoder_id": "umt5-xxl"},
        "smoke": False,
    }
    shards = [
        shard("shard-a-00000.parquet", [([16, 3, 6, 10], 5), ([16, 3, 8, 8], 2)], [30.125, 31.5]),
        shard("shard-a-00001.parquet", [([16, 3, 6, 10], 4)], [28.75]),
        shard("shard-a-00002.parquet", [([16, 5, 10, 6], 1)], []),
    ]
    manifest = build_manifest(meta, shards)  # the manifest as jobs.encode writes it
    write_json_atomic(manifest, out / "latents" / ".manifest.json")

    page = report.write_report(out).read_text()
    latents = _cells(page, "latents")
    assert int(latents["rows"]) == manifest["counts"]["rows"] == 12
    assert int(latents["shards"]) == manifest["counts"]["shards"] == 3
    assert latents["vae"] == "wan-2.1-vae <x>" and latents["text-encoder"] == "umt5-xxl"
    values = [v for s in manifest["shards"] for v in s["metrics"].get(metric, {}).get("values", [])]
    assert float(latents["psnr-mean"]) == round(sum(values) / len(values), 2) == 30.12
    assert latents["psnr-range"] == "28.75 – 31.5" and int(latents["psnr-clips"]) == 3
    shapes = {k: int(v) for k, v in _cells(page, "latent-shape").items()}
    assert shapes == manifest["counts"]["by_latent_shape"] == {"16x3x6x10": 9, "16x3x8x8": 2, "16x5x10x6": 1}
    assert "not encoded yet" not in page and _count(page, "key", "encoded") == 12
    assert metric == build.ROUNDTRIP_PSNR  # the report's copy of the name (it does not import torch)


def test_run_config_is_a_table_of_its_leaves(full_run, tmp_path):
    out = _copy_out(full_run, tmp_path)
    cfg = {
        "score": {
            "filters": {
                "rules": [
                    {"column": "sharpness", "op": ">=", "threshold": 100.0},
                    {"column": "aesthetic", "op": ">=", "share": 0.7},
                ],
                "near_dup_cosine": 0.95,
                "exact_dedup": True,
            },
            "device": None,
        },
        "split": {"windows": [8, 14, 22], "subfolder": ""},
        "note": "<b>bold</b>",
        "edits": {},
    }
    page = report.write_report(out, run_config=cfg).read_text()
    assert _cells(page, "config") == {  # one row per leaf, by its dotted key
        "score.filters.rules": "column=sharpness, op=>=, threshold=100.0\ncolumn=aesthetic, op=>=, share=0.7",
        "score.filters.near_dup_cosine": "0.95",
        "score.filters.exact_dedup": "true",
        "score.device": "null",
        "split.windows": "8, 14, 22",
        "split.subfolder": '""',
        "note": "<b>bold</b>",
        "edits": "{}",
    }
    assert "<pre" not in page and "<b>bold</b>" not in page and '"near_dup_cosine"' not in page
    # a rebuild from run.json alone shows the same rows
    assert report.main(["--output", str(out)]) == 0
    assert _cells((out / "report" / "index.html").read_text(), "config") == _cells(page, "config")


def _dup_out(full_run, dst: Path) -> tuple[Path, pa.Table]:
    """The full run's OUT, re-scored with near-duplicates (clips in threes share an embedding) and
    one exact duplicate (a copy of a clip from another source file), with previews of one card each."""
    out = _copy_out(full_run, dst)
    for stale in ("scored", "captions", "report"):
        shutil.rmtree(out / stale)
    clips = read_parts(out / "clips", CLIP_SCHEMA)
    ok = clips.filter(pa.array([s == STATUS_OK for s in clips.column(STATUS).to_pylist()]))
    copy = ok.slice(0, 1)
    copy = copy.set_column(copy.schema.get_field_index(SOURCE_URI), SOURCE_URI, pa.array(["/zz/copy.mp4"]))
    table = pa.concat_tables([ok, copy])
    n = table.num_rows
    dim = 8
    emb = [[1.0 if d == (i // 3) % dim else 0.0 for d in range(dim)] for i in range(n)]
    scores = {
        CLIP_EMBEDDING: emb,
        SHARPNESS: [200.0] * n,
        BLACK_FRACTION: [0.0] * n,
        AESTHETIC: [float((i * 7) % 5) for i in range(n)],
    }
    cfg = FilterConfig(rules=(Rule(AESTHETIC, ">=", share=0.9),), exact_dedup=True, near_dup_cosine=0.95)
    scored, _ = apply_cascade(set_columns(table, scores), cfg)
    write_parquet_atomic(scored, out / "scored" / "part-00000.parquet")
    return out, scored


def _cards(page: str) -> list[dict[str, str]]:
    """Each card's id, clip_id, source_uri (unescaped) and first reason (HTML), in page order."""
    cards = []
    for chunk in page.split('<div class="card ')[1:]:
        m = re.match(r'[a-z]+" id="([^"]+)" data-clip="([^"]+)">.*?<div class="src" title="([^"]*)">', chunk)
        assert m, chunk[:200]
        reason = re.search(r'<div class="reason">(.*?)</div>', chunk)
        cards.append(
            {
                "id": m[1],
                "clip": html.unescape(m[2]),
                "uri": html.unescape(m[3]),
                "reason": reason[1] if reason else "",
            }
        )
    return cards


def test_duplicate_reasons_link_to_their_keepers_cards(full_run, tmp_path):
    out, scored = _dup_out(full_run, tmp_path)
    previews = 2
    page = report.write_report(out, max_previews=previews).read_text()
    cards = _cards(page)

    # every card has an id, the ids are unique, and every in-page link lands on an element of the page
    assert len(cards) == page.count('<div class="card ') and len({c["id"] for c in cards}) == len(cards)
    ids = set(re.findall(r' id="([^"]+)"', page)) | set(re.findall(r" id='([^']+)'", page))
    hrefs = re.findall(r'href="#([^"]*)"', page)
    assert hrefs and set(hrefs) <= ids, set(hrefs) - ids

    # each duplicate shown links to its keeper's card, the rest of its reason as it was: a near
    # duplicate's names the keeper's clip_id, an exact one's (same clip_id) the keeper's file
    rows = {(r[CLIP_ID], r[SOURCE_URI]): r for r in scored.to_pylist()}
    by_id = {c["id"]: c for c in cards}
    kinds = Counter()
    for c in cards:
        row = rows[(c["clip"], c["uri"])]
        kind = (row[DROP_REASON] or "").split(":", 1)[0]
        if kind not in (NEAR_DUP, EXACT_DUP):
            continue
        kinds[kind] += 1
        m = re.fullmatch(r'(.*)<a href="#([^"]+)"[^>]*>([^<]*)</a>(.*)', c["reason"])
        assert m, c["reason"]
        assert html.unescape(m[1] + m[3] + m[4]) == row[DROP_REASON]
        keeper = by_id[m[2]]
        assert keeper["clip"] == row[DUPLICATE_OF]
        assert not (rows[(keeper["clip"], keeper["uri"])][DROP_REASON] or "").startswith(EXACT_DUP)
        if kind == NEAR_DUP:
            assert html.unescape(m[3]) == keeper["clip"] != c["clip"]
        else:
            assert keeper["clip"] == c["clip"] and html.unescape(m[3]) == keeper["uri"] != c["uri"]
    assert kinds[NEAR_DUP] and kinds[EXACT_DUP], kinds

    # the keepers were added to the bounded sample: some were not drawn by it
    sample = fold.PreviewSample(previews, previews)
    sample.add(scored.select(list(fold.CARD_COLUMNS)))
    drawn = {(r[CLIP_ID], r[SOURCE_URI]) for picked in sample.picks() for r in picked}
    assert {(c["clip"], c["uri"]) for c in cards} - drawn
    assert len(cards) <= 2 * len(drawn)  # at most one keeper per card drawn


def test_a_keeper_not_shown_is_named_in_plain_text():
    row = {CLIP_ID: "b", DROP_REASON: f"{NEAR_DUP}: cosine=0.9900 >= 0.95 with a<&>", "duplicate_of": "a<&>"}
    ids, targets = report_html.card_anchors([row])
    assert report_html.reason_html(row, targets) == html.escape(row[DROP_REASON], quote=True) and ids == [
        "clip-b"
    ]
    linked = report_html.reason_html(row, {"a<&>": report_html.anchor_id("a<&>")})
    assert linked.endswith(
        'with <a href="#clip-a_3c__26__3e_" title="clip a&lt;&amp;&gt;">a&lt;&amp;&gt;</a>'
    )
