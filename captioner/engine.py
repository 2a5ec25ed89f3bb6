"""The caption engine interface: the little CaptionStage needs from whatever writes the text.

Two engines implement it: `captioner.vlm.VLM` (transformers `generate` inside the actor) and
`captioner.openai_engine.OpenAIEngine` (any server that speaks the OpenAI chat-completions
API: vLLM, SGLang, `transformers serve`, a hosted model). Everything around generation (frame
sampling, the prompt and its hints, QA and the retry, the short caption, rows, resume) is the
stage's and the same for both.
"""

from __future__ import annotations

from typing import Literal, Protocol

from captioner.vlm import Failed, Generation, Request, Sampling

EngineName = Literal["transformers", "openai"]
ENGINES: tuple[EngineName, ...] = ("transformers", "openai")


class EngineUnavailable(RuntimeError):
    """The engine itself is gone (a caption server that stopped answering): not a fault of the
    clip, so no error row is written; the job stops and a rerun resumes."""


class Engine(Protocol):
    model_id: str  # written to caption_model

    def fit_frames(self, request: Request, max_new_tokens: int) -> tuple[Request, int]:
        """The request with frames subsampled until prompt + max_new_tokens fit; (request, dropped)."""
        ...

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation | Failed]:
        """One output per request, in request order; `Failed` for a request given up on.
        Raises EngineUnavailable when no request can be served at all."""
        ...
