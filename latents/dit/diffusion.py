"""Training objectives and sampler steps as pure tensor functions.

Rectified flow (default): x_t = (1 - t) x0 + t eps, the model predicts v = eps - x0, t in [0, 1]
drawn logit-normal; sampling integrates dx/dt = v from t=1 (noise) to t=0 with Euler steps.
DDPM: linear beta schedule over 1000 steps, the model predicts eps; sampling uses deterministic
DDIM steps. Both feed the model a float timestep in [0, 1000).
Classifier-free guidance: captions are dropped in training (text mask all False = no text), and
sampling mixes conditional and unconditional predictions.

Timestep shift (rectified flow): t -> a t / (1 + (a - 1) t), applied alike to the training draws
and to the sampling grid. a > 1 moves time towards noise: larger frames and longer clips keep
more signal at a given noise level (many correlated tokens), so they need more steps at high t.
`shift="auto"` follows Open-Sora 2's resolution- and duration-dependent rule (opensora/utils/
sampling.py `get_res_lin_function` + `time_shift`, itself after SD3 section 5.3.2 and FLUX):
a = (1 + 2 (n - 256) / 3840) * sqrt(f) with n tokens per frame and f token frames, i.e. a line
through (256 tokens, 1) and (4096 tokens, 3), times the square root of the frame count: 7.8
for a 480x848, 81-frame bucket (30 x 53 tokens per frame, 21 frames). DDPM keeps its beta
schedule: the shift applies to rectified flow only.

SDEdit strength (both objectives): strength s noises the init to the signal-to-noise ratio of
rectified-flow time s, SNR(s) = ((1 - s) / s)^2; under DDPM that is the step whose alpha-bar is
(1 - s)^2 / ((1 - s)^2 + s^2). So s = 0.6 keeps the same signal fraction of the noised init's
scale under both (0.55 of a unit-variance mix: RF 0.4 x0 + 0.6 eps, DDPM sqrt(0.31) x0 + ...).
s is a noise level, not a grid position: the shift does not change what a strength keeps.

References: Liu et al. 2022 (rectified flow), Esser et al. 2024 (SD3: logit-normal t, shift);
Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM); Ho & Salimans 2022 (classifier-free guidance);
Meng et al. 2022 (SDEdit); Zheng et al. 2025, Open-Sora 2.0 (resolution-dependent shift).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

Objective = Literal["rflow", "ddpm"]
Shift = float | Literal["auto"]
DDPM_STEPS = 1000


# ---- timestep shift --------------------------------------------------------------------------


def auto_shift(tokens_per_frame: int, frames: int) -> float:
    """Open-Sora 2's rule: a line through (256 tokens per frame, 1) and (4096, 3), times sqrt(frames)."""
    return (1.0 + 2.0 * (tokens_per_frame - 256) / 3840) * math.sqrt(frames)


def resolve_shift(shift: Shift, shape: Sequence[int], patch: Sequence[int]) -> float:
    """The shift a sample of latent shape [C, T, H, W] gets: a number as is, or `auto` from its grid."""
    if shift == "auto":
        _, t, h, w = shape
        return auto_shift((h // patch[1]) * (w // patch[2]), t // patch[0])
    value = float(shift)
    if not value > 0:
        raise ValueError(f"shift must be a positive number or 'auto': got {shift!r}; 1 means no shift")
    return value


def shift_time(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """t in [0, 1] -> shift t / (1 + (shift - 1) t): 0 and 1 stay, shift > 1 moves towards noise."""
    return shift * t / (1 + (shift - 1) * t)


def unshift_time(t: float, shift: float) -> float:
    """Inverse of `shift_time`."""
    return t / (shift - (shift - 1) * t)


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


def rf_times(steps: int, start: float = 1.0, shift: float = 1.0) -> list[float]:
    """Time grid start -> 0 (start < 1 for SDEdit): equal steps in unshifted time, then shifted.

    `start` is the noise level itself (the shifted time): the grid runs from unshift(start).
    """
    u0 = unshift_time(start, shift)
    return [float(shift_time(u0 * (1 - i / steps), shift)) for i in range(steps + 1)]


# ---- DDPM (eps prediction) -------------------------------------------------------------------


def ddpm_alphas_cumprod(
    n: int = DDPM_STEPS, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(beta_start, beta_end, n, dtype=torch.float64), 0).float()


def ddpm_noise(x0: torch.Tensor, eps: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps with ab = alphas_cumprod[t], broadcastable."""
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def ddim_step(x: torch.Tensor, eps: torch.Tensor, ab: float, ab_next: float) -> torch.Tensor:
    """Deterministic DDIM update (eta=0) from alpha-bar `ab` to `ab_next`."""
    x0 = (x - (1 - ab) ** 0.5 * eps) / ab**0.5
    return ab_next**0.5 * x0 + (1 - ab_next) ** 0.5 * eps


def strength_signal(strength: float) -> float:
    """Kept-signal coefficient of SDEdit strength s at unit total variance: sqrt(SNR / (1 + SNR)) with
    the rectified-flow SNR ((1 - s) / s)^2 (the same under every objective)."""
    return (1 - strength) / math.hypot(1 - strength, strength)


def ddpm_strength_step(strength: float) -> int:
    """The DDPM step whose SNR matches strength s: alpha-bar closest to (1 - s)^2 / ((1 - s)^2 + s^2)."""
    target = strength_signal(strength) ** 2
    ab = ddpm_alphas_cumprod()
    return int((ab - target).abs().argmin())


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


def draw_u(
    objective: Objective, n: int, generator: torch.Generator | None = None, shift: float = 1.0
) -> torch.Tensor:
    """Per-sample time draw: logit-normal for rectified flow (then shifted), uniform for DDPM."""
    if objective == "rflow":
        return shift_time(rf_sample_t(n, generator), shift)
    return torch.rand(n, generator=generator)


def drop_captions(
    text_mask: torch.Tensor, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Drop whole captions with probability p (mask (S, L) -> all False for dropped rows)."""
    keep = torch.rand(text_mask.shape[0], generator=generator) >= p
    return text_mask & keep.to(text_mask.device)[:, None]


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)
