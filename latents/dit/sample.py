"""Text embedding -> latents with classifier-free guidance, any latent size; SDEdit from init latents.

CFG: each sample's conditional and unconditional (all-False text mask) inputs are packed into
one shared row (attention stays per sample), so a guided step is one forward over B rows.
The time grid is shifted by the run's timestep shift (`diffusion.resolve_shift`: the same
number or `auto` rule training drew its times with); on CUDA the model runs under bf16
autocast (the ODE state and the guidance mix stay float32), on CPU in float32.

SDEdit: the init latents are noised to strength s and denoised from there under the new
prompt; s=1 is plain text-to-video, small s keeps more of the init. s means one signal-to-noise
ratio under every objective: that of rectified-flow time s, SNR = ((1 - s) / s)^2 (DDPM starts
at the step of equal SNR; see `diffusion`). Reference: Meng et al. 2022, "SDEdit".
"""

from __future__ import annotations

import itertools

import torch

from latents.dit import diffusion as D
from latents.dit.model import DiT


@torch.no_grad()
def predict(
    model: DiT,
    x: torch.Tensor,
    t: float,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    cfg_scale: float,
    max_tokens: int | None = None,
    bf16: bool = True,
) -> torch.Tensor:
    """Guided model output for x (B, C, T, H, W) at model time t in [0, 1000).

    Guided: samples are [cond_0, uncond_0, cond_1, uncond_1, ...], packed into rows of
    `max_tokens` (None: two samples' tokens, so each cond / uncond pair shares a row).
    """
    b = x.shape[0]
    guided = cfg_scale != 1.0
    if guided:
        xs = list(x.repeat_interleave(2, 0))  # (2B, C, T, H, W): each sample twice, cond then uncond
        masks = torch.stack([text_mask, torch.zeros_like(text_mask)], 1).flatten(0, 1)  # (B, 2, L) -> (2B, L)
        texts = text.repeat_interleave(2, 0)
    else:
        xs, masks, texts = list(x), text_mask, text
    tokens = x[0].numel() // x.shape[1] // _tubelet(model)
    budget = max_tokens or (2 * tokens if guided else None)
    tt = torch.full((len(xs),), float(t), device=x.device)
    use_bf16 = bf16 and x.device.type == "cuda"
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        out = model.forward_latents(xs, tt, texts, masks, max_tokens=budget)
    out = torch.stack(out).float()  # list of (C, T, H, W) -> (2B|B, C, T, H, W)
    return D.cfg_combine(out[0::2], out[1::2], cfg_scale) if guided else out[:b]


def _tubelet(model: DiT) -> int:
    p = model.cfg.patch
    return p[0] * p[1] * p[2]


@torch.no_grad()
def sample(
    model: DiT,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    shape: tuple[int, int, int, int],
    *,
    steps: int = 30,
    cfg_scale: float = 4.0,
    objective: D.Objective = "rflow",
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
    shift: D.Shift = 1.0,
    max_tokens: int | None = None,
    bf16: bool = True,
) -> torch.Tensor:
    """Latents (B, C, T, H, W) for text (B, L, D) / mask (B, L).

    `init` (B, C, T, H, W) with `strength` in (0, 1] runs SDEdit; without it strength must be 1.
    `shift`: the run's timestep shift (a number or "auto"; rectified flow only). `max_tokens`:
    packed row length of a guided step (None: one cond / uncond pair per row). `bf16`: autocast
    on CUDA (CPU always float32).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1]: got {strength}; use e.g. 0.6 to keep the init layout")
    if init is None and strength != 1.0:
        raise ValueError(f"strength={strength} needs init latents (SDEdit); pass init or use strength=1")
    model.eval()
    device = next(model.parameters()).device
    text, text_mask = text.to(device), text_mask.to(device).bool()
    b = text.shape[0]
    # noise drawn on CPU from the generator, so a seed gives the same sample on any device
    eps = torch.randn((b, *shape), generator=generator).to(device)
    step_args = (cfg_scale, max_tokens, bf16)
    if objective == "rflow":
        a = D.resolve_shift(shift, shape, model.cfg.patch if shift == "auto" else (1, 1, 1))
        times = D.rf_times(steps, start=strength, shift=a)
        x = eps if init is None else D.rf_noise(init.to(device), eps, torch.tensor(strength, device=device))
        for t, t_next in itertools.pairwise(times):
            v = predict(model, x, t * D.DDPM_STEPS, text, text_mask, *step_args)
            x = D.rf_step(x, v, t, t_next)
        return x
    if objective == "ddpm":
        ab = D.ddpm_alphas_cumprod().tolist()
        start = D.ddpm_strength_step(strength)  # the step with rectified-flow time s's SNR
        ts = D.ddim_timesteps(steps, start=start)
        x = (
            eps
            if init is None
            else D.ddpm_noise(init.to(device), eps, torch.tensor(ab[start], device=device))
        )
        for t, t_next in itertools.pairwise(ts):
            e = predict(model, x, float(t), text, text_mask, *step_args)
            x = D.ddim_step(x, e, ab[t], 1.0 if t_next < 0 else ab[t_next])
        return x
    raise ValueError(f"objective must be 'rflow' or 'ddpm', got {objective!r}")
