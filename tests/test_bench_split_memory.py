"""The split benchmark's peak-memory figure is the child's own, not inherited from the bench process."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from jobs.bench.split import peak_rss_of_split
from tests.media import two_shot_video


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_rss_is_measured_in_the_child_alone(tmp_path):
    video = two_shot_video(tmp_path / "v.mp4", seconds=2.5).path
    alone, _ = peak_rss_of_split(video)
    ballast = np.ones(900 << 20, np.uint8)  # this process now peaks ~900 MB above the child's need
    ballast[::4096] = 2  # touch every page
    after, _ = peak_rss_of_split(video)
    del ballast
    # ru_maxrss, inherited across fork + exec, reported >= 900 MB here; the child's own peak did not change
    assert after < alone + 150 and after < 800, (alone, after)
