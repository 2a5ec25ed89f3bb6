"""Named presets: plain dataclass instances, one field per stage (README, "Presets and weights").

- `smoke`: tiny random models built offline (CPU, seconds). For tests, CI and trying the
  plumbing. Its scores and captions are meaningless, and every output says so.
- `default`: real pretrained weights (README, "Presets and weights").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from captioner import stage as caption_stage
from captioner import upsample
from curate.scores import score_config
from curate.shots.split import SplitConfig
from latents import encode
from latents.dit import train


@dataclass(frozen=True)
class Preset:
    name: str
    random_models: bool  # True: every model is random; outputs say their content is meaningless
    split: SplitConfig
    score: score_config.ScoreConfig
    caption: caption_stage.CaptionConfig
    upsample: upsample.UpsampleConfig
    encode: encode.EncodeConfig
    train: train.TrainConfig


SMOKE = Preset(
    name="smoke",
    random_models=True,
    split=SplitConfig(),
    score=score_config.SMOKE,
    caption=caption_stage.SMOKE,
    upsample=upsample.SMOKE,
    encode=encode.SMOKE,
    train=train.SMOKE,
)

DEFAULT = Preset(
    name="default",
    random_models=False,
    split=SplitConfig(),
    score=score_config.DEFAULT,
    caption=caption_stage.DEFAULT,
    upsample=upsample.DEFAULT,
    encode=encode.DEFAULT,
    train=train.DEFAULT,
)

PRESETS: dict[str, Preset] = {"smoke": SMOKE, "default": DEFAULT}

RANDOM_MODELS_WARNING = (
    "WARNING: preset 'smoke' uses tiny RANDOM models: its scores, captions, latents and samples "
    "are meaningless; it exists to test the plumbing."
)


def with_device(preset: Preset, device: str) -> Preset:
    """The preset with every model stage on `device` ("auto" keeps each stage's own choice)."""
    if device == "auto":
        return preset
    enc = replace(preset.encode, vae=replace(preset.encode.vae, device=device))
    return replace(
        preset,
        score=replace(preset.score, device=device),
        caption=replace(preset.caption, device=device),
        encode=enc,
    )
