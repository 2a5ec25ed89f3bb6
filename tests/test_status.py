"""python -m jobs.status OUT: counts from footers, markers, funnel and summaries (no Ray)."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

from curate import schema as S
from curate.io import layout
from curate.io.storage import mark_done, write_json_atomic
from jobs.runtime import lease
from jobs.status import format_status, run_status


def _part(out, folder, key, rows):
    path = layout.part_path(layout.folder(out, folder), key)
    (out / folder).mkdir(parents=True, exist_ok=True)
    pq.write_table(S.table_from_rows(rows), path)
    return path


def _rows(n_ok, errors_at=None):
    rows = [{S.CLIP_ID: f"c{i}", S.SOURCE_URI: "/v.mp4", S.STATUS: S.STATUS_OK} for i in range(n_ok)]
    if errors_at:
        rows += [
            {
                S.CLIP_ID: "e",
                S.SOURCE_URI: "/bad.mp4",
                S.STATUS: S.STATUS_ERROR,
                S.FAILED_STAGE: errors_at,
                S.ERROR: "boom",
            }
        ]
    return rows


def test_status_counts_errors_redo_and_kept_by_rule(tmp_path):
    out = tmp_path
    _part(out, layout.SCORED, "aaaa", _rows(3, errors_at="split"))
    _part(out, layout.SCORED, "bbbb", _rows(2, errors_at="score"))
    mark_done(out, "score", "aaaa", "h1", rows=4)
    write_json_atomic(
        {
            "clips_in": 7,
            "kept": 3,
            "smoke": True,
            "config_hash": "f1",
            "steps": [
                {"step": "status", "in": 7, "dropped": 2, "out": 5},
                {"step": "aesthetic >= 4", "in": 5, "dropped": 2, "out": 3},
            ],
        },
        layout.funnel_path(layout.folder(out, layout.SCORED)),
    )
    write_json_atomic(
        {"wall_seconds": 12.5, "stage_seconds": {"decide": 1.5}}, layout.summary_path(out, "curate")
    )
    st = run_status(str(out))
    sc = st["stages"][layout.SCORED]
    assert (sc["parts"], sc["done"], sc["rows"], sc["errors"]) == (2, 1, 7, 2)
    assert sc["errors_by_stage"] == {"split": 1, "score": 1}
    assert st["markers"] == {"score": {"h1": 1}}
    assert st["funnel"]["dropped_by_rule"] == {"status": 2, "aesthetic >= 4": 2}
    assert st["rerun_would_redo"] == ["scored: 1 of 2 parts have no marker and would be redone"]
    text = format_status(st)
    assert "kept 3 of 7  [SMOKE]" in text and "decide 1.5s" in text
    assert st["held"] == []
    with lease.hold(str(out / layout.CAPTIONS), "jobs.caption") as held:
        text = format_status(run_status(str(out)))
    assert f"held: {out / layout.CAPTIONS / '_lease.json'}: {held.holder.describe()}" in text


def test_status_cli_on_an_empty_folder_is_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "jobs.status", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("error: OUT must hold a run") and len(p.stderr.strip().splitlines()) == 1
    _part(tmp_path, layout.CLIPS, "cccc", _rows(2))
    p = subprocess.run(
        [sys.executable, "-m", "jobs.status", str(tmp_path), "--json"], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["stages"][layout.CLIPS]["rows"] == 2
