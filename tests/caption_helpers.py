"""Shared builders for the caption tests: generated clips as full-schema rows, and a stub VLM."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from captioner.vlm import Generation, Request, Sampling
from curate import schema as S
from curate.ids import clip_id
from curate.synthetic.synth import Segment, make_video


def make_clips(
    tmp: Path,
    spans: list[tuple[int, int]],
    kept: list[bool] | None = None,
    patterns: tuple[int, ...] = (0, 1, 2, 3),
) -> tuple[Path, list[dict]]:
    """One generated 160x96 video of 4 differently coloured 24-frame shots; a row per span."""
    path = tmp / "clips.mp4"
    if not path.exists():
        make_video(path, [Segment("shot", 24, p) for p in patterns], fps=24, width=160, height=96)
    kept = kept if kept is not None else [True] * len(spans)
    rows = []
    for (s, e), k in zip(spans, kept):
        rows.append(
            {
                S.CLIP_ID: clip_id("v0", s, e),
                S.VIDEO_ID: "v0",
                S.SOURCE_URI: str(path),
                S.START_FRAME: s,
                S.END_FRAME: e,
                S.START_PTS: s / 24,
                S.END_PTS: e / 24,
                S.FPS: 24.0,
                S.WIDTH: 160,
                S.HEIGHT: 96,
                S.SHOT_INDEX: s // 24,
                S.SPLIT_METHOD: "synthetic",
                S.TRANSITION_BEFORE: "cut",
                S.MOTION: 1.0,
                S.SHARPNESS: 1.0,
                S.BRIGHTNESS: 0.5,
                S.KEPT: k,
                S.DROP_REASON: None if k else "too_dark",
                S.STATUS: S.STATUS_OK,
                S.CONFIG_HASH: "score",
                S.TUBELET_VERSION: "0",
            }
        )
    return path, rows


def frame_stat(frames: np.ndarray) -> str:
    return f"{len(frames)}:{float(frames.mean()):.3f}"


class EchoVLM:
    """Stub model: the caption of a clip echoes a statistic of the frames it was given.

    `loop_for`: frame stats whose greedy caption is a repetition loop; `always_bad`: stats whose
    captions always fail QA; `raise_for`: stats whose generate call raises; `reverse`: process a
    batch back to front internally (the outputs still follow the inputs).
    """

    model_id = "stub-echo"

    def __init__(self, loop_for=(), always_bad=(), raise_for=()):
        self.loop_for, self.always_bad, self.raise_for = set(loop_for), set(always_bad), set(raise_for)
        self.batches: list[list[int]] = []  # frame counts per dense batch

    def fit_frames(self, request: Request, max_new_tokens: int) -> tuple[Request, int]:
        return request, 0

    def _dense(self, stat: str, sampling: Sampling) -> str:
        if stat in self.raise_for:
            raise RuntimeError(f"CUDA error: device-side assert triggered ({stat})")
        if stat in self.always_bad or (stat in self.loop_for and not sampling.do_sample):
            return "A clip a clip a clip a clip a clip a clip a clip a clip a clip a clip"
        return f"A clip with frame statistic {stat} is shown in a static wide shot under even light."

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]:
        if requests and requests[0].frames is not None:
            self.batches.append([len(r.frames) for r in requests])
            texts = [self._dense(frame_stat(r.frames), sampling) for r in reversed(requests)][::-1]
        else:  # short caption: echo the stat out of the dense caption
            texts = [
                r.messages[-1]["content"][0]["text"].split("statistic ")[1].split(" ")[0] for r in requests
            ]
            texts = [f"A clip with statistic {t}." for t in texts]
        return [Generation(t, len(t.split()), True) for t in texts]
