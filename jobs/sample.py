"""Sample a video from a trained DiT run: prompt -> (upsampled) -> text embedding -> latents -> mp4.

    python -m jobs.sample --run RUN --prompt "a red car at night" --out x.mp4
        [--upsample] [--frames F --height H --width W] [--init-video FILE --strength s]

The VAE and text encoder are the ones that made the run's shards (from the shard manifest
recorded in RUN/config.json), or --preset's. --init-video runs SDEdit: the video's latents
are noised to strength s and denoised under the new prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from curate.errors import UsageError
from jobs import flags

ENCODE_PRESETS = ("smoke", "smoke-ltx", "default", "ltx")


@dataclass(frozen=True)
class SampleJob:
    run: str
    prompt: str
    out: str
    upsample: bool = False
    init_video: str | None = None
    strength: float = 1.0
    frames: int | None = None  # pixel size; None = the run's most common training latent shape
    height: int | None = None
    width: int | None = None
    steps: int = 30
    cfg_scale: float = 4.0
    seed: int = 0
    fps: float | None = None
    preset: str | None = None  # VAE + text encoder preset; None = from the run's shard manifest
    ema: bool = True
    device: str = "auto"  # auto: cuda when present


def codec_configs(run_config: dict, preset: str | None):
    """(VAEConfig, TextConfig, fps) of the run's data: the encode preset that matches its manifest."""
    from latents import encode as E

    manifest = run_config.get("manifest") or {}
    if preset is None:
        vae = manifest.get("vae") or {}
        kind, smoke = vae.get("kind", "wan"), bool(vae.get("smoke", True))
        preset = ("smoke" if kind == "wan" else "smoke-ltx") if smoke else ("default" if kind == "wan" else "ltx")
    cfg = {"smoke": E.SMOKE, "smoke-ltx": E.SMOKE_LTX, "default": E.DEFAULT, "ltx": E.LTX}[preset]
    fps = (manifest.get("encode") or {}).get("target_fps") or cfg.target_fps or 24.0
    return cfg.vae, cfg.text, float(fps)


def latent_shape(job: SampleJob, run_config: dict, vae_info) -> tuple[int, int, int, int]:
    if job.frames and job.height and job.width:
        if vae_info.valid_frames(job.frames) != job.frames:
            raise UsageError(f"--frames must follow the VAE frame rule {vae_info.frame_rule}: got {job.frames}; "
                             f"use {vae_info.valid_frames(job.frames)}")
        return vae_info.latent_shape(job.frames, job.height, job.width)
    if job.frames or job.height or job.width:
        raise UsageError("--frames, --height and --width go together: pass all three or none")
    shapes = run_config.get("latent_shapes") or {}
    if not shapes:
        raise UsageError("the run records no training latent shape; pass --frames --height --width")
    return tuple(json.loads(max(shapes, key=shapes.get)))


def init_latents(path: str, vae, shape: tuple[int, int, int, int], fps: float) -> torch.Tensor:
    """The first F frames of a video at `fps`, resized to the bucket, VAE-encoded: (1, C, T, h, w)."""
    from curate.decode import decode_clip

    info = vae.info
    _, t, h, w = shape
    frames = (t - 1) * info.temporal_compression + 1
    size = (w * info.spatial_compression, h * info.spatial_compression)
    try:
        clip = decode_clip(path, 0.0, frames / fps + 1.0, times=np.arange(frames) / fps, size=size)
    except Exception as e:  # not a video, unreadable: a bad argument, not a crash
        raise UsageError(f"--init-video must be a readable video, got {path} ({e}); pass another file") from e
    x = clip.frames
    if len(x) == 0:
        raise UsageError(f"--init-video must be a readable video with frames: got {path}")
    x = np.concatenate([x, np.repeat(x[-1:], frames - len(x), axis=0)]) if len(x) < frames else x[:frames]
    pixels = torch.from_numpy(x).float().div(127.5).sub(1.0)  # (F, H, W, 3) uint8 -> [-1, 1]
    pixels = pixels.permute(3, 0, 1, 2)[None]  # (F, H, W, 3) -> (1, 3, F, H, W)
    return vae.encode(pixels)


def _load_codecs(vae_cfg, text_cfg):
    """The text encoder and VAE (latents.text / latents.vae loaders: hub id, local dir or smoke)."""
    from latents.text import load_text_encoder
    from latents.vae import load_vae

    return load_text_encoder(text_cfg), load_vae(vae_cfg)


def main(job: SampleJob) -> dict:
    from latents.dit.checkpoint import load_model
    from latents.dit.sample import sample

    device = job.device if job.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, run_config = load_model(job.run, ema=job.ema, device=device)
    vae_cfg, text_cfg, fps = codec_configs(run_config, job.preset)
    caption, upsampled = job.prompt, False
    if job.upsample:
        from captioner.upsample import DEFAULT as UP_DEFAULT
        from captioner.upsample import SMOKE as UP_SMOKE
        from captioner.upsample import PromptUpsampler

        res = PromptUpsampler(UP_SMOKE if text_cfg.smoke else UP_DEFAULT)([job.prompt], seed=job.seed)[0]
        caption, upsampled = res.caption, res.upsampled
        if not res.upsampled:
            print(f"[sample] prompt kept as is: {res.reason}", flush=True)
    text_encoder, vae = _load_codecs(vae_cfg, text_cfg)
    text, mask = text_encoder.encode([caption])
    if text.shape[-1] != model.cfg.text_dim:
        raise UsageError(f"text encoder width {text.shape[-1]} != the run's text_dim {model.cfg.text_dim}; "
                         f"pass the --preset the run's shards were encoded with")
    shape = latent_shape(job, run_config, vae.info)
    init = None
    if job.init_video:
        init = init_latents(job.init_video, vae, shape, job.fps or fps)
    elif job.strength != 1.0:
        raise UsageError(f"--strength {job.strength} needs --init-video (SDEdit); drop --strength or add a video")
    objective = run_config["train"]["objective"]
    z = sample(model, text, mask, shape, steps=job.steps, cfg_scale=job.cfg_scale, objective=objective,
               generator=torch.Generator().manual_seed(job.seed), init=init, strength=job.strength)
    pixels = vae.decode(z.cpu())  # (1, 3, F, H, W) in [-1, 1]
    frames = ((pixels[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    # (3, F, H, W) -> (F, H, W, 3) uint8; libx264 needs even sides
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    from curate.synth import write_video

    write_video(job.out, list(frames), fps=round(job.fps or fps))
    smoke = bool(vae.info.smoke or text_cfg.smoke or (run_config.get("manifest") or {}).get("smoke", False))
    summary = {"out": job.out, "caption": caption, "upsampled": upsampled, "latent_shape": list(shape),
               "frames": int(frames.shape[0]), "size": [int(frames.shape[2]), int(frames.shape[1])],
               "sdedit_strength": job.strength if init is not None else None,
               "checkpoint": run_config["checkpoint"], "smoke_random_models": smoke}
    print(f"[sample] {json.dumps(summary)}", flush=True)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.sample", __doc__.split("\n")[0])
    flags.add_io(p, "training run folder (config.json, checkpoints/) written by jobs.train", "output .mp4",
                 input_alias="--run")
    p.add_argument("--prompt", required=True)
    p.add_argument("--upsample", action="store_true", help="expand the prompt with the captioner first")
    p.add_argument("--init-video", help="SDEdit: start from this video's latents")
    p.add_argument("--strength", type=float, default=1.0, help="SDEdit noise level in (0, 1]")
    for name in ("frames", "height", "width"):
        p.add_argument(f"--{name}", type=int, help="pixels; with the other two, or none (the run's most common shape)")
    p.add_argument("--steps", type=int, default=SampleJob.steps)
    p.add_argument("--seed", type=int, default=SampleJob.seed)
    p.add_argument("--cfg-scale", type=float, default=SampleJob.cfg_scale)
    p.add_argument("--fps", type=float, help="(default: the run's data fps)")
    p.add_argument("--preset", choices=ENCODE_PRESETS, help="VAE + text encoder (default: the run's shard manifest)")
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda | cuda:N")
    flags.add_verbose(p)
    return p


def job_from_args(a: argparse.Namespace) -> SampleJob:
    """Every check before a model is loaded: flags, the run, the init video, the output folder."""
    if not 0.0 < a.strength <= 1.0:
        raise flags.fail("--strength must be in (0, 1]", a.strength, "e.g. 0.6 keeps the init's layout")
    for flag, v in (("--frames", a.frames), ("--height", a.height), ("--width", a.width)):
        if v is not None:
            flags.check_int(flag, v, 1, f"pass a positive {flag} or leave it out (the run's training shape)")
    flags.check_int("--steps", a.steps, 1)
    if a.fps is not None:
        flags.check_float("--fps", a.fps, 0, strict=True, fix="pass e.g. --fps 24")
    if not flags.DEVICE_RE.match(a.device):
        raise flags.fail("--device must be auto, cpu, cuda or cuda:N", repr(a.device), "pass --device auto")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise flags.fail("--device cuda needs a CUDA GPU on this machine", "0 GPUs", "pass --device cpu")
    run = flags.canonical(a.input)
    if not Path(run, "config.json").is_file():
        raise flags.fail("--input must be a training run folder with config.json", repr(a.input),
                         f"train one with `python -m jobs.train --input OUT/latents --output {a.input}`")
    init = None
    if a.strength != 1.0 and a.init_video is None:
        raise flags.fail("--strength needs --init-video (SDEdit)", a.strength, "drop --strength or add a video")
    if a.init_video is not None:
        init = flags.canonical(a.init_video)
        if "://" not in init and not Path(init).is_file():
            raise flags.fail("--init-video must be an existing video file", repr(a.init_video), "check the path")
    out = flags.canonical(a.output)
    flags.check_writable_file("--output", out)
    return SampleJob(run=run, prompt=a.prompt, out=out, upsample=a.upsample, init_video=init,
                     strength=a.strength, frames=a.frames, height=a.height, width=a.width, steps=a.steps,
                     cfg_scale=a.cfg_scale, seed=a.seed, fps=a.fps, preset=a.preset, ema=not a.no_ema,
                     device=a.device)


def parse_args(argv: list[str] | None) -> SampleJob:
    return job_from_args(build_parser().parse_args(argv))


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return flags.run_cli(lambda: main(job_from_args(args)) and 0)


if __name__ == "__main__":
    sys.exit(cli())
