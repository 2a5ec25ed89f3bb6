"""Versioned prompts for dense re-captioning and prompt upsampling.

The dense caption follows the DALL·E 3 recipe the Sora report reuses for video: a long,
literal description that a text-to-video model can be conditioned on, in a fixed order
(subjects -> actions -> setting -> camera -> light/colour/style -> on-screen text),
chronological, starting directly with the content. The short caption is one sentence.
At sampling time a user's short prompt is expanded into the same style (upsample.py), so
training and generation see the same distribution of text.

Every captioned row records `prompt_version`; change a prompt only by adding a new
version (old rows stay interpretable, and the config hash changes so the stage re-runs).

dense-v2 grounds the caption in what the score stage measured: the camera-motion class
with a speed word (from optical flow) and the recognised on-screen text (OCR) are given as
hints after the instructions ("camera: slow pan left"; "on-screen text: "SALE""). Caption QA
then flags a caption that contradicts them (captioner/qa.py, `check_grounding`).

Reference: Betker et al., "Improving Image Generation with Better Captions" (DALL·E 3, 2023);
OpenAI, "Video generation models as world simulators" (Sora, 2024).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curate.errors import UsageError

Message = dict[str, Any]


@dataclass(frozen=True)
class PromptSet:
    version: str
    system: str
    dense: str  # shown with the video
    short: str  # text only; `{caption}` is the dense caption
    upsample_system: str
    upsample: str  # text only; `{prompt}` is the user's short prompt
    hints: str = ""  # appended to `dense` when the clip has measured facts; `{facts}`: one per line


_SYSTEM_V1 = (
    "You are a precise video describer writing training captions for a text-to-video model. "
    "You describe only what is visible in the frames, literally and without speculation."
)

_DENSE_V1 = (
    "Write one dense paragraph (80 to 200 words) describing this video clip in chronological order. Cover:\n"
    "1. the main subjects and their appearance (kind, number, clothing, colours, size, "
    "distinctive features);\n"
    "2. their actions and motion, in the order they happen, with direction and speed;\n"
    "3. the setting and background (place, objects, weather, time of day);\n"
    "4. camera framing and movement (close-up, medium, wide; static, pan, tilt, zoom, tracking, handheld);\n"
    "5. lighting, colour palette and visual style (natural, studio, animation, screen recording, "
    "film grain);\n"
    "6. any on-screen text, quoted exactly.\n"
    "Rules: start directly with the subject or scene (never with 'The video shows', 'This clip', "
    "'In this video' or similar); state only what is visible, no guesses about intent, sound or "
    "what happens outside the frames; no lists, headings or markdown; plain prose, present tense."
)

_SHORT_V1 = (
    "Summarise this video description in one sentence of at most 25 words, keeping the main subject, "
    "the main action and the setting. Start directly with the subject. Reply with the sentence only.\n\n"
    "Description: {caption}"
)

_UPSAMPLE_SYSTEM_V1 = (
    "You expand short prompts for a text-to-video model into the dense caption style it was trained on: "
    "one paragraph of 80 to 200 words, present tense, chronological, starting directly with the subject, "
    "covering the subjects and their appearance, their actions and motion, the setting, camera framing "
    "and movement, lighting, colour and style, and any on-screen text. Keep every detail the user gave, "
    "add plausible concrete visual detail, never contradict the user, and reply with the caption only.\n"
    "Example. Prompt: 'a dog on a beach'. Caption: 'A golden retriever with a wet, sandy coat runs along "
    "the edge of a wide beach from left to right, kicking up small splashes as waves roll in over its "
    "paws. It slows, turns toward the camera and shakes water from its fur. Behind it, low waves break "
    "under a pale blue sky with thin clouds, and dunes with tufts of grass line the right side. The "
    "camera tracks the dog at knee height in a steady medium shot. Warm late-afternoon sunlight from the "
    "left casts long shadows; the colours are natural, soft and slightly desaturated, with a shallow "
    "depth of field.'"
)

_UPSAMPLE_V1 = "Prompt: '{prompt}'. Caption:"

_HINTS_V2 = (
    "\nMeasured facts about this clip, from optical flow and OCR (reliable; describe the camera "
    "accordingly and quote the on-screen text exactly; do not mention the measurements themselves):\n{facts}"
)

PROMPTS: dict[str, PromptSet] = {
    "dense-v1": PromptSet("dense-v1", _SYSTEM_V1, _DENSE_V1, _SHORT_V1, _UPSAMPLE_SYSTEM_V1, _UPSAMPLE_V1),
    "dense-v2": PromptSet(
        "dense-v2", _SYSTEM_V1, _DENSE_V1, _SHORT_V1, _UPSAMPLE_SYSTEM_V1, _UPSAMPLE_V1, hints=_HINTS_V2
    ),
}
LATEST = "dense-v2"

# camera_motion class -> words for the hint
_CAMERA_WORDS = {
    "static": "static (no camera movement)",
    "pan_left": "pan left",
    "pan_right": "pan right",
    "tilt_up": "tilt up",
    "tilt_down": "tilt down",
    "zoom_in": "zoom in",
    "zoom_out": "zoom out",
    "complex": "moving (handheld or combined movement)",
}
SLOW_BELOW = 0.15  # flow_magnitude (short sides / s) below this: "slow"
FAST_ABOVE = 0.6  # above this: "fast"


def facts(
    camera_motion: str | None, flow_magnitude: float | None, ocr_text: list[str] | None, max_text: int = 4
) -> list[str]:
    """The measured facts of a clip as hint lines ("camera: slow pan left", 'on-screen text: "SALE"')."""
    out = []
    if camera_motion in _CAMERA_WORDS:
        speed = ""
        if camera_motion not in ("static", "complex") and flow_magnitude is not None:
            speed = "slow " if flow_magnitude < SLOW_BELOW else "fast " if flow_magnitude > FAST_ABOVE else ""
        out.append(f"camera: {speed}{_CAMERA_WORDS[camera_motion]}")
    texts = [t for t in (ocr_text or []) if t.strip()][:max_text]
    if texts:
        out.append("on-screen text: " + "; ".join(f'"{t}"' for t in texts))
    return out


def get(version: str) -> PromptSet:
    if version not in PROMPTS:
        raise UsageError(
            f"prompt_version must be one of {sorted(PROMPTS)}, got {version!r}; "
            "add a new PromptSet to captioner/prompts.py or pick an existing one"
        )
    return PROMPTS[version]


def _text(t: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": t}]


def dense_messages(version: str, hints: list[str] | None = None) -> list[Message]:
    """Chat messages for the dense caption; the video goes where the {"type": "video"} part is.

    `hints`: measured facts (`facts()`); used by versions with a hints template, else ignored.
    """
    p = get(version)
    text = p.dense + (p.hints.format(facts="\n".join(f"- {h}" for h in hints)) if hints and p.hints else "")
    return [
        {"role": "system", "content": _text(p.system)},
        {"role": "user", "content": [{"type": "video"}, *_text(text)]},
    ]


def short_messages(version: str, caption: str) -> list[Message]:
    """Text-only messages that condense a dense caption into one sentence."""
    p = get(version)
    return [
        {"role": "system", "content": _text(p.system)},
        {"role": "user", "content": _text(p.short.format(caption=caption))},
    ]


def upsample_messages(version: str, prompt: str) -> list[Message]:
    """Text-only messages that expand a short user prompt into the dense training style."""
    p = get(version)
    return [
        {"role": "system", "content": _text(p.upsample_system)},
        {"role": "user", "content": _text(p.upsample.format(prompt=prompt.strip()))},
    ]
