"""Text embedding -> latents with classifier-free guidance, any latent size; SDEdit from init latents.

SDEdit: the init latents are noised to strength s (rectified flow time s, or DDPM step s*1000)
and denoised from there under the new prompt; s=1 is plain text-to-video, small s keeps more
of the init. Reference: Meng et al. 2022, "SDEdit".
"""

from __future__ import annotations

import itertools

import torch

from latents.dit import diffusion as D
from latents.dit.model import DiT


@torch.no_grad()
def predict(model: DiT, x: torch.Tensor, t: float, text: torch.Tensor, text_mask: torch.Tensor,
            cfg_scale: float) -> torch.Tensor:
    """Guided model output for x (B, C, T, H, W) at model time t in [0, 1000)."""
    b = x.shape[0]
    guided = cfg_scale != 1.0
    xs = list(torch.cat([x, x]) if guided else x)
    masks = torch.cat([text_mask, torch.zeros_like(text_mask)]) if guided else text_mask
    texts = torch.cat([text, text]) if guided else text
    tt = torch.full((len(xs),), float(t), device=x.device)
    out = torch.stack(model.forward_latents(xs, tt, texts, masks))  # list of (C, T, H, W) -> (2B|B, C, T, H, W)
    return D.cfg_combine(out[:b], out[b:], cfg_scale) if guided else out


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
) -> torch.Tensor:
    """Latents (B, C, T, H, W) for text (B, L, D) / mask (B, L).

    `init` (B, C, T, H, W) with `strength` in (0, 1] runs SDEdit; without it strength must be 1.
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
    if objective == "rflow":
        times = D.rf_times(steps, start=strength)
        x = eps if init is None else D.rf_noise(init.to(device), eps, torch.tensor(strength, device=device))
        for t, t_next in itertools.pairwise(times):
            v = predict(model, x, t * D.DDPM_STEPS, text, text_mask, cfg_scale)
            x = D.rf_step(x, v, t, t_next)
        return x
    if objective == "ddpm":
        ab = D.ddpm_alphas_cumprod().tolist()
        start = min(D.DDPM_STEPS - 1, round(strength * D.DDPM_STEPS))
        ts = D.ddim_timesteps(steps, start=start)
        x = eps if init is None else D.ddpm_noise(init.to(device), eps, torch.tensor(ab[start], device=device))
        for t, t_next in itertools.pairwise(ts):
            e = predict(model, x, float(t), text, text_mask, cfg_scale)
            x = D.ddim_step(x, e, ab[t], 1.0 if t_next < 0 else ab[t_next])
        return x
    raise ValueError(f"objective must be 'rflow' or 'ddpm', got {objective!r}")
