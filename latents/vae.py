"""Causal spacetime video VAE wrapper (diffusers): everything needed to read a latent back.

CONTRACT (shared with latents/dit, the DiT sampler and trainer):

- `load_vae(cfg) -> VideoVAE`; the same loader serves a hub id, a local directory, or the
  tiny random model `build_smoke_vae(dir, kind)` saves.
- `VideoVAE.encode(pixels)`: pixels `[B, 3, F, H, W]` float in [-1, 1], F following the frame
  rule (`F = k*m + 1`, k = temporal compression), H and W multiples of the spatial compression
  -> latents `[B, C, T, h, w]` float32, ALREADY NORMALISED:
  `z_norm = (z - latents_mean) * scaling_factor / latents_std` (per channel; mean 0 / std 1 /
  factor 1 when the VAE does not define them). T = (F - 1) / k + 1, h = H / s, w = W / s.
- `VideoVAE.decode(latents)`: normalised latents `[B, C, T, h, w]` -> pixels `[B, 3, F, H, W]`
  float32 in [-1, 1] (clamped).
- `VideoVAE.info` (`VAEInfo`, JSON-able via `to_dict()`, recorded in latents/manifest.json):
  vae id/revision/kind, latent channels, spatial/temporal compression, frame rule,
  latents mean/std and scaling factor, and `config` (the VAEConfig that loads it again):
  a sampler gets the VAE of a shard folder with
  `load_vae(vae_config_from_manifest(read_manifest(root), device="cuda"))`.

Default: Wan 2.1 VAE (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`, subfolder `vae`; 16 channels,
8x space, 4x time, frames 4k+1). Also LTX-Video (`Lightricks/LTX-Video`, subfolder `vae`;
128 channels, 32x space, 8x time, frames 8k+1), much faster on CPU.
References: Wan 2.1 (arXiv 2503.20314), LTX-Video (arXiv 2501.00103), diffusers pipelines
`pipeline_wan.py` / `pipeline_ltx.py` for the normalisation formulas.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from curate.errors import UsageError
from curate.weights import Weights, expand, local_repo, subfolder_kwargs

VaeKind = Literal["wan", "ltx"]
TorchDtype = Literal["float32", "bfloat16", "float16"]

WAN_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
LTX_ID = "Lightricks/LTX-Video"
SMOKE_CACHE = Path(os.environ.get("TUBELET_CACHE", Path.home() / ".cache" / "tubelet")) / "smoke"


@dataclass(frozen=True)
class VAEConfig:
    kind: VaeKind = "wan"
    source: str = WAN_ID  # hub id, local directory, or (smoke) where the tiny model is built
    subfolder: str = "vae"  # used when `source` holds a whole pipeline
    revision: str | None = None
    dtype: TorchDtype = "float32"
    device: str = "auto"  # auto = cuda if available
    # important: off by default, as diffusers' Wan / LTX pipelines and Wan2.1 encode (tiles blend
    # overlaps, so tiled latents differ from the reference encoder's); on: bounded memory at high
    # resolution (README, "Weights and model inputs", for the measured untiled peak)
    tiling: bool = False
    tile_px: int | None = (
        None  # tile side in pixels (overlap 1/4); None: diffusers' default (Wan 256, LTX 512)
    )
    slicing: bool = True  # one clip of a batch at a time through the VAE
    smoke: bool = False  # tiny random model: build it at `source` if missing
    weights_dir: str | None = None  # folder with <dir>/<hub id> (hf download --local-dir); None: HF cache


# important: Wan's VAE runs in float32, as diffusers' Wan pipelines load it (`AutoencoderKLWan.
# from_pretrained(..., torch_dtype=torch.float32)`, the DiT in bf16); in bf16 its causal conv
# cache drifts over long clips.
WAN_DEFAULT = VAEConfig(kind="wan", source=WAN_ID, dtype="float32")
LTX_DEFAULT = VAEConfig(kind="ltx", source=LTX_ID, dtype="bfloat16")
WAN_SMOKE = VAEConfig(kind="wan", source=str(SMOKE_CACHE / "vae-wan"), subfolder="", tiling=False, smoke=True)
LTX_SMOKE = VAEConfig(kind="ltx", source=str(SMOKE_CACHE / "vae-ltx"), subfolder="", tiling=False, smoke=True)


@dataclass(frozen=True)
class VAEInfo:
    """What a reader needs to interpret a stored latent (goes into the shard manifest)."""

    vae_id: str
    kind: str
    revision: str | None
    latent_channels: int
    spatial_compression: int
    temporal_compression: int
    frame_rule: str  # e.g. "4k+1": valid pixel frame counts
    latents_mean: list[float]
    latents_std: list[float]
    scaling_factor: float
    smoke: bool
    config: dict[str, Any] | None = None  # the VAEConfig that loads this VAE again (JSON form)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def vae_config(self) -> VAEConfig:
        """The config that loads this VAE again (e.g. the DiT sampler, from a shard manifest)."""
        if not self.config:
            raise UsageError(
                f"VAE info of {self.vae_id!r} records no loader config; re-encode with this tubelet"
            )
        return VAEConfig(**self.config)

    def valid_frames(self, n: int) -> int:
        """Largest frame count <= n that the VAE accepts (k*m + 1); 0 when n < 1."""
        k = self.temporal_compression
        return 0 if n < 1 else k * ((n - 1) // k) + 1

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """[C, T, h, w] of the latent of a (frames, height, width) clip."""
        k, s = self.temporal_compression, self.spatial_compression
        return (self.latent_channels, (frames - 1) // k + 1, height // s, width // s)


def vae_config_from_manifest(manifest: dict[str, Any], **overrides: Any) -> VAEConfig:
    """The VAEConfig recorded in a latent shard manifest (`manifest["vae"]["config"]`), e.g. device="cuda"."""
    cfg = manifest.get("vae", {}).get("config")
    if not cfg:
        raise UsageError(
            "the shard manifest records no VAE loader config (vae.config); re-encode with this tubelet"
        )
    return replace(VAEConfig(**cfg), **overrides)


def _model_class(kind: VaeKind) -> type:
    from diffusers import AutoencoderKLLTXVideo, AutoencoderKLWan

    return {"wan": AutoencoderKLWan, "ltx": AutoencoderKLLTXVideo}[kind]


# LTX decoders >= 0.9.1 are timestep-conditioned. As diffusers' LTXPipeline does by default
# (decode_timestep=0.0, decode_noise_scale=decode_timestep): the latents are mixed with noise
# at that scale and the same value is the decoder's timestep; at 0.0 this is a plain decode.
LTX_DECODE_TIMESTEP = 0.0


def vae_weights(cfg: VAEConfig) -> list[Weights]:
    """The hub weights this config loads (none for smoke models and local folders)."""
    if cfg.smoke or Path(expand(cfg.source) or "").is_dir():  # a folder given as source: the loader checks it
        return []
    sub = f"{cfg.subfolder}/" if cfg.subfolder else ""
    name = f"{sub}diffusion_pytorch_model"
    return [
        Weights(
            f"{cfg.kind} VAE",
            cfg.source,
            cfg.revision,
            files=(f"{sub}config.json",),
            any_of=((f"{name}.safetensors",), (f"{name}.safetensors.index.json",), (f"{name}.bin",)),
            include=(f"{sub}*",) if sub else (),
        )
    ]


class VideoVAE:
    """A loaded VAE plus its normalisation. See the module docstring for the contract."""

    def __init__(self, model: torch.nn.Module, info: VAEInfo, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.info = info
        self.device = device
        self.dtype = dtype
        c = info.latent_channels
        # (C,) -> (1, C, 1, 1, 1) to broadcast over [B, C, T, h, w]
        self._mean = torch.tensor(info.latents_mean, dtype=torch.float32).view(1, c, 1, 1, 1)
        self._std = torch.tensor(info.latents_std, dtype=torch.float32).view(1, c, 1, 1, 1)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z.float() - self._mean) * self.info.scaling_factor / self._std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self._std / self.info.scaling_factor + self._mean

    def check_pixels(self, frames: int, height: int, width: int) -> None:
        s = self.info.spatial_compression
        if self.info.valid_frames(frames) != frames or height % s or width % s:
            raise UsageError(
                f"{self.info.kind} VAE input must have frames = {self.info.frame_rule} and height/width "
                f"multiples of {s}, got {frames}x{height}x{width}; resample with latents.buckets first"
            )

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> normalised latents [B, C, T, h, w] float32 (posterior mode)."""
        _, _, f, h, w = pixels.shape
        self.check_pixels(f, h, w)
        x = pixels.to(self.device, self.dtype)
        z = self.model.encode(x).latent_dist.mode()
        return self.normalize(z.float().cpu())

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, T, h, w] -> pixels [B, 3, F, H, W] float32 in [-1, 1]."""
        z = self.denormalize(latents.cpu()).to(self.device, self.dtype)
        kwargs: dict[str, Any] = {}
        if getattr(self.model.config, "timestep_conditioning", False):
            t = LTX_DECODE_TIMESTEP
            if t:  # pipeline_ltx.py: latents = (1 - scale) * latents + scale * noise, scale = decode_timestep
                z = (1 - t) * z + t * torch.randn_like(z)
            kwargs["temb"] = torch.full((z.shape[0],), t, device=self.device, dtype=self.dtype)
        y = self.model.decode(z, **kwargs).sample
        return y.float().clamp(-1, 1).cpu()


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def vae_constants(
    kind: VaeKind, model: torch.nn.Module
) -> tuple[int, int, int, list[float], list[float], float]:
    cfg = model.config
    if kind == "wan":
        c = int(cfg.z_dim)
        s = int(cfg.scale_factor_spatial)
        t = int(cfg.scale_factor_temporal)
        mean = [float(v) for v in cfg.latents_mean]
        std = [float(v) for v in cfg.latents_std]
        factor = 1.0
    else:
        c = int(cfg.latent_channels)
        s = int(model.spatial_compression_ratio)
        t = int(model.temporal_compression_ratio)
        mean = [float(v) for v in model.latents_mean.float().tolist()]
        std = [float(v) for v in model.latents_std.float().tolist()]
        factor = float(cfg.scaling_factor)
    if len(mean) != c or len(std) != c:
        raise UsageError(
            f"VAE latents_mean/std must have {c} entries (latent channels), got {len(mean)}/{len(std)}; "
            "check the VAE config"
        )
    return c, s, t, mean, std, factor


def load_vae(cfg: VAEConfig) -> VideoVAE:
    """Load real weights (hub id / cache / local dir) or the smoke model, through one path."""
    if cfg.smoke and not (Path(cfg.source) / "config.json").is_file():
        build_smoke_vae(cfg.source, cfg.kind)
    cls = _model_class(cfg.kind)
    # the one weights rule (curate.weights): the check looked at the very same folder
    source = local_repo(cfg.source, cfg.weights_dir)
    kwargs: dict[str, Any] = {"revision": cfg.revision, **subfolder_kwargs(source, cfg.source, cfg.subfolder)}
    try:
        model = cls.from_pretrained(source, torch_dtype=getattr(torch, cfg.dtype), **kwargs)
    except (OSError, ValueError) as e:
        fetch = Weights(
            "", cfg.source, cfg.revision, include=(f"{cfg.subfolder}/*",) if cfg.subfolder else ()
        )
        raise UsageError(
            f"VAE weights {cfg.source!r} (subfolder {cfg.subfolder!r}) must be available locally, got: "
            f"{str(e).splitlines()[0][:200]}; fetch them with `{fetch.download_line(cfg.weights_dir)}` "
            "(or set HF_HOME to a cache that has them), or pass a local directory with --weights-dir"
        ) from e
    device = _resolve_device(cfg.device)
    model = model.to(device).eval()
    if cfg.tiling:
        if cfg.tile_px:
            # important: tile and stride must be multiples of the spatial compression, else the
            # diffusers tiled encoders return latents of the wrong size (seen with LTX, 64/48 px)
            s = int(getattr(model, "spatial_compression_ratio", 8))
            tile = max(2 * s, cfg.tile_px // s * s)
            stride = max(s, tile * 3 // 4 // s * s)
            model.enable_tiling(
                tile_sample_min_height=tile,
                tile_sample_min_width=tile,
                tile_sample_stride_height=stride,
                tile_sample_stride_width=stride,
            )
        else:
            model.enable_tiling()
    if cfg.slicing:
        model.enable_slicing()
    c, s, t, mean, std, factor = vae_constants(cfg.kind, model)
    vae_id = cfg.source if not cfg.smoke else f"smoke-random-{cfg.kind}-vae"
    info = VAEInfo(
        vae_id=vae_id + (f"/{cfg.subfolder}" if cfg.subfolder and not cfg.smoke else ""),
        kind=cfg.kind,
        revision=cfg.revision,
        latent_channels=c,
        spatial_compression=s,
        temporal_compression=t,
        frame_rule=f"{t}k+1",
        latents_mean=mean,
        latents_std=std,
        scaling_factor=factor,
        smoke=cfg.smoke,
        config=asdict(cfg),
    )
    return VideoVAE(model, info, device, getattr(torch, cfg.dtype))


def build_smoke_vae(directory: str | Path, kind: VaeKind = "wan", seed: int = 0) -> Path:
    """Build a tiny random VAE (configs of ENVIRONMENT.md section 6) and save it to `directory`.

    Deterministic (seeded), and written via a temporary folder + rename so concurrent actors
    building the same model never see half a folder. Non-trivial mean/std/scale are set so
    the normalisation path is exercised. Its latents are meaningless (random weights).
    """
    directory = Path(directory)
    if (directory / "config.json").is_file():
        return directory
    torch.manual_seed(seed)
    cls = _model_class(kind)
    if kind == "wan":
        c = 4
        model = cls(
            base_dim=8,
            z_dim=c,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=1,
            latents_mean=[0.1 * i for i in range(c)],
            latents_std=[1.0 + 0.25 * i for i in range(c)],
        )
    else:
        c = 8
        model = cls(
            block_out_channels=(8, 16, 32, 32),
            decoder_block_out_channels=(8, 16, 32, 32),
            latent_channels=c,
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            scaling_factor=0.5,
        )
        with torch.no_grad():
            model.latents_mean.copy_(torch.linspace(-0.2, 0.2, c))
            model.latents_std.copy_(torch.linspace(0.8, 1.6, c))
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        model.save_pretrained(tmp)
        (tmp / "SMOKE.json").write_text(json.dumps({"smoke": True, "kind": kind, "note": "random weights"}))
        try:
            os.replace(tmp, directory)
        except OSError:
            # another process won the race: its (identical, seeded) model stays
            if not (directory / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory
