"""The report shows the frame-model scores: histograms with their rule thresholds, camera-motion
counts, caption_clip_score, and the caption QA grounding flags."""

from __future__ import annotations

import json

from curate import schema as S
from curate.decisions import filters
from curate.decisions.filters import FilterConfig, Rule, apply_cascade
from curate.io.storage import write_json_atomic, write_parquet_atomic
from jobs import report


def test_report_has_frame_score_histograms_and_camera_counts(tmp_path):
    out = tmp_path / "out"
    cams = ["static", "pan_left", "pan_left", "zoom_in", "complex", "static"]
    rows = []
    for i, cam in enumerate(cams):
        rows.append(
            {
                S.CLIP_ID: f"c{i}",
                S.VIDEO_ID: "v",
                S.SOURCE_URI: str(tmp_path / "missing.mp4"),
                S.START_FRAME: 0,
                S.END_FRAME: 24,
                S.START_PTS: 0.0,
                S.END_PTS: 1.0,
                S.FPS: 24.0,
                S.WIDTH: 64,
                S.HEIGHT: 64,
                S.STATUS: S.STATUS_OK,
                S.MOTION: 0.1,
                S.SHARPNESS: 200.0,
                S.BRIGHTNESS: 0.5,
                S.FLOW_MAGNITUDE: 0.05 * i,
                S.CAMERA_MOTION: cam,
                S.TEXT_AREA: 0.12 if i == 3 else 0.01 * i,
                S.TEXT_BOXES: i,
                S.OCR_TEXT: ["SALE <b>"] if i == 1 else [],
                S.NSFW: 0.9 if i == 5 else 0.1,
            }
        )
    cfg = FilterConfig(
        rules=(Rule(S.NSFW, "<=", filters.NSFW_MAX), Rule(S.TEXT_AREA, "<=", filters.TEXT_AREA_MAX)),
        exact_dedup=False,
        near_dup_cosine=None,
    )
    scored, steps = apply_cascade(S.table_from_rows(rows), cfg)
    write_parquet_atomic(scored, out / "scored" / "part-00000.parquet")
    write_json_atomic(
        {"clips_in": 6, "steps": steps, "kept": 4, "dropped": 2, "smoke": False},
        out / "scored" / "_funnel.json",
    )
    kept = [r for r in scored.to_pylist() if r[S.KEPT]]
    for j, r in enumerate(kept):
        r.update(
            {
                S.CAPTION: "A dog runs.",
                S.CAPTION_SHORT: "A dog.",
                S.CAPTION_MODEL: "stub",
                S.PROMPT_VERSION: "dense-v2",
                S.CAPTION_CLIP_SCORE: 0.2 + 0.01 * j,
                S.CAPTION_QA: json.dumps({"grounding": ["camera: caption says static, measured pan_left"]}),
            }
        )
    write_parquet_atomic(S.table_from_rows(kept), out / "captions" / "part-00000.parquet")

    page = report.write_report(out, preset_name="default").read_text()
    media = out / "report" / "media"
    for col in (S.FLOW_MAGNITUDE, S.TEXT_AREA, S.TEXT_BOXES, S.NSFW, S.CAPTION_CLIP_SCORE):
        assert (media / f"hist-{col}.png").is_file(), col
    lines = report.thresholds_of(report.load_outputs(out))
    assert [ln.value for ln in lines[S.NSFW]] == [filters.NSFW_MAX]
    assert [ln.value for ln in lines[S.TEXT_AREA]] == [filters.TEXT_AREA_MAX]
    funnel = json.loads((out / "report" / "funnel.json").read_text())
    assert funnel["camera_motion"] == {
        "static": {"kept": 1, "dropped": 1},
        "pan_left": {"kept": 2, "dropped": 0},
        "zoom_in": {"kept": 0, "dropped": 1},
        "complex": {"kept": 1, "dropped": 0},
    }
    assert 'data-camera-kept="pan_left">2<' in page and 'data-camera-dropped="zoom_in">1<' in page
    assert funnel["drops"] == {"nsfw <= 0.6": 1, "text_area <= 0.05": 1}
    assert "SALE &lt;b&gt;" in page and "SALE <b>" not in page  # OCR text is data: escaped
    assert "caption QA: camera: caption says static, measured pan_left" in page
    assert "caption_clip_score: 0.2" in page
