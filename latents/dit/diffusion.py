"""Training objectives and sampler steps as pure tensor functions.

Rectified flow (default): x_t = (1 - t) x0 + t eps, the model predicts v = eps - x0, t in [0, 1]
drawn logit-normal; sampling integrates dx/dt = v from t=1 (noise) to t=0 with Euler steps.
DDPM: linear beta schedule over 1000 steps, the model predicts eps; sampling uses deterministic
DDIM steps. Both feed the model a float timestep in [0, 1000).
Classifier-free guidance: captions are dropped in training (text mask all False = no text), and
sampling mixes conditional and unconditional predictions.

References: Liu et al. 2022 (rectified flow), Esser et al. 2024 (SD3: logit-normal t);
Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM); Ho & Salimans 2022 (classifier-free guidance).
"""

from __future__ import annotations

from typing import Literal

import torch

Objective = Literal["rflow", "ddpm"]
DDPM_STEPS = 1000


# ---- rectified flow -------------------------------------------------------------------------

def rf_sample_t(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal(0, 1) times in (0, 1): more weight on the middle of the path (SD3)."""
    return torch.sigmoid(torch.randn(n, generator=generator))


def rf_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps; t broadcastable to x0."""
    return (1 - t) * x0 + t * eps


def rf_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    return eps - x0


def rf_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of dx/dt = v from t to t_next (< t)."""
    return x + (t_next - t) * v


def rf_times(steps: int, start: float = 1.0) -> list[float]:
    """Time grid start -> 0 (start < 1 for SDEdit)."""
    return [start * (1 - i / steps) for i in range(steps + 1)]


# ---- DDPM (eps prediction) -------------------------------------------------------------------

def ddpm_alphas_cumprod(n: int = DDPM_STEPS, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(beta_start, beta_end, n, dtype=torch.float64), 0).float()


def ddpm_noise(x0: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps with ab = alphas_cumprod[t], broadcastable."""
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def ddim_step(x: torch.Tensor, eps: torch.Tensor, ab: float, ab_next: float) -> torch.Tensor:
    """Deterministic DDIM update (eta=0) from alpha-bar `ab` to `ab_next`."""
    x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
    return ab_next**0.5 * x0 + (1 - ab_next) ** 0.5 * eps


def ddim_timesteps(steps: int, start: int = DDPM_STEPS - 1) -> list[int]:
    """Integer timesteps from `start` down to 0, then -1 (= clean, alpha-bar 1)."""
    ts = torch.linspace(start, 0, steps).round().long().tolist()
    return [*dict.fromkeys(ts), -1]


# ---- shared ----------------------------------------------------------------------------------

def training_inputs(
    objective: Objective, x0: torch.Tensor, eps: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noised input, regression target and model timestep in [0, 1000) for per-sample draws.

    x0, eps: (S, ...) ; u: (S,) uniform-ish draw in (0, 1) (the rectified-flow time, or the
    DDPM timestep fraction).
    """
    shape = (-1,) + (1,) * (x0.dim() - 1)
    if objective == "rflow":
        t = u.view(shape)
        return rf_noise(x0, eps, t), rf_target(x0, eps), u * DDPM_STEPS
    if objective == "ddpm":
        step = (u * DDPM_STEPS).long().clamp(0, DDPM_STEPS - 1)
        ab = ddpm_alphas_cumprod().to(x0.device)[step].view(shape)
        return ddpm_noise(x0, eps, ab), eps, step.float()
    raise ValueError(f"objective must be 'rflow' or 'ddpm', got {objective!r}")


def draw_u(objective: Objective, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample time draw: logit-normal for rectified flow, uniform for DDPM."""
    if objective == "rflow":
        return rf_sample_t(n, generator)
    return torch.rand(n, generator=generator)


def drop_captions(text_mask: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop whole captions with probability p (mask (S, L) -> all False for dropped rows)."""
    keep = torch.rand(text_mask.shape[0], generator=generator) >= p
    return text_mask & keep.to(text_mask.device)[:, None]


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)
