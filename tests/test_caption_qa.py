"""Caption QA on realistic good and bad VLM outputs (pure text, no model)."""

from __future__ import annotations

import pytest

from captioner import prompts
from captioner.qa import (
    QAConfig,
    check_caption,
    check_short,
    first_sentence,
    repetition_loop,
    strip_boilerplate,
)

GOOD = (
    "A woman in a yellow raincoat and black rubber boots walks along a wet cobblestone street from left to "
    "right, holding a red umbrella over her head. She pauses in front of a bakery window, looks at the bread "
    "on display, and then continues walking as a cyclist passes behind her in the background. Rows of narrow "
    "brick houses with white window frames line the street, and puddles reflect the grey overcast sky. The "
    "camera is static at eye level in a medium-wide shot. Soft, diffuse daylight gives the scene a muted, "
    'cool palette of greys and blues, broken by the bright yellow coat. A sign above the shop reads "BAKERY".'
)
LOOP = (
    "A man in a blue shirt is standing in a kitchen. He is cutting vegetables on a wooden board. "
    + "He is cutting vegetables on a wooden board and he is cutting vegetables on a wooden board " * 3
)
LONG = (
    " ".join(["A red car drives past a row of trees on a sunny day."] * 1)
    + " "
    + " ".join(f"Then object number {i} appears near marker {i * 7} at position {i * 13}." for i in range(60))
)

# (raw text, finished, ok, reason starts with, fix expected, caption starts with)
CASES = [
    (GOOD, True, True, None, None, "A woman in a yellow"),
    (
        "The video shows " + GOOD[0].lower() + GOOD[1:],
        True,
        True,
        None,
        "stripped_opening",
        "A woman in a yellow",
    ),
    (
        "Sure! Here is a detailed caption of the video:\n\nIn this video, we see "
        + GOOD[0].lower()
        + GOOD[1:],
        True,
        True,
        None,
        "stripped_opening",
        "A woman in a yellow",
    ),
    (
        "**Caption:** This clip depicts " + GOOD[0].lower() + GOOD[1:],
        True,
        True,
        None,
        "stripped_opening",
        "A woman",
    ),
    (LOOP, True, False, "repetition", None, None),
    ("A dog dog dog dog dog runs across the field.", True, False, "repetition", None, None),
    ("A bright flash fills the screen!!!!!!!!!!!!!!!!!!!!!!", True, False, "repetition", None, None),
    (
        GOOD + " Then the camera slowly pans to the right and reveals a",
        False,
        True,
        None,
        "trimmed_truncated",
        "A woman in a yellow",
    ),
    (
        "A woman in a yellow raincoat walks along a wet street while the camera follows her and the",
        False,
        False,
        "truncated",
        None,
        None,
    ),
    (
        "I'm sorry, but I can't view videos. Could you describe the content of the video to me?",
        True,
        False,
        "refusal",
        None,
        None,
    ),
    (
        "I cannot see the video you provided, so I am unable to describe it.",
        True,
        False,
        "refusal",
        None,
        None,
    ),
    ("", True, False, "empty", None, None),
    ("  ...  \n ", True, False, "empty", None, None),
    ("A cat sleeps on a sofa.", True, False, "length", None, None),
    (LONG, True, False, "length", None, None),
]


@pytest.mark.parametrize(("text", "finished", "ok", "reason", "fix", "starts"), CASES)
def test_check_caption_on_realistic_outputs(text, finished, ok, reason, fix, starts):
    res = check_caption(text, finished, QAConfig())
    assert res.ok is ok, res
    if reason:
        assert res.reason.startswith(reason), res.reason
    if fix:
        assert fix in res.fixes
    if starts:
        assert res.text.startswith(starts)
        assert "video" not in res.text.lower()[:40]


def test_no_false_positive_on_common_phrases():
    # "in the background" and "on the left side" recur in honest dense captions
    text = (
        "A man stands on the left side of a stage in the background of a concert hall. A drummer plays on "
        "the left side of the stage, and lights flash in the background. A singer walks to the left side "
        "of the stage while smoke drifts in the background. The camera is static in a wide shot."
    )
    assert repetition_loop(text) is None
    assert check_caption(text, True, QAConfig()).ok


def test_strip_boilerplate_keeps_content_that_merely_mentions_video():
    text = "A video editor sits at a desk with two monitors showing a timeline."
    assert strip_boilerplate(text) == (text, False)
    out, changed = strip_boilerplate("There are two children playing on a swing set in a park.")
    assert changed and out.startswith("Two children")


def test_short_caption_takes_first_sentence_and_rejects_refusals():
    res = check_short(
        "The video shows a woman walking in the rain. She holds a red umbrella.", True, QAConfig()
    )
    assert res.ok and res.text == "A woman walking in the rain."
    assert set(res.fixes) == {"stripped_opening", "first_sentence"}
    assert not check_short("I'm sorry, I cannot help with that.", True, QAConfig()).ok
    assert not check_short("A woman walking in the rain while the camera", False, QAConfig()).ok


def test_first_sentence_fallback_is_bounded():
    assert first_sentence(GOOD, 40) == GOOD.split(". ")[0] + "."
    assert len(first_sentence("word " * 100, 10).split()) == 10


def test_prompts_are_versioned_and_cover_the_dense_checklist():
    p = prompts.get(prompts.LATEST)
    for topic in (
        "subjects",
        "appearance",
        "motion",
        "setting",
        "camera",
        "lighting",
        "colour",
        "style",
        "on-screen text",
        "chronological",
    ):
        assert topic in p.dense
    assert "The video shows" in p.dense  # named as forbidden
    msgs = prompts.dense_messages(prompts.LATEST)
    assert any(part["type"] == "video" for part in msgs[-1]["content"])
    assert "a dog" in prompts.upsample_messages(prompts.LATEST, " a dog ")[-1]["content"][0]["text"]
    with pytest.raises(ValueError, match="prompt_version"):
        prompts.get("dense-v0")
