"""Every kind of bad input becomes an error row with the failing stage and a one-line reason."""

import subprocess
import sys

import pytest

from curate import schema as S
from curate.shots.split import SplitConfig, split_video
from jobs.runtime.inputs import list_inputs
from tests.media import bad_inputs, two_shot_video

EXPECT = {
    "zero_byte": ("probe", "empty file"),
    "truncated": ("probe", ""),
    "text_as_mp4": ("probe", "cannot open as video"),
    "audio_only": ("probe", "no video stream"),
    "one_frame": ("split", "no clip of at least 2 s"),
    "missing": ("probe", "cannot read file"),
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = two_shot_video(d / "good.mp4").path
    return bad_inputs(d, good)


@pytest.mark.parametrize("kind", sorted(EXPECT))
def test_bad_input_gives_error_rows(bad, kind):
    video, clips = split_video(bad[kind], SplitConfig())
    stage, reason = EXPECT[kind]
    assert video[S.STATUS] == S.STATUS_ERROR
    assert video[S.FAILED_STAGE] == stage
    assert reason in video[S.ERROR] and "\n" not in video[S.ERROR] and len(video[S.ERROR]) <= 300
    assert len(clips) == 1 and clips[0][S.STATUS] == S.STATUS_ERROR and clips[0][S.FAILED_STAGE] == stage
    S.validate(S.table_from_rows(clips))
    S.table_from_rows([video], S.VIDEO_SCHEMA)  # conforms to the videos schema


def test_on_error_raise_propagates(bad):
    from curate.errors import StageError

    with pytest.raises(StageError):
        split_video(bad["text_as_mp4"], SplitConfig(on_error="raise"))


def test_unicode_and_spaces_in_paths(tmp_path):
    d = tmp_path / "vidéos d'été ✓" / "sub dir"
    info = two_shot_video(d / "clip — 1.mp4")
    assert list_inputs(str(tmp_path / "vidéos d'été ✓")) == [str(info.path)]
    video, clips = split_video(info.path, SplitConfig())
    assert video[S.STATUS] == S.STATUS_OK and [c[S.START_FRAME] for c in clips] == [0, 72]


def test_list_file_keeps_missing_paths(tmp_path):
    lst = tmp_path / "inputs.txt"
    lst.write_text("# comment\nrel.mp4\n/abs/missing.mp4\n\n")
    assert list_inputs(str(lst)) == [str(tmp_path / "rel.mp4"), "/abs/missing.mp4"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--input", "/no/such/dir", "--output", "OUT"], "must be an existing directory"),
        (["--input", ".", "--output", "OUT", "--min-seconds", "5", "--max-seconds", "6"], "at least twice"),
    ],
)
def test_bad_arguments_exit_2_with_the_rule(tmp_path, args, needle):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    if args[1] == ".":
        two_shot_video(tmp_path / "in" / "a.mp4")
        args[1] = str(tmp_path / "in")
    r = subprocess.run(
        [sys.executable, "-m", "jobs.split", *args], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert needle in r.stderr and "got" in r.stderr


def test_unwritable_output_fails_fast(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    two_shot_video(tmp_path / "in" / "a.mp4")
    for job in ("jobs.split", "jobs.curate"):
        r = subprocess.run(
            [sys.executable, "-m", job, "--input", str(tmp_path / "in"), "--output", str(blocker / "out")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 2, (job, r.stderr[-2000:])
        assert "must be writable" in r.stderr and "pass a writable --output" in r.stderr


def test_full_disk_fails_fast(tmp_path):
    from curate.errors import UsageError
    from curate.io.storage import check_writable

    with pytest.raises(UsageError, match="MiB free"):
        check_writable(tmp_path, min_free_bytes=1 << 62)


def test_a_truncated_file_keeps_its_decodable_head_flagged(tmp_path):
    """The README's rule: clips of the decodable head are ok, the videos row is ok with a `truncated:`
    warning."""
    from tests.media import truncated_copy

    good = two_shot_video(
        tmp_path / "good.mkv", seconds=4.0
    ).path  # Matroska: the head decodes without the tail
    video, clips = split_video(truncated_copy(good, tmp_path / "cut.mkv", keep=0.7), SplitConfig())
    assert video[S.STATUS] == S.STATUS_OK and video[S.ERROR].startswith("truncated: decoded")
    assert clips and all(c[S.STATUS] == S.STATUS_OK for c in clips)
    assert max(c[S.END_FRAME] for c in clips) <= video[S.FRAME_COUNT] < 192
    whole, _ = split_video(good, SplitConfig())
    assert whole[S.STATUS] == S.STATUS_OK and whole.get(S.ERROR) is None  # a whole file carries no warning
