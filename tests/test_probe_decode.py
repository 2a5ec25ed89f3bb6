import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from curate import schema as S
from curate.video.decode import DECODE_STATS, decode_clip, iter_small_yuv, sample_uniform
from curate.video.probe import probe

# (file, display w x h, rotation (ccw, 0-359), vfr, has_audio, decoded frames) from MANIFEST.md
EXPECTED = [
    ("issue-134-rotate.mp4", (544, 1280), 270, False, True, 240),
    ("fire2.mp4", (1280, 720), 180, True, True, 25),
    ("goldeneye-vfr-drop3.mp4", (1280, 544), 0, True, False, 160),
    ("issue-195-aspect-ratio.mp4", (1024, 576), 0, False, True, 628),
    ("friends-video-clip.mp4", (630, 480), 0, False, True, 300),
    ("carphone_pristine.mp4", (194, 144), 0, False, False, 120),
    ("big_buck_bunny_0_30.webm", (1280, 720), 0, False, True, 720),
]


@pytest.mark.parametrize("name,size,rot,vfr,audio,frames", EXPECTED)
def test_probe_matches_manifest(real_videos, name, size, rot, vfr, audio, frames):
    row = probe(real_videos / name, count_frames=True)
    assert row[S.STATUS] == S.STATUS_OK, row
    assert (row[S.WIDTH], row[S.HEIGHT]) == size
    assert row[S.ROTATION] == rot
    assert row[S.IS_VFR] is vfr
    assert row[S.HAS_AUDIO] is audio
    assert row[S.FRAME_COUNT] == frames
    assert len(row[S.VIDEO_ID]) == 32


def _ffmpeg_frame(path, w, h, index):
    """Frame `index` as ffmpeg shows it (autorotate and SAR scaling on), (h, w, 3) RGB."""
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-v",
        "error",
        "-i",
        str(path),
        "-vf",
        f"select=eq(n\\,{index}),scale={w}:{h}:flags=area",
        "-frames:v",
        "1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(h, w, 3).astype(np.float32)


@pytest.mark.parametrize(
    "name,index", [("issue-134-rotate.mp4", 100), ("fire2.mp4", 12), ("friends-video-clip.mp4", 30)]
)
def test_display_orientation_matches_ffmpeg(real_videos, name, index):
    path = real_videos / name
    row = probe(path)
    w, h = (row[S.WIDTH] // 8) * 2, (row[S.HEIGHT] // 8) * 2
    ref = _ffmpeg_frame(path, w, h, index)
    ours = None
    for _, fr in iter_small_yuv(path, size=(w, h)):
        if fr.index == index:
            from curate.shots.detect import yuv_to_rgb

            ours = yuv_to_rgb(fr.yuv).astype(np.float32)
            break
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).mean()
    wrong = np.abs(np.rot90(ours, 2) - ref).mean() if ours.shape[0] else 0
    assert err < 12, f"mean abs diff to ffmpeg's display frame: {err:.1f}"
    assert err < 0.5 * wrong  # the upside-down frame is clearly further away


def test_vfr_times_come_from_timestamps(real_videos):
    # goldeneye-vfr-drop3: the cut at decoded frame 60 has PTS 3.754 s (nominal frame 90 at 23.976)
    pts = [fr.pts for _, fr in iter_small_yuv(real_videos / "goldeneye-vfr-drop3.mp4")]
    assert pts[60] == pytest.approx(3.754, abs=0.002)
    assert pts[140] == pytest.approx(8.759, abs=0.002)


def test_decode_clip_selects_frames_by_offset_and_time(real_videos):
    path = real_videos / "goldeneye-vfr-drop3.mp4"
    pts = [fr.pts for _, fr in iter_small_yuv(path)]
    t0, t1 = pts[60], pts[140]
    before = DECODE_STATS["opens"]
    c = decode_clip(path, t0, t1, offsets=sample_uniform(80, 3, margin=0.1), max_side=128)
    assert DECODE_STATS["opens"] == before + 1
    assert c.frames.shape == (3, 54, 128, 3)
    assert list(c.indices) == [8, 40, 71]
    assert list(c.pts) == [pts[60 + 8], pts[60 + 40], pts[60 + 71]]
    targets = np.arange(t0, t1, 0.5)
    t = decode_clip(path, t0, t1, times=targets, size=(64, 28))
    assert t.frames.shape == (11, 28, 64, 3)
    assert np.all(t.pts <= targets + 1e-6)  # the latest frame at or before each time ...
    nxt = [min(p for p in pts if p > q) for q in t.pts]
    assert np.all(np.asarray(nxt) > targets)  # ... and not an earlier one
