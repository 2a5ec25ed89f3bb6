"""CaptionStage on the smoke VLM and on a stub that echoes a frame statistic."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from captioner import prompts
from captioner.qa import QAConfig
from captioner.stage import SMOKE, CaptionStage, attach_frames, decode_row
from captioner.vlm import Request, load_vlm
from curate import schema as S
from curate.errors import StageError
from tests.caption_helpers import EchoVLM, frame_stat, make_clips


@pytest.fixture(scope="module", autouse=True)
def _smoke_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("TUBELET_CACHE", str(tmp_path_factory.mktemp("tubelet-cache")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared 2-core box
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="module")
def tmp_path(tmp_path_factory):
    # one generated video for the whole module (make_clips reuses it)
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def smoke_stage():
    st = CaptionStage(SMOKE)
    st.load()
    return st


SPANS = [(0, 24), (24, 48), (50, 53), (48, 60), (72, 96), (60, 65), (30, 31)]


def _stub_stage(**kw):
    cfg = replace(SMOKE, batch_size=2, qa=QAConfig(min_words=5, max_words=50), on_error="record")
    st = CaptionStage(cfg)
    st.vlm = EchoVLM(**kw)
    return st


def test_smoke_stage_fills_kept_clips_only(tmp_path, smoke_stage):
    kept = [True, False, True, True, False, True, True]
    _, rows = make_clips(tmp_path, SPANS, kept)
    rows.append(
        {
            **rows[0],
            S.CLIP_ID: "v0-error-split",
            S.STATUS: S.STATUS_ERROR,
            S.ERROR: "boom",
            S.FAILED_STAGE: "split",
        }
    )
    out = smoke_stage(S.table_from_rows(rows))
    S.validate(out, "caption")
    recs = out.to_pylist()
    for r, k in zip(recs, [*kept, True]):
        filled = [
            r[c] is not None
            for c in (S.CAPTION, S.CAPTION_SHORT, S.CAPTION_MODEL, S.PROMPT_VERSION, S.CAPTION_QA)
        ]
        if r[S.STATUS] == S.STATUS_ERROR:
            continue
        assert all(filled) if k else not any(filled), r
    ok = [r for r in recs if r[S.CAPTION] is not None]
    assert len(ok) == sum(kept)
    assert {r[S.CAPTION_MODEL] for r in ok} == {"smoke-random:qwen2_5_vl"}
    assert {r[S.PROMPT_VERSION] for r in ok} == {prompts.LATEST}
    assert recs[-1][S.ERROR] == "boom" and recs[-1][S.CAPTION] is None  # an earlier error is left alone
    # a 1-frame clip is captioned from its one frame; an 8+ frame clip from 8
    frames = {r[S.CLIP_ID]: json.loads(r[S.CAPTION_QA])["frames"] for r in ok}
    assert frames[rows[0][S.CLIP_ID]] == 8 and frames[rows[6][S.CLIP_ID]] == 1


def test_predecoded_frames_give_the_same_captions(tmp_path, smoke_stage):
    _, rows = make_clips(tmp_path, SPANS[:4])
    table = S.table_from_rows(rows)
    a = smoke_stage(table)
    b = smoke_stage(attach_frames(table, SMOKE))
    assert b.schema == S.CLIP_SCHEMA  # transport columns dropped
    assert a.column(S.CAPTION).to_pylist() == b.column(S.CAPTION).to_pylist()


def test_captions_follow_their_clip_when_batches_are_reordered(tmp_path):
    _, rows = make_clips(tmp_path, SPANS)
    random.Random(0).shuffle(rows)
    st = _stub_stage()
    out = st(S.table_from_rows(rows))
    # batches were grouped by frame count, i.e. in another order than the rows
    assert st.vlm.batches and all(len(set(b)) <= 2 for b in st.vlm.batches)
    order = [n for b in st.vlm.batches for n in b]
    assert order == sorted(order)
    for r in out.to_pylist():
        stat = frame_stat(decode_row(r, st.cfg)[0])  # decoded independently of the stage
        assert r[S.STATUS] == S.STATUS_OK
        assert (
            r[S.CAPTION]
            == f"A clip with frame statistic {stat} is shown in a static wide shot under even light."
        )
        assert r[S.CAPTION_SHORT] == f"A clip with statistic {stat}."


def test_malformed_generations_become_error_rows(tmp_path):
    _, rows = make_clips(tmp_path, [*SPANS[:4], (200, 210)])  # the last span is past the end of the video
    rows[1][S.SOURCE_URI] = str(tmp_path / "missing.mp4")
    stats = [frame_stat(decode_row(r, SMOKE)[0]) for r in (rows[0], rows[2], rows[3])]
    st = _stub_stage(loop_for=[stats[0]], always_bad=[stats[1]], raise_for=[stats[2]])
    out = {r[S.CLIP_ID]: r for r in st(S.table_from_rows(rows)).to_pylist()}
    r0, r1, r2, r3, r4 = (out[r[S.CLIP_ID]] for r in rows)
    assert r0[S.STATUS] == S.STATUS_OK and json.loads(r0[S.CAPTION_QA])["retried"].startswith("repetition")
    assert r1[S.STATUS] == S.STATUS_ERROR and "cannot open" in r1[S.ERROR]
    assert r2[S.STATUS] == S.STATUS_ERROR and r2[S.ERROR].startswith("caption QA failed twice: repetition")
    assert r3[S.STATUS] == S.STATUS_ERROR and "device-side assert" in r3[S.ERROR]
    assert r4[S.STATUS] == S.STATUS_ERROR and "no frames" in r4[S.ERROR]
    assert {r[S.FAILED_STAGE] for r in (r1, r2, r3, r4)} == {"caption"}
    assert r2[S.CAPTION] is None
    with pytest.raises((StageError, RuntimeError)):
        replace_stage = _stub_stage(always_bad=[stats[1]])
        replace_stage.cfg = replace(replace_stage.cfg, on_error="raise")
        replace_stage(S.table_from_rows(rows[2:3]))


def test_context_overflow_reduces_frames_then_errors(tmp_path, smoke_stage):
    _, rows = make_clips(tmp_path, [(0, 24), (24, 48)])
    vlm = smoke_stage.vlm
    frames, fps = decode_row(rows[0], SMOKE)
    msgs = prompts.dense_messages(SMOKE.prompt_version)
    t8 = vlm.prompt_tokens(Request(msgs, frames, fps))
    t2 = vlm.prompt_tokens(Request(msgs, frames[:2], fps))
    assert t8 > t2
    new = SMOKE.sampling.max_new_tokens
    fits_half = replace(SMOKE, max_context=(t8 + t2) // 2 + new)
    st = CaptionStage(fits_half)
    st.vlm = load_vlm(fits_half.model, "cpu", "auto", fits_half.max_context)
    out = st(S.table_from_rows(rows)).to_pylist()
    for r in out:
        qa = json.loads(r[S.CAPTION_QA])
        assert r[S.STATUS] == S.STATUS_OK and qa["frames_reduced_from"] == 8 and 2 <= qa["frames"] < 8
    tiny = replace(SMOKE, max_context=t2 - 1 + new)
    st = CaptionStage(tiny)
    st.vlm = load_vlm(tiny.model, "cpu", "auto", tiny.max_context)
    out = st(S.table_from_rows(rows)).to_pylist()
    assert all(r[S.STATUS] == S.STATUS_ERROR and "context overflow" in r[S.ERROR] for r in out)


@pytest.mark.parametrize("kind", ["llava_onevision", "qwen3_vl"])
def test_other_families_caption_mixed_frame_counts(tmp_path, kind):
    _, rows = make_clips(tmp_path, [(0, 24), (24, 30), (48, 72), (30, 31)])  # 8, 6, 8 and 1 frame(s)
    cfg = replace(SMOKE, model=f"smoke:{kind}", on_error="raise")
    st = CaptionStage(cfg)
    out = st(S.table_from_rows(rows)).to_pylist()
    assert all(r[S.CAPTION] for r in out)
    assert {r[S.CAPTION_MODEL] for r in out} == {f"smoke-random:{kind}"}


def test_decoded_frames_are_uniform_and_bounded(tmp_path):
    _, rows = make_clips(tmp_path, [(0, 96)])
    frames, fps = decode_row(rows[0], SMOKE)
    assert frames.shape == (8, 96, 160, 3) and frames.dtype == np.uint8  # max_side=160 keeps 160x96
    assert fps == pytest.approx(8 / 4.0)


def test_decode_errors_from_the_cpu_tasks_become_error_rows(tmp_path):
    _, rows = make_clips(tmp_path, [(0, 24), (24, 48)])
    rows[0][S.SOURCE_URI] = str(tmp_path / "gone.mp4")
    table = attach_frames(S.table_from_rows(rows), SMOKE)
    st = _stub_stage()
    out = st(table).to_pylist()
    assert out[0][S.STATUS] == S.STATUS_ERROR and "cannot open" in out[0][S.ERROR]
    assert out[1][S.STATUS] == S.STATUS_OK and out[1][S.CAPTION]


@pytest.mark.gpu
def test_stage_runs_in_bf16_on_gpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    _, rows = make_clips(tmp_path, [(0, 24), (24, 30)])
    st = CaptionStage(replace(SMOKE, device="auto", on_error="raise"))
    st.load()
    assert st.vlm.device.type == "cuda" and st.vlm.model.dtype == torch.bfloat16
    out = st(S.table_from_rows(rows)).to_pylist()
    assert all(r[S.CAPTION] for r in out)


def test_a_failed_short_caption_is_null_and_flagged_not_replaced(tmp_path):
    class BadShort(EchoVLM):
        def generate(self, requests, sampling):
            if requests and requests[0].frames is None:  # the short-caption (text) call
                raise RuntimeError("CUDA out of memory")
            return super().generate(requests, sampling)

    _, rows = make_clips(tmp_path, SPANS[:2])
    st = _stub_stage()
    st.vlm = BadShort()
    table = st(S.table_from_rows(rows))
    S.validate(table, upto="caption")  # a null short caption is allowed on an ok row
    for r in table.to_pylist():
        assert r[S.STATUS] == S.STATUS_OK and r[S.CAPTION].startswith("A clip with frame statistic")
        assert r[S.CAPTION_SHORT] is None  # not the dense caption's first sentence
        assert "CUDA out of memory" in json.loads(r[S.CAPTION_QA])["short_failed"]
