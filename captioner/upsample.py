"""Prompt upsampling: expand a short user prompt into a dense caption in the training style.

The Sora report (after DALL·E 3) conditions on dense captions at training time, so at
generation time a short prompt is first rewritten by a language model into the same
dense style. We use the text path of the captioning VLM (or any model `load_vlm` takes),
with the versioned upsample prompt from prompts.py and the same QA as captions.

Deterministic: each prompt is generated alone with a seed derived from (seed, prompt), so a
prompt's expansion does not depend on which other prompts share the call. A failed
expansion is retried once with the next seed; if it fails again the user's prompt is
returned unchanged and the reason recorded, so the sampler never stops on it.

`engine="openai"` sends the same text-only chat request to an OpenAI-compatible server (the
caption engine's client, `captioner/openai_engine.py`): `model` is then the model's name on the
server, `probe` checks server, key and model before anything else loads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from captioner import prompts
from captioner.engine import EngineName
from captioner.openai_engine import OpenAIConfig
from captioner.qa import QAConfig, check_caption
from captioner.vlm import Request, Sampling, load_vlm
from curate.errors import UsageError


@dataclass(frozen=True)
class UpsampleConfig:
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # the captioner's own LM: same style, one model to ship
    engine: EngineName = "transformers"  # transformers: generate here; openai: a chat-completions server
    openai: OpenAIConfig = field(default_factory=OpenAIConfig)  # the server, when engine="openai"
    prompt_version: str = prompts.LATEST
    sampling: Sampling = Sampling(max_new_tokens=320, do_sample=True, temperature=0.7, top_p=0.9)  # noqa: RUF009
    qa: QAConfig = field(default_factory=QAConfig)
    max_context: int | None = 32768
    device: str = "auto"
    dtype: str = "auto"
    weights_dir: str | None = None  # folder with <dir>/<hub id> (hf download --local-dir); None: HF cache


DEFAULT = UpsampleConfig()
SMOKE = UpsampleConfig(
    model="smoke:qwen2_5_vl",
    sampling=Sampling(max_new_tokens=24, do_sample=True),
    qa=QAConfig(min_words=1, max_words=1000, require_finished=False),
    max_context=4096,
    device="cpu",
)


@dataclass(frozen=True)
class Upsampled:
    prompt: str  # what the user wrote
    caption: str  # the dense caption to condition on (the prompt itself when upsampling failed)
    upsampled: bool
    reason: str | None  # why the prompt was kept as is
    model_id: str
    seed: int


def prompt_seed(seed: int, prompt: str, attempt: int = 0) -> int:
    """A per-prompt seed: stable across runs and independent of batch composition."""
    h = hashlib.blake2b(f"{seed}\x00{attempt}\x00{prompt}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little")


class PromptUpsampler:
    """`PromptUpsampler(cfg)`, `.load()`, then `upsampler(prompts, seed) -> list[Upsampled]`."""

    def __init__(self, cfg: UpsampleConfig):
        self.cfg = cfg
        self.vlm = None  # captioner.vlm.VLM, or a stub with `generate` and `model_id`
        prompts.get(cfg.prompt_version)

    def probe(self) -> None:
        """engine openai: one request checks server, key and model (a problem is a UsageError)."""
        if self.cfg.engine == "openai":
            from captioner.openai_engine import probe

            probe(self.cfg.openai, self.cfg.model, text_only=True)

    def load(self) -> None:
        if self.vlm is None and self.cfg.engine == "openai":
            from captioner.openai_engine import OpenAIEngine

            # text only: no frames are sent, so the frames mode needs no probe
            self.vlm = OpenAIEngine(
                replace(self.cfg.openai, frames="images", max_in_flight=1), self.cfg.model
            )
        if self.vlm is None:
            self.vlm = load_vlm(
                self.cfg.model, self.cfg.device, self.cfg.dtype, self.cfg.max_context, self.cfg.weights_dir
            )

    def __call__(self, user_prompts: list[str], seed: int = 0) -> list[Upsampled]:
        if self.vlm is None:
            self.load()
        return [self._one(p, seed) for p in user_prompts]

    def _one(self, prompt: str, seed: int) -> Upsampled:
        if not prompt or not prompt.strip():
            raise UsageError(
                f"prompt must be non-empty text, got {prompt!r}; pass what the video should show"
            )
        req = Request(prompts.upsample_messages(self.cfg.prompt_version, prompt))
        reason = None
        for attempt in range(2):
            sampling = replace(self.cfg.sampling, seed=prompt_seed(seed, prompt, attempt))
            gen = self.vlm.generate([req], sampling)[0]
            res = check_caption(gen.text, gen.finished, self.cfg.qa)
            if res.ok:
                return Upsampled(prompt, res.text, True, None, self.vlm.model_id, seed)
            reason = res.reason
        return Upsampled(
            prompt, prompt.strip(), False, f"upsampling failed QA twice: {reason}", self.vlm.model_id, seed
        )
