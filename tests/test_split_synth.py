"""Split on generated videos with exactly known boundaries, and the clip-length policy."""

import numpy as np
import pytest

from curate import schema as S
from curate.errors import UsageError
from curate.shots.detect import Transitions
from curate.shots.shot_metrics import clips_touching, match_cuts
from curate.shots.split import SplitConfig, clip_spans, split_video
from curate.synthetic.synth import Segment, make_video


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    segs = [
        Segment("shot", 60, 0),
        Segment("shot", 60, 1),
        Segment("fade_out", 18),
        Segment("black", 20),
        Segment("fade_in", 18),
        Segment("shot", 72, 2, speed=0.1),
        Segment("dissolve", 24),
        Segment("shot", 72, 3, speed=0.1),
    ]
    # important: the content detector finds dissolves between low-motion shots (a blend test);
    # dissolves over strong motion need transnetv2/hybrid (README, "Shot detection").
    return make_video(tmp_path_factory.mktemp("synth") / "synth.mp4", segs, fps=24, width=192, height=108)


def test_synthetic_cuts_and_transitions(synth):
    video, rows = split_video(synth.path, SplitConfig(on_error="raise"))
    spans = [(r[S.START_FRAME], r[S.END_FRAME]) for r in rows]
    assert match_cuts([s for s, _ in spans if s in synth.cuts], synth.cuts).fn == 0
    ranges = [(a, b, k) for k, a, b in synth.gradual] + [(a, b, "black") for a, b in synth.black]
    assert not clips_touching(spans, ranges)
    assert spans[0] == (0, 60) and spans[1][0] == 60
    assert [r[S.TRANSITION_BEFORE] for r in rows] == ["start", "cut", "fade_in", "dissolve"]
    assert video[S.NUM_CLIPS] == 4 and video[S.FRAME_COUNT] == synth.num_frames
    S.validate(S.table_from_rows(rows), upto="split")


def _tr(n, fps=25.0, cuts=(), excluded=()):
    return Transitions(n, np.arange(n) / fps, list(cuts), list(excluded), np.zeros(n, np.float32))


def test_long_shot_is_windowed_and_short_shot_dropped():
    spans, too_short = clip_spans(_tr(1250, cuts=[30]), SplitConfig(min_seconds=2, max_seconds=20))
    assert too_short == 1  # frames 0-29 = 1.2 s
    # 1220 frames = 48.8 s -> ceil(48.8 / 20) = 3 equal windows
    assert [(s.start, s.end, s.transition_before) for s in spans] == [
        (30, 437, "cut"),
        (437, 844, "window"),
        (844, 1250, "window"),
    ]


def test_trim_removes_edges():
    spans, _ = clip_spans(_tr(250), SplitConfig(min_seconds=2, max_seconds=20, trim_seconds=1.0))
    assert [(s.start, s.end) for s in spans] == [(25, 225)]


def test_excluded_frames_never_in_clips():
    tr = _tr(300, excluded=[(100, 130, "dissolve"), (200, 299, "black")])
    spans, _ = clip_spans(tr, SplitConfig())
    assert [(s.start, s.end, s.transition_before) for s in spans] == [
        (0, 100, "start"),
        (131, 200, "dissolve"),
    ]


def test_bad_policy_is_a_usage_error():
    with pytest.raises(UsageError, match="max_seconds must be at least twice min_seconds"):
        SplitConfig(min_seconds=5, max_seconds=6)
    with pytest.raises(UsageError, match="detector must be one of"):
        SplitConfig(detector="magic")
