"""The report folds OUT one Parquet part at a time: its numbers equal those of the concatenated
tables, its choice of clips to show does not depend on how the rows are split into parts or in
which order the parts are listed, and it never holds more than one part's rows.

OUT is synthetic (schema helpers and the real filter cascade; no Ray, no models, no media):
several parts per folder, some with several row groups, scores with nulls, NaN and inf.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import schema as S
from curate.decisions.filters import FilterConfig, Rule, apply_cascade
from curate.errors import error_key
from curate.io import storage
from curate.io.storage import write_json_atomic
from curate.scores.flow import CAMERA_CLASSES
from jobs import report
from jobs.report import build, fold, parts
from jobs.report.media import histogram_edges

FILTERS = FilterConfig(
    rules=(
        Rule(S.BLACK_FRACTION, "<=", 0.5),
        Rule(S.SHARPNESS, ">=", 100.0),
        Rule(S.AESTHETIC, ">=", share=0.7),
    ),
    near_dup_cosine=None,
)
PREVIEWS = 4  # fewer than the kept and the dropped clips: the choice matters


def _tables(n_videos: int = 8, clips_per_video: int = 9) -> dict[str, pa.Table]:
    """videos, clips, scored (through the cascade) and captions of a made-up run."""
    rng = np.random.default_rng(7)
    videos, clips = [], []
    for v in range(n_videos):
        vid, uri = f"{v:032x}", f"/data/in/v{v}.mp4"
        if v % 4 == 3:  # unreadable: the same reason for every file once error_key drops its name
            videos.append(
                {
                    S.VIDEO_ID: vid,
                    S.SOURCE_URI: uri,
                    S.STATUS: S.STATUS_ERROR,
                    S.FAILED_STAGE: "probe",
                    S.ERROR: f"InvalidDataError: Invalid data found when processing input: '{uri}'",
                }
            )
            continue
        videos.append({S.VIDEO_ID: vid, S.SOURCE_URI: uri, S.STATUS: S.STATUS_OK})
        for c in range(clips_per_video):
            clips.append(
                {
                    S.CLIP_ID: f"{vid}-{c:07d}",
                    S.VIDEO_ID: vid,
                    S.SOURCE_URI: uri,
                    S.START_FRAME: 24 * c,
                    S.END_FRAME: 24 * c + 24,
                    S.START_PTS: float(c),
                    S.END_PTS: c + 1.0,
                    S.FPS: 24.0,
                    S.WIDTH: 64,
                    S.HEIGHT: 36,
                    S.STATUS: S.STATUS_OK,
                }
            )
        if v == 1:  # a clip row the split could not decode
            clips.append(
                {
                    S.CLIP_ID: f"{vid}-error-split",
                    S.VIDEO_ID: vid,
                    S.SOURCE_URI: uri,
                    S.STATUS: S.STATUS_ERROR,
                    S.FAILED_STAGE: "split",
                    S.ERROR: f"decode failed in {uri}",
                }
            )
    table = S.table_from_rows(clips)
    n = table.num_rows
    ok = [r[S.STATUS] == S.STATUS_OK for r in clips]

    def score(values):
        return [float(x) if o else None for x, o in zip(values, ok)]

    flow = score(rng.uniform(0, 2, n))
    flow[3], flow[4], flow[20] = math.nan, math.inf, math.nan  # non-finite: not in the bins, stats unusable
    brightness = score(rng.uniform(20, 200, n))
    brightness[5] = None  # an ok clip without a value
    scores = {
        S.MOTION: score(rng.uniform(0, 3, n)),
        S.SHARPNESS: score(rng.normal(150, 60, n)),
        S.BRIGHTNESS: brightness,
        S.BLACK_FRACTION: score(np.where(rng.uniform(size=n) < 0.15, 0.9, 0.05)),
        S.AESTHETIC: score(rng.uniform(2, 7, n)),
        S.FLOW_MAGNITUDE: flow,
        S.IS_STATIC: [bool(x) if o else None for x, o in zip(rng.uniform(size=n) < 0.3, ok)],
        S.TEXT_BOXES: [int(x) if o else None for x, o in zip(rng.integers(0, 5, n), ok)],
        S.CAMERA_MOTION: [str(rng.choice(CAMERA_CLASSES)) if o and i % 7 else None for i, o in enumerate(ok)],
    }
    scored, steps = apply_cascade(S.set_columns(table, scores), FILTERS)
    kept = scored.filter(pa.array([bool(k) for k in scored.column(S.KEPT).to_pylist()]))
    m = kept.num_rows
    caps = S.set_columns(
        kept,
        {
            S.CAPTION: [f"caption {i}" for i in range(m)],
            S.CAPTION_SHORT: ["short"] * m,
            S.CAPTION_MODEL: ["stub"] * m,
            S.PROMPT_VERSION: ["v1"] * m,
            S.CAPTION_CLIP_SCORE: [None if i == 2 else 0.1 + 0.01 * i for i in range(m)],
            S.STATUS: [S.STATUS_ERROR if i == 1 else S.STATUS_OK for i in range(m)],
            S.ERROR: ["caption failed" if i == 1 else None for i in range(m)],
        },
    )
    assert kept.num_rows > PREVIEWS and n - kept.num_rows > PREVIEWS
    return {
        "videos": S.table_from_rows(videos, S.VIDEO_SCHEMA),
        "clips": table,
        "scored": scored,
        "captions": caps,
        "steps": steps,
    }


def _write(
    tables: dict, out: Path, parts_of: int, *, shuffle: int | None = None, reverse: bool = False
) -> Path:
    """Each table in `parts_of` parts of uneven sizes (rows shuffled by seed `shuffle`), some with
    several row groups; `reverse` names the parts so that they list in the opposite order."""
    for folder in ("videos", "clips", "scored", "captions"):
        t = tables[folder]
        if shuffle is not None:
            t = t.take(np.random.default_rng(shuffle).permutation(t.num_rows))
        cuts = sorted(
            {round(t.num_rows * (i / parts_of) ** 1.3) for i in range(1, parts_of)} - {0, t.num_rows}
        )
        bounds = [0, *cuts, t.num_rows]
        (out / folder).mkdir(parents=True)
        for j, (a, b) in enumerate(itertools.pairwise(bounds)):
            name = f"part-{(parts_of - j) if reverse else j:05d}.parquet"
            pq.write_table(t.slice(a, b - a), out / folder / name, row_group_size=5 if j % 2 else None)
    write_json_atomic({"steps": tables["steps"]}, out / "scored" / "_funnel.json")
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[dict, Path]:
    tables = _tables()
    return tables, _write(tables, tmp_path_factory.mktemp("fold") / "out", 4)


def _status(t: pa.Table, status: str) -> int:
    return t.column(S.STATUS).to_pylist().count(status)


def _errors(t: pa.Table) -> dict[str, int]:
    return dict(
        Counter(
            f"{r[S.FAILED_STAGE]}: {error_key(r[S.ERROR])}"
            for r in t.to_pylist()
            if r[S.STATUS] == S.STATUS_ERROR
        )
    )


def test_numbers_equal_those_of_the_concatenated_tables(run):
    tables, out = run
    videos, clips, scored, caps = (tables[k] for k in ("videos", "clips", "scored", "captions"))
    r = report.load_outputs(out, max_previews=PREVIEWS)
    funnel = build.compute_funnel(r)
    kept = [bool(k) for k in scored.column(S.KEPT).to_pylist()]
    assert funnel["counts"] == {
        "videos_in": videos.num_rows,
        "videos_error": _status(videos, S.STATUS_ERROR),
        "clips_split": _status(clips, S.STATUS_OK),
        "clips_scored": _status(scored, S.STATUS_OK),
        "clips_error": _status(scored, S.STATUS_ERROR),
        "kept": sum(kept),
        "dropped": len(kept) - sum(kept),
        "captioned": _status(caps, S.STATUS_OK),
        "caption_error": _status(caps, S.STATUS_ERROR),
    }
    assert (
        funnel["video_errors"] == _errors(videos) and len(funnel["video_errors"]) == 1
    )  # one reason, 2 files
    assert funnel["clip_errors"] == _errors(scored) == {"split: decode failed in <file>": 1}
    drops = Counter(
        report.reason_key(d or "(no reason recorded)")
        for d, k in zip(scored.column(S.DROP_REASON).to_pylist(), kept)
        if not k
    )
    assert funnel["drops"] == dict(drops) and len(drops) >= 4  # status, black, sharpness, aesthetic cutoff
    rows = [x for x in scored.to_pylist() if x[S.STATUS] == S.STATUS_OK]
    camera: dict = {}
    for x in rows:
        if x[S.CAMERA_MOTION]:
            camera.setdefault(x[S.CAMERA_MOTION], Counter())["kept" if x[S.KEPT] else "dropped"] += 1
    assert {c: {g: n[g] for g in ("kept", "dropped")} for c, n in camera.items()} == funnel["camera_motion"]

    # histograms: the fold's bins are those of numpy over all status-ok values, with edges from
    # the exact finite range (this OUT has no score on error rows) widened to the rule lines
    lines = build.thresholds_of(r)
    assert "cutoff" in lines[S.AESTHETIC][0].label  # the percentile cutoff, from the drop reasons
    for col in fold.SCORE_COLUMNS:
        values = np.array([np.nan if x[col] is None else float(x[col]) for x in rows])  # (ok rows,)
        flags = np.array([bool(x[S.KEPT]) for x in rows])
        h = r.scored.hists[col]
        assert h.rows == len(rows) and h.with_value == sum(x[col] is not None for x in rows), col
        if not h.with_value:
            continue
        finite = np.isfinite(values)
        rule_lines = [ln.value for ln in lines.get(col, []) if "cutoff" not in ln.label]
        bounds = (values[finite].min(), values[finite].max())
        assert np.array_equal(h.edges, histogram_edges(bounds, rule_lines, boolean=fold.is_boolean(col))), col
        assert np.array_equal(h.kept, np.histogram(values[finite & flags], h.edges)[0]), col
        assert np.array_equal(h.dropped, np.histogram(values[finite & ~flags], h.edges)[0]), col
        assert h.kept.sum() + h.dropped.sum() == h.finite == finite.sum(), col
    assert (
        r.scored.hists[S.FLOW_MAGNITUDE].finite == r.scored.hists[S.FLOW_MAGNITUDE].rows - 3
    )  # NaN, inf, NaN
    cap_scores = [x[S.CAPTION_CLIP_SCORE] for x in caps.to_pylist() if x[S.STATUS] == S.STATUS_OK]
    assert r.captions.hist.finite == sum(v is not None for v in cap_scores) == r.captions.hist.kept.sum()

    # the cards' captions: exactly those of the clips shown that have one
    shown = {x[S.CLIP_ID] for x in r.shown_kept + r.shown_dropped}
    assert set(r.captions.by_clip) == shown & set(caps.column(S.CLIP_ID).to_pylist()) != set()


def _rank(clip_id: str) -> bytes:
    return hashlib.blake2b(clip_id.encode(), digest_size=8).digest()


def test_the_clips_shown_do_not_depend_on_the_parts(run, tmp_path):
    tables, out = run
    a = report.load_outputs(out, max_previews=PREVIEWS)
    b = report.load_outputs(_write(tables, tmp_path / "b", 7, shuffle=3, reverse=True), max_previews=PREVIEWS)
    one = report.load_outputs(_write(tables, tmp_path / "one", 1), max_previews=PREVIEWS)
    ids = [[x[S.CLIP_ID] for x in rows] for r in (a, b, one) for rows in (r.shown_kept, r.shown_dropped)]
    assert ids[0::2] == [ids[0]] * 3 and ids[1::2] == [ids[1]] * 3
    assert len(ids[0]) == len(ids[1]) == PREVIEWS
    for r in (b, one):
        assert build.compute_funnel(r) == build.compute_funnel(a)
        assert r.captions.by_clip == a.captions.by_clip
        for col in fold.SCORE_COLUMNS:
            assert np.array_equal(r.scored.hists[col].kept, a.scored.hists[col].kept)
            assert np.array_equal(r.scored.hists[col].dropped, a.scored.hists[col].dropped)
    # which ones: the kept clips with the smallest blake2b(clip_id); dropped ones round-robin over reasons
    scored = tables["scored"].to_pylist()
    assert (
        sorted(ids[0])
        == ids[0]
        == sorted(sorted((x[S.CLIP_ID] for x in scored if x[S.KEPT]), key=_rank)[:PREVIEWS])
    )
    reasons = [report.reason_key(x[S.DROP_REASON]) for x in a.shown_dropped]
    assert len(set(reasons)) == min(PREVIEWS, len(build.compute_funnel(a)["drops"]))


def test_the_report_never_holds_more_than_one_part(run, monkeypatch):
    tables, out = run
    heavy = {S.CLIP_EMBEDDING, *S.columns_of(S.LATENT_GROUP)}
    sizes: list[int] = []
    reads: list[str] = []
    read_part, read_table = parts.read_part, storage.read_table

    def recorded(part, columns, schema=S.CLIP_SCHEMA):
        assert not heavy & set(columns), columns
        t = read_part(part, columns, schema)
        sizes.append(t.num_rows)
        return t

    def counted(uri, columns=None):
        reads.append(str(uri))
        return read_table(uri, columns)

    monkeypatch.setattr(parts, "read_part", recorded)
    monkeypatch.setattr(storage, "read_table", counted)
    page = report.write_report(out, max_previews=PREVIEWS, workers=1).read_text()
    largest = max(pq.read_metadata(p).num_rows for p in out.glob("*/*.parquet"))
    assert max(sizes) == largest and sum(sizes) > 2 * largest
    assert len(reads) == len(sizes)  # every row read went through the part reader
    assert sum(sizes) >= sum(tables[k].num_rows for k in ("videos", "clips", "scored", "captions"))
    assert f'data-key="kept">{sum(bool(k) for k in tables["scored"].column(S.KEPT).to_pylist())}<' in page


def test_report_of_a_remote_out_reads_the_parts_where_they_are(run, s3, tmp_path, monkeypatch):
    tables, _ = run
    src = _write(tables, tmp_path / "out", 4)
    uri = storage.join(s3.make_bucket("report-fold"), "runs", "out")
    storage.upload_tree(str(src), uri)
    local = report.write_report(src, max_previews=PREVIEWS, workers=1)
    copied: list[str] = []
    download_tree = storage.download_tree
    monkeypatch.setattr(
        storage, "download_tree", lambda src, dst, **kw: copied.append(src) or download_tree(src, dst, **kw)
    )
    page_uri = report.write_report_to(uri, max_previews=PREVIEWS, workers=1)
    assert page_uri == storage.join(uri, "report", "index.html") and storage.is_file(page_uri)
    assert copied == [storage.join(uri, "report")]  # the previous page only; no table is copied
    assert storage.read_json(storage.join(uri, "report", "funnel.json")) == storage.read_json(
        local.parent / "funnel.json"
    )
    page = storage.read_bytes(page_uri).decode()
    assert "tubelet report: out" in page and f"<span class='src'>{uri}</span>" in page
    names = {storage.basename(p) for p in storage.list_files(storage.join(uri, "report", "media"))}
    assert names == {p.name for p in (local.parent / "media").iterdir()} and "hist-sharpness.png" in names
