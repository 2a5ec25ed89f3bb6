"""Model scores (smoke CLIP through the real loader), decode-once, the cheap gate, dedup on real videos."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from curate.decisions.filters import EXACT_DUP, FilterConfig, Rule, apply_cascade
from curate.errors import StageError
from curate.schema import (
    AESTHETIC,
    BLACK_FRACTION,
    CLIP_EMBEDDING,
    CONFIG_HASH,
    DROP_REASON,
    DUPLICATE_OF,
    FAILED_STAGE,
    KEPT,
    SHARPNESS,
    SOURCE_URI,
    STATUS,
    TUBELET_VERSION,
    set_columns,
    table_from_rows,
    validate,
)
from curate.scores import clip_models, score, score_config
from curate.scores.score_frames import FRAMES, FRAMES_SHAPE, prepare_batch
from curate.shots.clip_rows import clip_rows
from curate.video.decode import DECODE_STATS


@pytest.fixture(scope="module")
def smoke_cfg(tmp_path_factory) -> score_config.ScoreConfig:
    d = clip_models.build_smoke_clip(tmp_path_factory.mktemp("models") / "smoke-clip")
    return dataclasses.replace(score_config.SMOKE, clip_model=str(d), on_error="raise")


@pytest.fixture(scope="module")
def stage(smoke_cfg) -> score.ClipScoreStage:
    st = score.ClipScoreStage(smoke_cfg)
    st.load()
    return st


def test_smoke_clip_round_trips_through_the_loader(smoke_cfg, stage):
    imgs = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    emb, aes = stage.embed(imgs)
    assert emb.shape == (4, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    again = score.ClipScoreStage(smoke_cfg)
    again.load()  # a second load from disk gives the same weights
    emb2, aes2 = again.embed(imgs)
    assert np.allclose(emb, emb2, atol=1e-6) and np.allclose(aes, aes2, atol=1e-6)
    assert not np.allclose(emb[0], emb[1])
    assert "meaningless" in score.model_label(smoke_cfg)


def test_missing_weights_name_them_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TUBELET_WEIGHTS", str(tmp_path))
    with pytest.raises(score.UsageError, match=r"sac\+logos\+ava1-l14-linearMSE\.pth.*curl -L -o"):
        clip_models.load_aesthetic_head(score_config.DEFAULT.aesthetic_head)
    (tmp_path / "empty").mkdir()
    with pytest.raises(score.UsageError, match=r"open_clip_config\.json"):
        clip_models.load_clip(str(tmp_path / "empty"))
    with pytest.raises(
        score.UsageError, match=r"ViT-B-32/laion2b_s34b_b79k.*`hf download laion/CLIP-ViT-B-32-laion2B"
    ):
        clip_models.load_clip("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(score.UsageError, match=r"--local-dir .*/laion/CLIP-ViT-B-32-laion2B"):
        clip_models.load_clip("ViT-B-32", "laion2b_s34b_b79k", weights_dir=str(tmp_path))


def test_head_loads_from_a_cache_name(smoke_cfg, tmp_path, monkeypatch):
    shutil.copy(f"{smoke_cfg.clip_model}/{clip_models.HEAD_FILE}", tmp_path / "my-head.safetensors")
    monkeypatch.setenv("TUBELET_WEIGHTS", str(tmp_path))
    head = clip_models.load_aesthetic_head("my-head.safetensors")
    assert head.layers[0].in_features == 64


def test_each_clip_decoded_once_and_cheap_dropped_clips_skip_the_model(real_videos, smoke_cfg, stage):
    rows = clip_rows(real_videos / "testvideo.mp4", [(0, 30), (30, 180), (240, 331)])  # black, photo, photo
    rows += clip_rows(real_videos / "carphone_pristine.mp4", [(0, 60), (60, 120)])
    cfg = dataclasses.replace(smoke_cfg, filters=FilterConfig(rules=(Rule(BLACK_FRACTION, "<=", 0.5),)))
    DECODE_STATS.clear()
    prepared = prepare_batch(table_from_rows(rows), cfg)
    assert DECODE_STATS["opens"] == len(rows)  # one open per clip for all scorers
    # decoded frames never exceed the spans (+ one GOP lead-in per seek), far below one pass per scorer
    assert DECODE_STATS["frames"] <= sum(r["end_frame"] - r["start_frame"] for r in rows) + 60 * len(rows)
    shapes = prepared.column(FRAMES_SHAPE).to_pylist()
    assert shapes[0] is None  # black clip: no frames travel to the model
    assert all(s == [3, 64, 64, 3] for s in shapes[1:])
    assert sum(len(b or b"") for b in prepared.column(FRAMES).to_pylist()) == 4 * 3 * 64 * 64 * 3

    score.MODEL_STATS.clear()
    scored = stage(prepared)
    assert score.MODEL_STATS["images"] == 4 * 3
    assert FRAMES not in scored.column_names
    emb = scored.column(CLIP_EMBEDDING).to_pylist()
    assert emb[0] is None and scored.column(AESTHETIC)[0].as_py() is None
    assert all(np.linalg.norm(np.asarray(e, np.float32)) == pytest.approx(1, abs=2e-3) for e in emb[1:])
    decided, _ = apply_cascade(scored, cfg.filters)
    validate(
        set_columns(decided, {CONFIG_HASH: ["h"] * len(rows), TUBELET_VERSION: ["0"] * len(rows)}),
        upto="filter",
    )
    assert decided.column(KEPT)[0].as_py() is False


def test_renamed_duplicate_is_removed(real_videos, smoke_cfg, stage, tmp_path):
    copy = tmp_path / "zz_renamed_carphone.mp4"
    shutil.copy(real_videos / "carphone_pristine.mp4", copy)
    rows = clip_rows(real_videos / "carphone_pristine.mp4", [(0, 120)]) + clip_rows(copy, [(0, 120)])
    rows += clip_rows(real_videos / "carphone_distorted.mp4", [(0, 120)])
    scored = stage(prepare_batch(table_from_rows(rows), smoke_cfg))
    decided, funnel = apply_cascade(scored, FilterConfig(near_dup_cosine=None))
    assert rows[0]["clip_id"] == rows[1]["clip_id"]  # content-addressed: the name does not matter
    # The keeper is the lower source_uri; which one that is depends on where the data lives.
    keep, drop = sorted([0, 1], key=lambda i: rows[i][SOURCE_URI])
    kept = decided.column(KEPT).to_pylist()
    assert kept[keep] is True and kept[drop] is False and kept[2] is True
    assert (
        decided.column(DROP_REASON)[drop].as_py()
        == f"{EXACT_DUP}: same content and span as {rows[keep][SOURCE_URI]}"
    )
    assert decided.column(DUPLICATE_OF)[drop].as_py() == rows[keep]["clip_id"]
    assert next(s for s in funnel if s["step"] == EXACT_DUP)["dropped"] == 1


def test_bad_clip_becomes_an_error_row_and_the_batch_goes_on(real_videos, smoke_cfg, tmp_path):
    rows = clip_rows(real_videos / "carphone_pristine.mp4", [(0, 60)])
    bad = dict(rows[0], **{SOURCE_URI: str(tmp_path / "gone.mp4"), "clip_id": "gone"})
    out = prepare_batch(table_from_rows([bad, rows[0]]), dataclasses.replace(smoke_cfg, on_error="record"))
    assert out.column(STATUS).to_pylist() == ["error", "ok"]
    assert out.column(FAILED_STAGE)[0].as_py() == "score" and out.column(SHARPNESS)[1].as_py() > 0
    with pytest.raises(StageError, match="cannot open"):
        prepare_batch(table_from_rows([bad]), smoke_cfg)


def test_bench_reports_decode_once_ratio(tmp_path, capsys):
    from jobs.bench import score as bench_score

    out = tmp_path / "bench.json"
    args = [
        "--videos",
        "1",
        "--seconds",
        "2",
        "--clip-seconds",
        "1",
        "--size",
        "160x96",
        "--repeats",
        "1",
        "--json",
        str(out),
    ]
    assert bench_score.main(args) == 0
    report = json.loads(out.read_text())
    assert report["decoder_opens_per_clip"] == {"stage": 1.0, "baseline": 7.0}  # 4 cheap + flow, NSFW, OCR
    assert report["speedup_vs_decode_per_scorer"] > 0 and "clips/s" in capsys.readouterr().out
    costs = report["frame_model_costs"]
    assert set(costs["ratio_to_decode"]) == {"cheap", "flow", "nsfw", "ocr"}
    assert all(v > 0 for v in costs["ms_per_clip"].values())


@pytest.mark.gpu
def test_vit_l_14_random_init_runs_on_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from jobs.bench import score as bench_score

    out = tmp_path / "bench.json"
    assert (
        bench_score.main(
            ["--model", "vit-l-14", "--videos", "1", "--seconds", "4", "--repeats", "1", "--json", str(out)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["device"].startswith("cuda") and report["model_images_per_s_per_gpu"] > 0
