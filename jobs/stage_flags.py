"""The split, caption and encode options shared by their stage jobs and `jobs.curate`.

One definition per option, so `python -m jobs.split --min-seconds 3` and
`python -m jobs.curate --min-seconds 3` mean the same thing and show the same help.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import TYPE_CHECKING

from curate.shots.split import DETECTORS, SplitConfig
from jobs.runtime import flags

if TYPE_CHECKING:  # torch-importing modules: not loaded by jobs.split just for a type
    from captioner.stage import CaptionConfig
    from latents.encode import EncodeConfig

_SPLIT = SplitConfig()


def add_split_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detector",
        default=_SPLIT.detector,
        choices=DETECTORS,
        help="shot detector: content (PySceneDetect), transnetv2 (neural) or hybrid",
    )
    p.add_argument(
        "--min-seconds",
        type=flags.finite_float,
        default=_SPLIT.min_seconds,
        help="shots shorter than this give no clip",
    )
    p.add_argument(
        "--max-seconds",
        type=flags.finite_float,
        default=_SPLIT.max_seconds,
        help="longer shots are cut into equal windows (at least twice --min-seconds)",
    )
    p.add_argument(
        "--trim-seconds",
        type=flags.finite_float,
        default=_SPLIT.trim_seconds,
        help="dropped at each end of every shot",
    )


def split_config(a: argparse.Namespace, base: SplitConfig = _SPLIT) -> SplitConfig:
    """The split options over `base` (SplitConfig checks them: exit 2 on a bad value)."""
    return replace(
        base,
        detector=a.detector,
        min_seconds=a.min_seconds,
        max_seconds=a.max_seconds,
        trim_seconds=a.trim_seconds,
    )


def add_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only the first N inputs (sorted), for a trial run (default: all)",
    )


def check_limit(a: argparse.Namespace) -> None:
    if a.limit is not None:
        flags.check_int("--limit", a.limit, 1, "pass --limit 1 or more (or leave it out for every input)")


def add_caption_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--caption-model",
        default=None,
        help="override the preset's VLM: hub id, local folder or smoke:<family> (default: the preset's)",
    )
    p.add_argument(
        "--num-frames", type=int, default=None, help="frames per clip for captioning (default: the preset's)"
    )


def caption_config(a: argparse.Namespace, base: CaptionConfig) -> CaptionConfig:
    if a.num_frames is not None:
        flags.check_int("--num-frames", a.num_frames, 1)
    out = base
    if a.caption_model:
        out = replace(out, model=a.caption_model)
    if a.num_frames:
        out = replace(out, num_frames=a.num_frames)
    return out


def add_encode_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help="pixel frames per clip at most, before the VAE (default: the preset's)",
    )
    p.add_argument(
        "--target-fps",
        type=flags.finite_float,
        default=None,
        help="frame rate clips are resampled to (default: the preset's)",
    )


def encode_config(a: argparse.Namespace, base: EncodeConfig) -> EncodeConfig:
    out = base
    if a.max_frames is not None:
        flags.check_int("--max-frames", a.max_frames, base.min_frames, f"pass --max-frames {base.max_frames}")
        out = replace(out, max_frames=a.max_frames)
    if a.target_fps is not None:
        flags.check_float(
            "--target-fps", a.target_fps, 0, strict=True, fix=f"pass --target-fps {base.target_fps:g}"
        )
        out = replace(out, target_fps=a.target_fps)
    return out
