"""jobs.curate phase 2 decodes a kept clip once for caption and encode
(jobs/runtime/clip_frames.py): the same caption frames and the same encode pixels, error rows
included, as the two decodes of the stage jobs, from one open of the source per clip."""

from __future__ import annotations

import pyarrow as pa
import pytest

from captioner.stage import FRAMES, FRAMES_ERROR, FRAMES_FPS, FRAMES_SHAPE, attach_frames
from captioner.stage import SMOKE as CAPTION
from curate import schema as S
from curate.video import decode
from jobs.runtime.clip_frames import attach_frames_once
from latents.encode import SMOKE as ENCODE
from latents.encode import prepare_batch
from tests.latents_helpers import captioned_rows

CAPTION_COLUMNS = (FRAMES, FRAMES_SHAPE, FRAMES_FPS, FRAMES_ERROR)


@pytest.fixture
def rows(tmp_path) -> pa.Table:
    """Kept, captioned clips of three shapes, a dropped one, and three that fail: a missing
    source, a span past the end of its file, a span too short for encode's frame rule."""
    t = captioned_rows(tmp_path)
    good = t.slice(0, 1).to_pylist()[0]
    bad = [
        dict(good, **{S.CLIP_ID: "missing", S.SOURCE_URI: str(tmp_path / "gone.mp4")}),
        dict(
            good,
            **{
                S.CLIP_ID: "past-end",
                S.START_PTS: 50.0,
                S.END_PTS: 52.0,
                S.START_FRAME: 1200,
                S.END_FRAME: 1248,
            },
        ),
        dict(
            good,
            **{
                S.CLIP_ID: "too-short",
                S.END_PTS: good[S.START_PTS] + 1 / 24,
                S.END_FRAME: good[S.START_FRAME] + 1,
            },
        ),
    ]
    return pa.concat_tables([t, S.table_from_rows(bad)])


def _opens(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = decode.open_video

    def counting(path, *a, **k):
        seen.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(decode, "open_video", counting)
    return seen


def test_one_decode_gives_what_the_two_stage_decodes_give(rows, monkeypatch):
    opens = _opens(monkeypatch)
    two = attach_frames(rows, CAPTION)
    two_px = prepare_batch(two, ENCODE)
    twice = len(opens)
    opens.clear()
    one = attach_frames_once(rows, CAPTION, ENCODE)
    one_px = prepare_batch(one, ENCODE)
    for c in CAPTION_COLUMNS:
        assert one.column(c).equals(two.column(c)), c
    assert one_px.equals(two_px)  # pixels, pixel_* columns, sample_fps, status and error text
    kept = sum(bool(k) for k in rows.column(S.KEPT).to_pylist())
    assert len(opens) == kept  # one open (and one decode) per kept clip
    assert twice == 2 * kept - 1  # caption's and encode's (the too-short clip fails encode's plan first)
    errors = dict(zip(one_px.column(S.CLIP_ID).to_pylist(), one_px.column(S.ERROR).to_pylist()))
    frames_errors = dict(zip(one.column(S.CLIP_ID).to_pylist(), one.column(FRAMES_ERROR).to_pylist()))
    assert frames_errors["missing"] and frames_errors["past-end"]  # captioning records these
    assert errors["too-short"]  # captioned, then refused by encode's frame rule
    ok = [r for r in one_px.to_pylist() if r[S.ERROR] is None and r[S.KEPT]]
    assert len(ok) == 6 and all(r[S.PIXEL_FRAMES] for r in ok)
