"""The weights every model stage of a run needs, and one place to point them at a local folder.

`stage_weights(...)` lists the `curate.weights.Weights` of the given stage configs (CLIP +
aesthetic head, captioning VLM, prompt upsampler, VAE, text encoder); `with_weights_dir`
sets `--weights-dir` on all of them. Jobs call `curate.weights.require(stage_weights(...))`
on the driver before Ray starts; `python -m jobs.check` prints the same list as a report.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from captioner.stage import CaptionConfig
from captioner.upsample import UpsampleConfig
from captioner.vlm import vlm_weights
from curate.scores.clip_models import clip_tag_weights
from curate.scores.score import clip_weights
from curate.scores.score_config import ScoreConfig
from curate.weights import Weights, expand
from latents.encode import EncodeConfig
from latents.text import text_weights
from latents.vae import vae_weights


def stage_weights(
    score: ScoreConfig | None = None,
    caption: CaptionConfig | None = None,
    encode: EncodeConfig | None = None,
    upsample: UpsampleConfig | None = None,
) -> list[Weights]:
    """Weights of the given stages, each model once (the upsampler usually is the captioner)."""
    found: list[Weights] = []
    if score is not None:
        found += clip_weights(score)
    if caption is not None:
        if getattr(caption, "engine", "transformers") == "transformers":  # a server holds its own weights
            found += vlm_weights(caption.model, caption.weights_dir)
        if caption.clip_model and caption.clip_pretrained and not caption.clip_smoke:  # caption_clip_score
            found += clip_tag_weights(caption.clip_model, caption.clip_pretrained)
    if upsample is not None and getattr(upsample, "engine", "transformers") == "transformers":
        found += vlm_weights(upsample.model, upsample.weights_dir)
    if encode is not None:
        found += vae_weights(encode.vae) + text_weights(encode.text)
    out: list[Weights] = []
    for w in found:
        if all((w.repo, w.files, w.one_of, w.any_of) != (o.repo, o.files, o.one_of, o.any_of) for o in out):
            out.append(w)
    return out


def with_weights_dir(cfg: Any, weights_dir: str | None) -> Any:
    """A stage config (or EncodeConfig / Preset-like dataclass of them) with weights_dir set, `~` expanded."""
    if not weights_dir:
        return cfg
    d = expand(weights_dir)
    if isinstance(cfg, EncodeConfig):
        return replace(cfg, vae=replace(cfg.vae, weights_dir=d), text=replace(cfg.text, weights_dir=d))
    if hasattr(cfg, "weights_dir"):
        return replace(cfg, weights_dir=d)
    fields = {
        k: with_weights_dir(getattr(cfg, k), d)
        for k in ("score", "caption", "upsample", "encode")
        if hasattr(cfg, k)
    }
    return replace(cfg, **fields)
