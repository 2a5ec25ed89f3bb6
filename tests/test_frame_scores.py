"""Frame models of the score stage against generated ground truth, with the real weights:
camera motion (crop windows moving at known speeds), text area and OCR (rendered text),
NSFW (the real detector on real frames; the rule with an injected score), and the gates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from curate.decisions import filters
from curate.decisions.filters import FilterConfig, Rule, apply_cascade
from curate.schema import (
    CAMERA_MOTION,
    CLIP_ID,
    DROP_REASON,
    END_FRAME,
    END_PTS,
    FLOW_MAGNITUDE,
    FPS,
    HEIGHT,
    KEPT,
    NSFW,
    OCR_TEXT,
    SOURCE_URI,
    START_FRAME,
    START_PTS,
    STATUS,
    STATUS_OK,
    TEXT_AREA,
    TEXT_BOXES,
    VIDEO_ID,
    WIDTH,
    table_from_rows,
)
from curate.scores import flow, nsfw, ocr, score_frames
from curate.scores.score_config import SMOKE
from curate.scores.score_frames import FRAMES, prepare_batch
from curate.video.decode import decode_clip
from curate.video.mp4 import write_video
from tests.camera_media import MOVES, camera_clip, draw_text, textured_image
from tests.conftest import _videos_dir

FPS_OUT = 24


def source_images() -> list[np.ndarray]:
    """Three stills: two real frames (from ../shared/data/videos where present) and a texture."""
    imgs = []
    d = _videos_dir()
    for name in ("bigbuckbunny.mp4", "traffic_camera.mp4"):
        if (d / name).is_file():
            f = decode_clip(d / name, 1.0, 1.5, offsets=[0], max_side=1280).frames[0]
            imgs.append(cv2.resize(f, (1280, 720), interpolation=cv2.INTER_CUBIC))
    seed = 0
    while len(imgs) < 3:
        imgs.append(textured_image(seed))
        seed += 1
    return imgs


def clip_row(path: Path, frames: int, size: tuple[int, int], cid: str) -> dict:
    return {
        CLIP_ID: cid,
        VIDEO_ID: cid,
        SOURCE_URI: str(path),
        START_FRAME: 0,
        END_FRAME: frames,
        START_PTS: 0.0,
        END_PTS: frames / FPS_OUT,
        FPS: float(FPS_OUT),
        WIDTH: size[0],
        HEIGHT: size[1],
        STATUS: STATUS_OK,
    }


def test_camera_motion_matrix(tmp_path):
    """Pans, tilts, zooms at two speeds over three sources, plus statics, through the real
    decode path (encoded mp4 -> the score stage's frame pairs): class accuracy >= 0.9."""
    cfg = SMOKE
    results = []
    for s, src in enumerate(source_images()):
        for kind in MOVES:
            for speed in (0.0,) if kind == "static" else (0.1, 0.3):
                frames = camera_clip(src, kind, speed, frames=36, fps=FPS_OUT)
                path = write_video(tmp_path / f"{s}-{kind}-{speed}.mp4", frames, FPS_OUT)
                cf, _ = score_frames.decode_frames(clip_row(path, 36, (320, 180), "c"), cfg)
                fit = flow.camera_fit(cf.frames, cf.pts, cfg.flow, indices=cf.indices)
                results.append((kind, speed, fit.label, fit))
    acc = np.mean([k == label for k, _, label, _ in results])
    wrong = [(k, sp, lab) for k, sp, lab, _ in results if k != lab]
    print(f"camera-motion accuracy {acc:.3f} over {len(results)} clips; wrong: {wrong}")
    assert len(results) == 3 * (6 * 2 + 1)
    assert acc >= 0.9, wrong
    # the measured speed follows the true one (short sides / s), in the model's own terms
    for kind, speed, _, fit in results:
        if kind.startswith("pan"):
            assert abs(abs(fit.pan) - speed) < 0.25 * speed + 0.02, (kind, speed, fit)
        if kind.startswith("zoom"):
            assert abs(abs(fit.zoom) - speed) < 0.25 * speed + 0.02, (kind, speed, fit)


def test_camera_static_with_moving_subject_and_complex():
    """A still camera with a moving subject stays static; rotation is complex, not a pan."""
    src = textured_image(5, 640, 360)
    frames = np.repeat(cv2.resize(src, (320, 180))[None], 8, axis=0).copy()
    for i in range(8):  # a disc crossing the frame fast
        cv2.circle(frames[i], (40 + 12 * i, 90), 25, (250, 30, 30), -1)
    pts = np.arange(8) / FPS_OUT
    assert flow.camera_fit(frames, pts, flow.FlowConfig(), np.arange(8)).label == "static"
    h, w = 180, 320
    rot = np.stack(
        [
            cv2.warpAffine(
                cv2.resize(src, (w, h)),
                cv2.getRotationMatrix2D((w / 2, h / 2), 0.8 * i, 1.0),
                (w, h),
                borderMode=cv2.BORDER_REFLECT,
            )
            for i in range(8)
        ]
    )
    assert flow.camera_fit(rot, pts, flow.FlowConfig(), np.arange(8)).label == "complex"


def test_text_area_and_reading_on_rendered_text(tmp_path):
    """Subtitles and watermarks of known box: the area error is small, and the real PP-OCRv4
    weights read the subtitle's text exactly (case and spaces aside)."""
    reader = ocr.reader(ocr.OcrConfig())
    cases = [
        ("Meet me at the harbour", 0.07, "bottom"),
        ("NEWS 24", 0.06, "corner"),
        ("The quick brown fox jumps over", 0.09, "bottom"),
        ("Big title", 0.15, "bottom"),
    ]
    errors = []
    for seed in (0, 1):
        src = cv2.resize(textured_image(seed), (640, 360), interpolation=cv2.INTER_AREA)
        for text, share, where in cases:
            frame, (x0, y0, x1, y1) = draw_text(src, text, share, where)
            truth = (x1 - x0) * (y1 - y0) / (640 * 360)
            small = cv2.resize(frame, (398, 224), interpolation=cv2.INTER_AREA)  # the analysis size
            got = reader.scores(small[None])
            errors.append(got[TEXT_AREA] - truth)
            assert got[TEXT_BOXES] >= 1
            assert 0.7 * truth <= got[TEXT_AREA] <= 2.5 * truth, (text, truth, got)
            if where == "bottom":
                assert "".join(text.lower().split()) in ["".join(s.lower().split()) for s in got[OCR_TEXT]], (
                    got
                )
        blank = reader.scores(cv2.resize(src, (398, 224))[None])
        assert blank[TEXT_AREA] == 0.0 and blank[OCR_TEXT] == []
    print(
        f"text_area error: mean {np.mean(errors):+.4f}, max |err| {np.max(np.abs(errors)):.4f} "
        "(share of frame)"
    )
    assert np.max(np.abs(errors)) < 0.02


def test_subtitled_clip_through_the_score_step(tmp_path):
    """A subtitled video: the CPU step records the text and the text-area rule drops it before CLIP."""
    src = cv2.resize(textured_image(3), (640, 360), interpolation=cv2.INTER_AREA)
    frames = camera_clip(
        cv2.resize(src, (1280, 720)), "pan_right", 0.2, frames=48, fps=FPS_OUT, size=(640, 360)
    )
    sub = np.stack([draw_text(f, "Where are you going", 0.12, "bottom", boxed=True)[0] for f in frames])
    plain_path = write_video(tmp_path / "plain.mp4", frames, FPS_OUT)
    sub_path = write_video(tmp_path / "sub.mp4", sub, FPS_OUT)
    rows = [clip_row(plain_path, 48, (640, 360), "plain"), clip_row(sub_path, 48, (640, 360), "sub")]
    cfg = dataclasses.replace(SMOKE, analysis_short_side=224)
    out = prepare_batch(table_from_rows(rows), cfg).to_pylist()
    plain, subbed = out
    assert plain[CAMERA_MOTION] == "pan_right" and subbed[CAMERA_MOTION] == "pan_right"
    assert plain[FLOW_MAGNITUDE] > 0.1
    assert plain[TEXT_AREA] == 0.0 and plain[FRAMES] is not None
    assert subbed[TEXT_AREA] > filters.TEXT_AREA_MAX and subbed[FRAMES] is None  # never reaches CLIP
    assert "whereareyougoing" in ["".join(s.lower().split()) for s in subbed[OCR_TEXT]], subbed[OCR_TEXT]


def test_nsfw_detector_runs_on_real_frames(real_videos):
    """The shipped NudeNet weights run on real frames and give scores in [0, 1]."""
    det = nsfw.detector(nsfw.NsfwConfig())
    frames = np.concatenate(
        [
            decode_clip(real_videos / name, 1.0, 2.0, offsets=[0, 12], size=(398, 224)).frames
            for name in ("bigbuckbunny.mp4", "friends-video-clip.mp4", "chaplin.mp4")
        ]
    )
    per_frame = det.frame_scores(frames)
    assert per_frame.shape == (len(frames),)
    assert np.all((per_frame >= 0) & (per_frame <= 1))
    assert det.scores(frames)[NSFW] == pytest.approx(float(np.sort(per_frame)[-2]))
    # a uniform grey frame has nothing to detect
    assert det.frame_scores(np.full((1, 224, 398, 3), 128, np.uint8))[0] < 0.2


def test_one_frame_blip_is_not_an_nsfw_clip():
    """Two frames must agree: one high frame among low ones is a detector blip (seen on a cartoon)."""
    assert nsfw.clip_score(np.array([0.02, 0.67, 0.03], np.float32)) == pytest.approx(0.03)
    assert nsfw.clip_score(np.array([0.9, 0.85, 0.1], np.float32)) == pytest.approx(0.85)
    assert nsfw.clip_score(np.array([0.7], np.float32)) == pytest.approx(0.7)
    assert nsfw.clip_score(np.array([], np.float32)) == 0.0


def test_nsfw_rule_drops_and_ocr_never_runs_after_it(tmp_path, monkeypatch):
    """An injected NSFW score above the threshold drops the clip in the CPU step (no CLIP frames,
    no OCR: it comes later by cost) and in the cascade, with the rule as the reason."""
    frames = camera_clip(textured_image(1), "pan_left", 0.2, frames=36, fps=FPS_OUT)
    path = write_video(tmp_path / "v.mp4", frames, FPS_OUT)
    calls = {"ocr": 0}

    class FakeNsfw:
        def scores(self, fr):
            return {NSFW: 0.93}

    def fake_reader(cfg):
        calls["ocr"] += 1
        return ocr.reader(cfg)

    monkeypatch.setattr(nsfw, "detector", lambda cfg: FakeNsfw())
    monkeypatch.setattr(ocr, "reader", fake_reader)
    row = clip_row(path, 36, (320, 180), "x")
    out = prepare_batch(table_from_rows([row]), SMOKE)
    r = out.to_pylist()[0]
    assert r[NSFW] == pytest.approx(0.93) and r[FRAMES] is None
    assert r[TEXT_AREA] is None and calls["ocr"] == 0
    cascade = FilterConfig(
        rules=(Rule(NSFW, "<=", filters.NSFW_MAX),), exact_dedup=False, near_dup_cosine=None
    )
    decided, _ = apply_cascade(score_frames_conform(out), cascade)
    assert decided.column(KEPT).to_pylist() == [False]
    assert decided.column(DROP_REASON).to_pylist() == ["nsfw <= 0.6: nsfw=0.93"]
    assert filters.cpu_gate(SMOKE.filters, r) == "nsfw <= 0.6: nsfw=0.93"


def score_frames_conform(table):
    from curate.schema import conform

    return conform(table.drop_columns([c for c in table.column_names if c.startswith("_")]))


def test_cheap_gate_keeps_frame_models_off(tmp_path, monkeypatch):
    """A clip failing a cheap rule (static) gets no flow, NSFW or OCR score."""
    still = np.repeat(cv2.resize(textured_image(2), (320, 180))[None], 36, axis=0)
    path = write_video(tmp_path / "still.mp4", still, FPS_OUT)

    def boom(*a, **k):
        raise AssertionError("a frame model ran on a cheap-dropped clip")

    monkeypatch.setattr(flow, "flow_scores", boom)
    monkeypatch.setattr(nsfw, "detector", boom)
    monkeypatch.setattr(ocr, "reader", boom)
    r = prepare_batch(table_from_rows([clip_row(path, 36, (320, 180), "s")]), SMOKE).to_pylist()[0]
    assert r["is_static"] is True and r[FLOW_MAGNITUDE] is None and r[NSFW] is None and r[TEXT_AREA] is None


def test_missing_extra_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_rapidocr(name, *a, **k):
        if name.startswith("rapidocr_onnxruntime"):
            raise ImportError("No module named 'rapidocr_onnxruntime'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_rapidocr)
    from curate.errors import UsageError

    with pytest.raises(UsageError, match=r"tubelet\[filters\]"):
        ocr.models_dir()
