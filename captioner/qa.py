"""Caption QA: pure text checks and fixes for generated captions.

A VLM's failure modes are few and recognisable: boilerplate openings ("The video shows"),
degenerate repetition loops, output cut off at the token limit, empty output or a refusal,
and captions far too short or long. Fixable problems (an opening, a trailing fragment)
are fixed and recorded; the rest fail with a reason, and the stage retries once with
different sampling before recording an error row.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass

# Openings a VLM adds before the content. Matched case-insensitively at the start, repeatedly
# (e.g. "Sure! Here is a caption: The video shows ..."), and removed.
_PREAMBLE = re.compile(
    r"^\s*(?:"
    r"(?:sure|certainly|of course|okay|ok)[,.!]?\s*"
    r"|here(?:'s| is) (?:a |the |my )?(?:dense |detailed |short |one-sentence )*"
    r"(?:caption|description|summary)[^:\n]*:\s*"
    r"|\**(?:dense |short )?(?:caption|description|summary)\**\s*:\**\s*"
    r")",
    re.IGNORECASE,
)
_OPENING = re.compile(
    r"^\s*(?:"
    r"(?:the|this) (?:video|clip|footage|scene|sequence|animation|frames?|image|shot)"
    r"(?: (?:clip|sequence))?\s+(?:shows|showcases|depicts|features|captures|presents|displays|"
    r"portrays|begins with|opens with|starts with|is of)\s*(?:that\s+)?"
    r"|in (?:this|the) (?:video|clip|footage|scene|sequence)(?: clip)?,?\s*(?:we (?:see|can see),?\s*)?"
    r"|(?:we (?:see|can see)|you can see|there is|there are)\s+(?=\w)"
    r"(?=(?:a|an|the|two|three|several|many)\b)"
    r")",
    re.IGNORECASE,
)
_REFUSAL = re.compile(
    r"\b(?:i(?:'m| am) (?:sorry|unable|not able)|i (?:cannot|can't|can not|won't)|as an ai\b|"
    r"unable to (?:view|see|process|analy[sz]e|describe|watch|access)|"
    r"(?:no|not an?) (?:video|image|frames?) (?:was |were |is |are )?(?:provided|attached|available)|"
    r"i don't have (?:the ability|access)|cannot (?:view|see|watch) (?:the|this|videos?))",
    re.IGNORECASE,
)
_WORD = re.compile(r"[\w'-]+")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")
_CHAR_LOOP = re.compile(r"(.{1,12}?)\1{7,}", re.DOTALL)  # a short unit repeated 8+ times back to back


@dataclass(frozen=True)
class QAConfig:
    min_words: int = 25
    max_words: int = 300
    short_min_words: int = 3
    short_max_words: int = 40
    ngram: int = 4  # word n-grams counted by the repetition check
    max_ngram_repeats: int = 3  # an n-gram seen more often than this is a loop
    trim_truncated: bool = True  # cut an unfinished caption back to its last full sentence
    require_finished: bool = True  # False only for smoke models, whose random text never ends


@dataclass(frozen=True)
class QAResult:
    text: str
    ok: bool
    reason: str | None  # why it failed (None when ok)
    fixes: tuple[str, ...]  # what was fixed (recorded in caption_qa)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def strip_boilerplate(text: str) -> tuple[str, bool]:
    """Remove preambles and 'The video shows'-style openings; re-capitalise. -> (text, changed)."""
    out = text.strip().strip("\"'“”").strip()
    for _ in range(4):
        new = _OPENING.sub("", _PREAMBLE.sub("", out, count=1), count=1).lstrip(" ,:;-")
        if new == out:
            break
        out = new
    changed = out != text.strip()
    if changed and out:
        out = out[0].upper() + out[1:]
    return out, changed


def repetition_loop(text: str, ngram: int = 4, max_repeats: int = 3) -> str | None:
    """A description of a degenerate loop, or None.

    Three signs: a short character unit repeated back to back ("!!!!!!!!", "abcabcabc..."),
    one word repeated 4+ times in a row, and a word n-gram seen more than `max_repeats` times.
    """
    m = _CHAR_LOOP.search(text)
    if m and not m.group(1).isspace():
        return f"repetition: {m.group(1)!r} repeated {len(m.group(0)) // len(m.group(1))} times"
    w = words(text)
    run = 1
    for a, b in itertools.pairwise(w):
        run = run + 1 if a == b else 1
        if run >= 4:
            return f"repetition: word {a!r} repeated {run}+ times in a row"
    grams = Counter(tuple(w[i : i + ngram]) for i in range(len(w) - ngram + 1))
    if grams:
        gram, count = grams.most_common(1)[0]
        if count > max_repeats:
            return f"repetition: {' '.join(gram)!r} x{count}"
    return None


def is_refusal(text: str) -> bool:
    """An apology or a claim not to see the video, near the start (where VLMs put them)."""
    return bool(_REFUSAL.search(text[:200]))


def is_empty(text: str) -> bool:
    return not any(ch.isalnum() for ch in text)


def ends_sentence(text: str) -> bool:
    return bool(re.search(r"[.!?][\"')\]]*\s*$", text))


def trim_to_sentence(text: str) -> str:
    """Text up to the end of its last complete sentence ('' when there is none)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else ""


def check_caption(text: str, finished: bool, cfg: QAConfig) -> QAResult:
    """QA of a dense caption. `finished`: the model emitted end-of-sequence before the token limit."""
    fixes: list[str] = []
    out, changed = strip_boilerplate(text)
    if changed:
        fixes.append("stripped_opening")
    out = " ".join(out.split())  # newlines, double spaces: one paragraph
    if is_empty(out):
        return QAResult(out, False, "empty output", tuple(fixes))
    if is_refusal(out):
        return QAResult(out, False, f"refusal: {out[:60]!r}", tuple(fixes))
    loop = repetition_loop(out, cfg.ngram, cfg.max_ngram_repeats)
    if loop:
        return QAResult(out, False, loop, tuple(fixes))
    if cfg.require_finished and (not finished or not ends_sentence(out)):
        why = "hit the token limit" if not finished else "ends mid-sentence"
        trimmed = trim_to_sentence(out) if cfg.trim_truncated else ""
        if trimmed and len(words(trimmed)) >= cfg.min_words:
            out = trimmed
            fixes.append("trimmed_truncated")
        else:
            return QAResult(out, False, f"truncated: {why}", tuple(fixes))
    n = len(words(out))
    if not cfg.min_words <= n <= cfg.max_words:
        return QAResult(out, False, f"length: {n} words, need {cfg.min_words}-{cfg.max_words}", tuple(fixes))
    return QAResult(out, True, None, tuple(fixes))


def check_short(text: str, finished: bool, cfg: QAConfig) -> QAResult:
    """QA of the one-sentence caption: first sentence only, within the short bounds."""
    fixes: list[str] = []
    out, changed = strip_boilerplate(" ".join(text.split()))
    if changed:
        fixes.append("stripped_opening")
    if is_empty(out) or is_refusal(out):
        return QAResult(out, False, "empty or refusal", tuple(fixes))
    loop = repetition_loop(out, cfg.ngram, cfg.max_ngram_repeats)
    if loop:
        return QAResult(out, False, loop, tuple(fixes))
    m = _SENTENCE_END.search(out)
    if m and out[m.end() :].strip():
        out = out[: m.end()]
        fixes.append("first_sentence")
    elif not m and not finished and cfg.require_finished:
        return QAResult(out, False, "truncated: hit the token limit", tuple(fixes))
    n = len(words(out))
    if not cfg.short_min_words <= n <= cfg.short_max_words:
        return QAResult(
            out, False, f"length: {n} words, need {cfg.short_min_words}-{cfg.short_max_words}", tuple(fixes)
        )
    return QAResult(out, True, None, tuple(fixes))


def first_sentence(text: str, max_words: int) -> str:
    """Fallback short caption: the dense caption's first sentence, clipped to `max_words`."""
    m = _SENTENCE_END.search(text)
    s = text[: m.end()] if m else text
    w = s.split()
    return s.strip() if len(w) <= max_words else " ".join(w[:max_words]).rstrip(",;:") + "."


# --- grounding: the caption against the measured facts (camera motion, OCR) ----------------
_SAYS_STATIC = re.compile(
    r"\b(?:static|stationary|fixed|locked[- ]off|unmoving|motionless)\s+(?:[a-z-]+\s+){0,2}"
    r"(?:camera|shot|frame|view|angle)\b"
    r"|\b(?:still|steady)\s+(?:camera|shot|frame)\b"
    r"|\bcamera\s+(?:is\s+|remains\s+|stays\s+|holds\s+)?(?:static|stationary|still|fixed|motionless|locked)\b"
    r"|\b(?:no|without(?: any)?)\s+camera\s+(?:movement|motion)\b",
    re.IGNORECASE,
)
_SAYS_MOVING = re.compile(
    r"\b(?:pan(?:s|ning|ned)?|tilt(?:s|ing|ed)?|zoom(?:s|ing|ed)?|dolly|tracking shot|"
    r"camera (?:moves|follows|tracks|sweeps|glides))\b",
    re.IGNORECASE,
)
_MOVING_CLASSES = ("pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out")


def _alnum(s: str) -> str:
    return "".join(ch for ch in s.lower() if ch.isalnum())


def check_grounding(
    caption: str, camera_motion: str | None, ocr_text: list[str] | None, min_text_chars: int = 3
) -> list[str]:
    """Flags where a caption contradicts the measured facts (empty when it agrees or there are none).

    - camera: says static while the flow measured a pan/tilt/zoom, or describes a pan/tilt/zoom
      while the camera measured static;
    - text: OCR read on-screen text (strings of at least `min_text_chars` letters/digits) and
      the caption quotes none of it (compared on letters and digits only, so spacing and
      punctuation differences between OCR and the caption do not count).
    """
    flags = []
    if camera_motion in _MOVING_CLASSES and _SAYS_STATIC.search(caption):
        flags.append(f"camera: caption says static, measured {camera_motion}")
    elif camera_motion == "static" and not _SAYS_STATIC.search(caption):
        m = _SAYS_MOVING.search(caption)
        if m:
            flags.append(f"camera: caption says {m.group(0).lower()!r}, measured static")
    texts = [t for t in (ocr_text or []) if len(_alnum(t)) >= min_text_chars]
    if texts and not any(_alnum(t) in _alnum(caption) for t in texts):
        flags.append(f"text: caption omits the on-screen text {texts[0]!r}")
    return flags
