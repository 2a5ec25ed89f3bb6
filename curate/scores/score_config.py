"""The score stage's config and its presets, apart from the stage (curate/scores/score.py) and its CPU
step (curate/scores/score_frames.py) so that both import it and neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from curate.decisions import filters
from curate.errors import OnError
from curate.scores.cheap_scores import CheapConfig
from curate.scores.clip_models import DEFAULT_HEAD
from curate.scores.flow import FlowConfig
from curate.scores.nsfw import NsfwConfig
from curate.scores.ocr import OcrConfig

SMOKE_CLIP_DIR = "~/.cache/tubelet/smoke-clip-v1"


@dataclass(frozen=True)
class ScoreConfig:
    # open_clip architecture ("ViT-L-14"), "hf-hub:org/repo", or a local directory holding
    # open_clip_config.json + weights (what build_smoke_clip writes).
    clip_model: str = "ViT-L-14"
    # pretrained tag ("openai") or a weights file; ignored for hf-hub: and directories.
    clip_pretrained: str | None = "openai"
    # head weights: a file, a directory holding aesthetic_head.safetensors, a bare file name
    # looked up in $TUBELET_WEIGHTS and ~/.cache/tubelet/weights, or "hf-hub:org/repo/file".
    # None: the head saved beside the CLIP weights (smoke directories).
    aesthetic_head: str | None = DEFAULT_HEAD
    image_size: int = 224  # model input side; the CPU step crops frames to this
    clip_frames: int = 3  # frames per clip for CLIP / aesthetic
    motion_pairs: int = 4  # adjacent-frame pairs per clip for motion
    frame_margin: float = 0.1  # share of the span skipped at each end when sampling
    analysis_short_side: int = 224  # decode size (short side) of every sampled frame; sharpness scale
    cheap: CheapConfig = field(default_factory=CheapConfig)
    # frame models of the CPU step (real weights in every preset: they are small and run on CPU)
    flow: FlowConfig = field(default_factory=FlowConfig)
    nsfw: NsfwConfig = field(default_factory=NsfwConfig)
    ocr: OcrConfig = field(default_factory=OcrConfig)
    filters: filters.FilterConfig = field(default_factory=lambda: filters.DEFAULT)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # fp16/bf16 autocast on GPU
    smoke: bool = False  # random weights: scores are meaningless
    on_error: OnError = "record"
    # folder holding downloaded weights as <dir>/<hub repo id> (and the head file); None: HF cache only
    weights_dir: str | None = None


DEFAULT = ScoreConfig(precision="fp16")
SMOKE = ScoreConfig(
    clip_model=SMOKE_CLIP_DIR,
    clip_pretrained=None,
    aesthetic_head=None,
    image_size=64,
    analysis_short_side=128,
    filters=filters.SMOKE,
    device="cpu",
    precision="fp32",
    smoke=True,
)
