"""Split accuracy on the real videos against shot_boundaries.json (DESIGN: frame-exact cuts,
no clip touching a gradual transition or black segment, times from timestamps)."""

import itertools

import numpy as np
import pytest

from curate import schema as S
from curate.shots.shot_metrics import (
    CutScore,
    clips_crossing_cuts,
    clips_touching,
    forbidden_frames,
    match_cuts,
)
from curate.shots.split import SplitConfig, make_detector, split_video

CFG = SplitConfig()
_CACHE: dict = {}


def _split(real_videos, name):
    if name not in _CACHE:
        video, rows = split_video(real_videos / name, CFG)
        # the detector's own cut list, to score hard cuts independently of the clip policy
        from curate.video.decode import iter_small_yuv

        det = make_detector(CFG)
        tr = det.detect(fr for _, fr in iter_small_yuv(real_videos / name, target_area=det.target_area))
        _CACHE[name] = (video, rows, tr)
    return _CACHE[name]


def _names(real_videos_dir):
    import json

    gt = json.loads((real_videos_dir / "shot_boundaries.json").read_text())
    return sorted(k for k in gt if not k.startswith("_"))


NAMES = [
    "testvideo.mp4",
    "goldeneye-vfr-drop3.mp4",
    "issue-134-rotate.mp4",
    "issue-195-aspect-ratio.mp4",
    "issue-236-split-copy.mkv",
    "big_buck_bunny_0_30.webm",
    "bigbuckbunny.mp4",
    "chaplin.mp4",
    "traffic_camera.mp4",
    "flipping_a_pancake.mkv",
    "fire2.mp4",
    "carphone_pristine.mp4",
    "carphone_distorted.mp4",
    "poppins.mp4",
    "friends-video-clip.mp4",
    "video_with_failing_audio.mp4",
]


def test_names_cover_the_ground_truth(real_videos):
    assert sorted(NAMES) == _names(real_videos)


@pytest.mark.parametrize("name", NAMES)
def test_no_clip_touches_a_transition_or_crosses_a_cut(real_videos, ground_truth, name):
    video, rows, _ = _split(real_videos, name)
    gt = ground_truth[name]
    spans = [(r[S.START_FRAME], r[S.END_FRAME]) for r in rows if r[S.STATUS] == S.STATUS_OK]
    assert not clips_touching(spans, forbidden_frames(gt))
    assert not clips_crossing_cuts(spans, gt["cuts"])
    for r in rows:
        if r[S.STATUS] != S.STATUS_OK:
            continue
        dur = r[S.END_PTS] - r[S.START_PTS]
        assert CFG.min_seconds - 1e-6 <= dur <= CFG.max_seconds + 1e-6
        # a clip after a hard cut starts on the first frame of its shot
        if r[S.TRANSITION_BEFORE] == "cut":
            assert r[S.START_FRAME] in gt["cuts"]
    assert video[S.FRAME_COUNT] == gt["frames"]


def _coverage_bound(gt: dict, pts, min_seconds: float) -> tuple[list[tuple[int, int]], int]:
    """Shots long enough for a clip (inclusive ranges from the ground truth) and how many of
    their frames the clip policy may lose: at an edge next to a gradual transition or black,
    3 frames (a detector's safety margin) + 10% of that transition's length; none at a hard cut."""
    n = gt["frames"]
    ranges = forbidden_frames(gt)
    bad = np.zeros(n, bool)
    for a, b, _ in ranges:
        bad[a : b + 1] = True
    edges = sorted({0, n, *gt["cuts"]})
    shots = []
    for lo, hi in itertools.pairwise(edges):
        idx = np.flatnonzero(~bad[lo:hi]) + lo
        # runs of allowed frames between transitions
        for run in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if len(idx) else []:
            a, b = int(run[0]), int(run[-1])
            end = pts[b + 1] if b + 1 < len(pts) else pts[b] + (pts[b] - pts[b - 1] if b else 0.04)
            if end - pts[a] >= min_seconds:
                shots.append((a, b))
    loss = 0
    for a, b in shots:
        for edge in (a - 1, b + 1):
            near = [(x, y) for x, y, _ in ranges if x <= edge <= y]
            loss += sum(3 + int(0.1 * (y - x + 1)) for x, y in near)
    return shots, loss


# known: `content` takes the "Big Buck Bunny" title fading in and out over the last shot
# (overlays, not shot changes, in the ground truth) for dissolves, leaving 114 frames out
COVERAGE_XFAIL = {"big_buck_bunny_0_30.webm": "title fade-in/out over a shot excluded as dissolves"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=COVERAGE_XFAIL[n], strict=True))
        if n in COVERAGE_XFAIL
        else n
        for n in NAMES
    ],
)
def test_clips_cover_the_shots(real_videos, ground_truth, name):
    """Leaving frames out is safe only up to a point: the clips must cover the shots that can
    give a clip, but for a bounded loss at their gradual edges (bound from the ground truth)."""
    _, rows, tr = _split(real_videos, name)
    shots, loss = _coverage_bound(ground_truth[name], tr.pts, CFG.min_seconds)
    if not shots:
        pytest.skip(f"{name}: no shot of {CFG.min_seconds} s")
    covered = np.zeros(tr.num_frames, bool)
    for r in rows:
        if r[S.STATUS] == S.STATUS_OK:
            covered[r[S.START_FRAME] : r[S.END_FRAME]] = True
    frames = sum(b - a + 1 for a, b in shots)
    got = sum(int(covered[a : b + 1].sum()) for a, b in shots)
    assert got >= frames - loss, f"clips cover {got} of {frames} shot frames; at most {loss} may be lost"


@pytest.mark.parametrize("name", NAMES)
def test_hard_cuts_frame_exact(real_videos, ground_truth, name):
    _, _, tr = _split(real_videos, name)
    score = match_cuts(tr.cuts, ground_truth[name]["cuts"], tolerance=0)
    # per file we allow no miss and no false alarm; the aggregate F1 is checked below
    assert (score.fp, score.fn) == (0, 0), f"cuts {tr.cuts} vs truth {ground_truth[name]['cuts']}"


def test_aggregate_frame_exact_f1(real_videos, ground_truth):
    total = CutScore(0, 0, 0)
    for name in NAMES:
        _, _, tr = _split(real_videos, name)
        total = total + match_cuts(tr.cuts, ground_truth[name]["cuts"], tolerance=0)
    assert total.tp >= 19
    assert total.f1 >= 0.95


def test_camera_tilt_is_not_a_cut(real_videos):
    _, rows, tr = _split(real_videos, "video_with_failing_audio.mp4")
    assert tr.cuts == []
    ok = [r for r in rows if r[S.STATUS] == S.STATUS_OK]
    assert (
        ok and ok[0][S.START_FRAME] == 0 and ok[0][S.END_FRAME] > 92
    )  # the tilt 83-92 stays inside one clip


def test_vfr_spans_use_timestamps(real_videos):
    video, rows, _ = _split(real_videos, "goldeneye-vfr-drop3.mp4")
    assert video[S.IS_VFR]
    second = next(r for r in rows if r[S.START_FRAME] == 60)
    assert second[S.START_PTS] == pytest.approx(3.754, abs=0.002)
    assert second[S.END_PTS] == pytest.approx(8.759, abs=0.002)
    assert second[S.FPS] == pytest.approx(80 / (8.759 - 3.754), rel=0.01)  # ~16 fps, not the nominal 23.976


def test_rotation_gives_portrait_clips(real_videos):
    video, rows, _ = _split(real_videos, "issue-134-rotate.mp4")
    assert (video[S.WIDTH], video[S.HEIGHT]) == (544, 1280)
    assert all((r[S.WIDTH], r[S.HEIGHT]) == (544, 1280) for r in rows)
