"""Grounded captions: measured facts reach the prompt, QA flags contradictions, and the
caption gets a CLIP alignment score from the score stage's model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from captioner import prompts
from captioner.clip_score import CaptionClipScorer, sentences
from captioner.qa import check_grounding
from captioner.stage import SMOKE, CaptionStage
from captioner.vlm import Generation
from curate import schema as S
from tests.caption_helpers import EchoVLM, make_clips


def test_hints_reach_the_v2_prompt_only():
    hints = prompts.facts("pan_left", 0.08, ["OPEN 24 HOURS", "  "])
    assert hints == ["camera: slow pan left", 'on-screen text: "OPEN 24 HOURS"']
    assert prompts.facts("zoom_in", 0.9, None) == ["camera: fast zoom in"]
    assert prompts.facts("static", 0.9, []) == ["camera: static (no camera movement)"]
    assert prompts.facts(None, None, None) == []
    v2 = prompts.dense_messages("dense-v2", hints)[-1]["content"][-1]["text"]
    assert "- camera: slow pan left" in v2 and '"OPEN 24 HOURS"' in v2
    assert prompts.dense_messages("dense-v2", [])[-1]["content"][-1]["text"] == prompts.get("dense-v2").dense
    v1 = prompts.dense_messages("dense-v1", hints)[-1]["content"][-1]["text"]
    assert "pan left" not in v1  # old versions stay exactly as they were
    assert prompts.LATEST == "dense-v2"


@pytest.mark.parametrize(
    ("caption", "camera", "texts", "expect"),
    [
        (
            "A harbour at dusk, seen by a static camera.",
            "pan_left",
            [],
            ["camera: caption says static, measured pan_left"],
        ),
        (
            "The camera remains stationary while boats drift.",
            "tilt_up",
            [],
            ["camera: caption says static, measured tilt_up"],
        ),
        ("The camera slowly pans left across a harbour at dusk.", "pan_left", [], []),
        (
            "The camera zooms in on a red door.",
            "static",
            [],
            ["camera: caption says 'zooms', measured static"],
        ),
        ("A fixed shot of a door; the camera is static.", "static", [], []),
        ("A neon sign reads 'Open 24 hours' above a shop.", "complex", ["OPEN 24 HOURS"], []),
        (
            "A neon sign glows above a shop.",
            None,
            ["OPEN 24 HOURS", "ok"],
            ["text: caption omits the on-screen text 'OPEN 24 HOURS'"],
        ),
        ("A neon sign glows above a shop.", None, ["ok"], []),  # too short to demand
    ],
)
def test_grounding_flags(caption, camera, texts, expect):
    assert check_grounding(caption, camera, texts) == expect


class StaticSayingVLM(EchoVLM):
    """Always describes a static shot without the on-screen text; records the prompts."""

    def __init__(self):
        super().__init__()
        self.prompts: list[str] = []

    def generate(self, requests, sampling):
        if requests and requests[0].frames is not None:
            self.prompts += [r.messages[-1]["content"][-1]["text"] for r in requests]
            text = (
                "A red shop front at night under neon light, filmed in a static wide shot. People walk past "
                "the window from left to right while cars pass behind them on a wet street."
            )
            return [Generation(text, 40, True) for _ in requests]
        return [Generation("A red shop front at night.", 6, True) for _ in requests]


def test_stage_prompts_flags_and_clip_score(tmp_path):
    _, rows = make_clips(tmp_path, [(0, 24), (24, 48)])
    rng = np.random.default_rng(0)
    emb = [rng.normal(size=64) for _ in rows]
    rows[0].update(
        {
            S.CAMERA_MOTION: "pan_left",
            S.FLOW_MAGNITUDE: 0.1,
            S.OCR_TEXT: ["OPEN 24 HOURS"],
            S.CLIP_EMBEDDING: (emb[0] / np.linalg.norm(emb[0])).astype(np.float16).tolist(),
        }
    )
    rows[1].update({S.CAMERA_MOTION: "static", S.FLOW_MAGNITUDE: 0.0, S.OCR_TEXT: [], S.CLIP_EMBEDDING: None})
    cfg = replace(SMOKE, qa=replace(SMOKE.qa, min_words=5, max_words=100), on_error="raise")
    stage = CaptionStage(cfg)
    stage.vlm = StaticSayingVLM()
    out = stage(S.table_from_rows(rows)).to_pylist()
    assert "- camera: slow pan left" in stage.vlm.prompts[0] and '"OPEN 24 HOURS"' in stage.vlm.prompts[0]
    assert "- camera: static" in stage.vlm.prompts[1]
    qa0, qa1 = (json.loads(r[S.CAPTION_QA]) for r in out)
    assert qa0["grounding"] == [
        "camera: caption says static, measured pan_left",
        "text: caption omits the on-screen text 'OPEN 24 HOURS'",
    ]
    assert "grounding" not in qa1  # static caption, static camera, no text
    assert all(r[S.PROMPT_VERSION] == "dense-v2" for r in out)
    # the score is the cosine of the sentence-mean text embedding and the clip's image embedding
    scorer = CaptionClipScorer(SMOKE.clip_model, None, "cpu", smoke=True)
    t = scorer.embed_texts(sentences(out[0][S.CAPTION])).mean(axis=0)
    img = np.asarray(rows[0][S.CLIP_EMBEDDING], np.float32)
    want = float(t @ img / np.linalg.norm(t) / np.linalg.norm(img))
    assert out[0][S.CAPTION_CLIP_SCORE] == pytest.approx(want, abs=1e-4)
    assert out[1][S.CAPTION_CLIP_SCORE] is None  # no image embedding: no score
    S.validate(S.table_from_rows(out), upto="caption")


def test_clip_score_follows_the_embedding():
    """Same caption, two image embeddings: the one built from the caption's own text embedding wins."""
    scorer = CaptionClipScorer(SMOKE.clip_model, None, "cpu", smoke=True)
    cap = "A dog runs on a beach. Waves roll in."
    own = scorer.embed_texts(sentences(cap)).mean(axis=0)
    other = scorer.embed_texts(["A city street at night with cars."])[0]
    s_own, s_other = scorer.scores([cap, cap], [own, other])
    assert s_own == pytest.approx(1.0, abs=1e-5) and s_other < s_own
    assert sentences("One. Two! Three?") == ["One.", "Two!", "Three?"]
