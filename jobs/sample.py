"""Sample a video from a trained DiT run: prompt -> (upsampled) -> text embedding -> latents -> mp4.

    python -m jobs.sample --input RUN --prompt "a red car at night" --output x.mp4
        [--upsample] [--frames F --height H --width W] [--init-video FILE --strength s]

The VAE and text encoder are the ones that made the run's shards: the loader configs (id,
revision, dtype) the shard manifest in RUN/config.json records; once loaded, their
normalisation constants (latents mean/std, scaling factor) and text width are checked against
the manifest, and a mismatch stops the job (its latents would decode wrongly). --weights-dir
points at a folder of downloaded weights (DIR/<hub repo id>). --init-video runs SDEdit: the
video's latents are noised to strength s and denoised under the new prompt; s is one
signal-to-noise ratio under every objective (that of rectified-flow time s: s=0.6 keeps the
same signal whether the run is rflow or ddpm). The sampling grid uses the run's timestep shift.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from curate.errors import UsageError, io_line
from curate.io import storage
from curate.weights import expand
from jobs.runtime import flags


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
    weights_dir: str | None = None  # DIR/<hub repo id> of downloaded weights; None: HF cache only
    ema: bool = True
    device: str = "auto"  # auto: cuda when present
    upsampler: Any = (
        None  # an UpsampleConfig from the --upsample-* flags; None: the preset for the run's text encoder
    )


def codec_configs(run_config: dict, weights_dir: str | None = None):
    """(VAEConfig, TextConfig, fps) that encoded the run's shards, as their manifest records them."""
    from latents.text import text_config_from_manifest
    from latents.vae import vae_config_from_manifest

    manifest = run_config.get("manifest") or {}
    if not manifest.get("vae") or not manifest.get("text_encoder"):
        raise UsageError(
            "the run's config.json must record the shard manifest (VAE and text encoder) its "
            f"latents were encoded with, got keys {sorted(manifest)}; train on shards written by "
            "jobs.encode / jobs.curate"
        )
    over = {"weights_dir": expand(weights_dir)} if weights_dir else {}
    vae_cfg = vae_config_from_manifest(manifest, **over)  # id, revision, dtype as encoded
    text_cfg = text_config_from_manifest(manifest, **over)
    fps = (manifest.get("encode") or {}).get("target_fps") or 24.0
    return vae_cfg, text_cfg, float(fps)


def check_codecs(manifest: dict, vae_info, text_info) -> None:
    """The loaded VAE / text encoder must have the constants the shards were normalised with."""
    want_vae, want_text = manifest.get("vae") or {}, manifest.get("text_encoder") or {}
    got_vae, got_text = vae_info.to_dict(), text_info.to_dict()
    diffs = []
    for key in (
        "latent_channels",
        "spatial_compression",
        "temporal_compression",
        "scaling_factor",
        "latents_mean",
        "latents_std",
    ):
        a, b = (
            np.atleast_1d(np.asarray(want_vae.get(key), dtype=float)),
            np.atleast_1d(np.asarray(got_vae[key], float)),
        )
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-5, atol=1e-6):
            diffs.append(f"VAE {key}: manifest {want_vae.get(key)}, loaded {got_vae[key]}")
    for key in ("dim", "max_length"):
        if want_text.get(key) != got_text[key]:
            diffs.append(f"text encoder {key}: manifest {want_text.get(key)}, loaded {got_text[key]}")
    if diffs:
        raise UsageError(
            "the VAE / text encoder loaded for sampling "
            f"({got_vae['vae_id']}, {got_text['text_encoder_id']}) must "
            f"match the ones the run's shards were encoded with ({want_vae.get('vae_id')}, "
            f"{want_text.get('text_encoder_id')}), got: {'; '.join(diffs)}; load the recorded revision "
            "(or re-encode the shards with this VAE)"
        )


def latent_shape(job: SampleJob, run_config: dict, vae_info) -> tuple[int, int, int, int]:
    if job.frames and job.height and job.width:
        if vae_info.valid_frames(job.frames) != job.frames:
            raise UsageError(
                f"--frames must follow the VAE frame rule {vae_info.frame_rule}: got {job.frames}; "
                f"use {vae_info.valid_frames(job.frames)}"
            )
        return vae_info.latent_shape(job.frames, job.height, job.width)
    if job.frames or job.height or job.width:
        raise UsageError("--frames, --height and --width go together: pass all three or none")
    shapes = run_config.get("latent_shapes") or {}
    if not shapes:
        raise UsageError("the run records no training latent shape; pass --frames --height --width")
    return tuple(json.loads(max(shapes, key=shapes.get)))


def init_latents(path: str, vae, shape: tuple[int, int, int, int], fps: float) -> torch.Tensor:
    """The first F frames of a video at `fps`, resized to the bucket, VAE-encoded: (1, C, T, h, w)."""
    from curate.video.decode import decode_clip

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
    from latents import run_sync
    from latents.dit.checkpoint import load_model
    from latents.dit.sample import sample

    device = job.device if job.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    # a run in object storage: config.json + its newest complete checkpoint into a local
    # staging folder (removed on exit), the same pull `jobs.train` resumes from
    with run_sync.staged_run(job.run) as local_run:
        model, run_config = load_model(local_run, ema=job.ema, device=device)
    if storage.is_remote(job.run):  # name the checkpoint where it lives, not the removed staging copy
        ckpt = run_config["checkpoint"]
        run_config["checkpoint"] = storage.join(job.run, run_sync.CKPT_DIR, os.path.basename(ckpt))
    vae_cfg, text_cfg, fps = codec_configs(run_config, job.weights_dir)
    from curate.weights import require
    from latents.text import text_weights
    from latents.vae import vae_weights

    require(vae_weights(vae_cfg) + text_weights(text_cfg), vae_cfg.weights_dir)
    caption, upsampled = job.prompt, False
    if job.upsample:
        from captioner.upsample import DEFAULT as UP_DEFAULT
        from captioner.upsample import SMOKE as UP_SMOKE
        from captioner.upsample import PromptUpsampler

        up = job.upsampler or (UP_SMOKE if text_cfg.smoke else UP_DEFAULT)
        up = replace(up, weights_dir=expand(job.weights_dir)) if job.weights_dir else up
        upsampler = PromptUpsampler(up)
        upsampler.probe()  # engine openai: server, key and model checked before anything loads
        res = upsampler([job.prompt], seed=job.seed)[0]
        caption, upsampled = res.caption, res.upsampled
        if not res.upsampled:
            print(f"[sample] prompt kept as is: {res.reason}", flush=True)
    text_encoder, vae = _load_codecs(vae_cfg, text_cfg)
    check_codecs(run_config["manifest"], vae.info, text_encoder.info)
    text, mask = text_encoder.encode([caption])
    if text.shape[-1] != model.cfg.text_dim:
        raise UsageError(
            f"text encoder width {text.shape[-1]} must equal the run's text_dim {model.cfg.text_dim}; "
            "the run was trained on other shards than its manifest says: retrain"
        )
    shape = latent_shape(job, run_config, vae.info)
    init = None
    if job.init_video:
        init = init_latents(job.init_video, vae, shape, job.fps or fps)
    elif job.strength != 1.0:
        raise UsageError(
            f"--strength {job.strength} needs --init-video (SDEdit); drop --strength or add a video"
        )
    objective = run_config["train"]["objective"]
    # the timestep shift the run trained with (a number or "auto"); runs from before it: none
    shift = run_config["train"].get("shift", 1.0)
    z = sample(
        model,
        text,
        mask,
        shape,
        steps=job.steps,
        cfg_scale=job.cfg_scale,
        objective=objective,
        generator=torch.Generator().manual_seed(job.seed),
        init=init,
        strength=job.strength,
        shift=shift,
    )
    pixels = vae.decode(z.cpu())  # (1, 3, F, H, W) in [-1, 1]
    frames = ((pixels[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    # (3, F, H, W) -> (F, H, W, 3) uint8; libx264 needs even sides
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    from curate.video.mp4 import write_video

    _write_mp4(job.out, list(frames), round(job.fps or fps), write_video)
    smoke = bool(vae.info.smoke or text_cfg.smoke or (run_config.get("manifest") or {}).get("smoke", False))
    summary = {
        "out": job.out,
        "caption": caption,
        "vae": vae.info.vae_id,
        "text_encoder": text_encoder.info.text_encoder_id,
        "upsampled": upsampled,
        "latent_shape": list(shape),
        "frames": int(frames.shape[0]),
        "size": [int(frames.shape[2]), int(frames.shape[1])],
        "sdedit_strength": job.strength if init is not None else None,
        "timestep_shift": shift,
        "checkpoint": run_config["checkpoint"],
        "smoke_random_models": smoke,
    }
    print(f"[sample] {json.dumps(summary)}", flush=True)
    return summary


def _write_mp4(out: str, frames: list, fps: int, write_video) -> None:
    """Local: written in place. A URI: encoded into a local temp file, then uploaded whole (one
    object that appears only when complete); the temp folder is always removed."""
    if not storage.is_remote(out):
        write_video(out, frames, fps=fps)
        return
    tmp_dir = tempfile.mkdtemp(prefix="tubelet-sample-")
    try:
        tmp = os.path.join(tmp_dir, storage.basename(out))  # same suffix: the muxer picks mp4 from it
        write_video(tmp, frames, fps=fps)
        storage.publish_copy(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.sample", __doc__.split("\n")[0])
    flags.add_io(p, "training run folder (config.json, checkpoints/) written by jobs.train", "output .mp4")
    p.add_argument("--prompt", required=True, help="the text to sample a video for")
    p.add_argument("--upsample", action="store_true", help="expand the prompt with the captioner first")
    p.add_argument(
        "--upsample-engine",
        choices=["transformers", "openai"],
        default=None,
        help="--upsample with an OpenAI-compatible server (openai) instead of the model in this process",
    )
    p.add_argument(
        "--upsample-model", default=None, help="--upsample-engine openai: the model's name on the server"
    )
    p.add_argument(
        "--upsample-base-url",
        default=None,
        help="--upsample-engine openai: the API root, e.g. http://127.0.0.1:8000/v1",
    )
    p.add_argument(
        "--upsample-api-key-env",
        default=None,
        metavar="VAR",
        help="--upsample-engine openai: NAME of the environment variable holding the key (never the key)",
    )
    p.add_argument("--init-video", help="SDEdit: start from this video's latents")
    p.add_argument(
        "--strength",
        type=flags.finite_float,
        default=1.0,
        help=(
            "SDEdit noise level in (0, 1]: the SNR of rectified-flow time s, ((1-s)/s)^2, for every objective"
        ),
    )
    for name in ("frames", "height", "width"):
        p.add_argument(
            f"--{name}", type=int, help="pixels; with the other two, or none (the run's most common shape)"
        )
    p.add_argument("--steps", type=int, default=SampleJob.steps, help="denoising steps")
    p.add_argument("--seed", type=int, default=SampleJob.seed, help="noise seed (same seed, same video)")
    p.add_argument(
        "--cfg-scale",
        type=flags.finite_float,
        default=SampleJob.cfg_scale,
        help="classifier-free guidance scale (1: no guidance)",
    )
    p.add_argument("--fps", type=flags.finite_float, help="(default: the run's data fps)")
    flags.add_weights_dir(p)
    p.add_argument("--no-ema", action="store_true", help="sample with the raw weights, not the EMA ones")
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
    if not a.output.lower().endswith(".mp4"):  # the muxer picks the container from the suffix: mp4 only
        raise flags.fail("--output must be an .mp4 file", repr(a.output), "pass e.g. --output sample.mp4")
    if a.fps is not None:
        flags.check_float("--fps", a.fps, 0, strict=True, fix="pass e.g. --fps 24")
    if not flags.DEVICE_RE.match(a.device):
        raise flags.fail("--device must be auto, cpu, cuda or cuda:N", repr(a.device), "pass --device auto")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise flags.fail("--device cuda needs a CUDA GPU on this machine", "0 GPUs", "pass --device cpu")
    run = flags.canonical(a.input)
    try:
        has_config = storage.is_file(storage.join(run, "config.json"))
    except (OSError, ValueError) as e:  # missing bucket, bad credentials, unreachable endpoint
        raise flags.fail(
            "--input must be a readable training run folder",
            f"{a.input!r} ({io_line(e)})",
            "check the path, the bucket, AWS_ENDPOINT_URL and the AWS_* credentials",
        ) from e
    if not has_config:
        raise flags.fail(
            "--input must be a training run folder with config.json",
            repr(a.input),
            f"train one with `python -m jobs.train --input OUT/latents --output {a.input}`",
        )
    init = None
    if a.strength != 1.0 and a.init_video is None:
        raise flags.fail(
            "--strength needs --init-video (SDEdit)", a.strength, "drop --strength or add a video"
        )
    if a.init_video is not None:
        init = flags.canonical(a.init_video)
        try:
            found = storage.is_file(
                init
            )  # a URI is decoded straight from the object store (curate.video.decode)
        except (OSError, ValueError) as e:
            raise flags.fail(
                "--init-video must be a readable video file",
                f"{a.init_video!r} ({io_line(e)})",
                "check the path, the bucket and the AWS_* credentials",
            ) from e
        if not found:
            raise flags.fail(
                "--init-video must be an existing video file", repr(a.init_video), "check the path"
            )
    out = flags.canonical(a.output)
    flags.check_writable_file("--output", out)
    up = upsample_config(a)
    return SampleJob(
        upsampler=up,
        run=run,
        prompt=a.prompt,
        out=out,
        upsample=a.upsample,
        init_video=init,
        strength=a.strength,
        frames=a.frames,
        height=a.height,
        width=a.width,
        steps=a.steps,
        cfg_scale=a.cfg_scale,
        seed=a.seed,
        fps=a.fps,
        weights_dir=expand(a.weights_dir),
        ema=not a.no_ema,
        device=a.device,
    )


def upsample_config(a: argparse.Namespace) -> Any:
    """The --upsample-* flags -> an UpsampleConfig (None: the preset), checked as jobs.caption checks
    its own."""
    named = [
        f"--upsample-{n}"
        for n in ("engine", "model", "base-url", "api-key-env")
        if getattr(a, "upsample_" + n.replace("-", "_")) is not None
    ]
    if named and not a.upsample:
        raise flags.fail(f"{named[0]} needs --upsample", "no --upsample", "add --upsample")
    if a.upsample_engine != "openai":
        if a.upsample_base_url or a.upsample_api_key_env or a.upsample_model:
            raise flags.fail(
                "--upsample-base-url/-model/-api-key-env need --upsample-engine openai",
                f"--upsample-engine {a.upsample_engine or 'transformers'}",
                "add --upsample-engine openai",
            )
        return None
    from captioner.upsample import DEFAULT as UP_DEFAULT

    if not a.upsample_model:
        raise flags.fail(
            "--upsample-engine openai needs --upsample-model, the model's name on the server",
            "none",
            "pass --upsample-model NAME (GET BASE_URL/models lists them)",
        )
    ns = argparse.Namespace(
        engine="openai",
        model=a.upsample_model,
        base_url=a.upsample_base_url,
        api_key_env=a.upsample_api_key_env,
        max_in_flight=None,
        frames=None,
        request_timeout=None,
        request_retries=None,
    )
    if not a.upsample_base_url:
        raise flags.fail(
            "--upsample-engine openai needs --upsample-base-url",
            "none",
            "pass --upsample-base-url http://HOST:PORT/v1",
        )
    return flags.caption_engine_config(ns, UP_DEFAULT)


def parse_args(argv: list[str] | None) -> SampleJob:
    return job_from_args(build_parser().parse_args(argv))


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return flags.run_cli(lambda: main(job_from_args(args)) and 0)


if __name__ == "__main__":
    sys.exit(cli())
