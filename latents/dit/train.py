"""The training loop: packed batches, AdamW + warmup, grad clipping, EMA, bf16 autocast on GPU,
safetensors checkpoints, exact resume, CSV loss log and a loss-curve PNG.

Determinism is by construction, so resume and multi-worker runs follow the single-run curve:
the data order is a pure function of (seed, epoch), and every sample's noise, time and caption
dropout come from a generator seeded by (seed, step, position in the global batch). Worker k of
W takes global batch positions k, k+W, ...; the loss is the mean of per-sample losses, so DDP's
gradient average equals the single-process gradient of the same global batch.
Runs with torch.distributed already initialised (Ray Train sets it up) wrap the model in DDP.

Reference: facebookresearch/DiT train.py (EMA, AdamW, no weight decay), Esser et al. 2024 (SD3).
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from latents.dit import diffusion as D
from latents.dit.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, write_json
from latents.dit.model import PRESETS, DiT, DiTConfig, count_params
from latents.dit.packing import num_tokens, pack, patchify


@dataclass(frozen=True)
class TrainConfig:
    model: str = "tiny"  # key of model.PRESETS; channels / text width come from the data
    patch: tuple[int, int, int] = (1, 2, 2)
    objective: D.Objective = "rflow"
    steps: int = 1000
    batch_size: int = 8  # global samples per step (split across workers)
    max_tokens: int | None = 1024  # packed row length (>= the longest sample); None pads each sample to the longest
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    bf16: bool = True  # autocast to bf16 on CUDA (ignored on CPU)
    size_cond: bool = False  # condition on each sample's latent grid (duration, resolution); DiTConfig.size_cond
    # timestep shift of the rectified-flow draws, a number or "auto" (per sample from its grid:
    # diffusion.resolve_shift); recorded in config.json, so jobs.sample / SDEdit use the same
    shift: D.Shift = 1.0
    ablate: tuple[str, ...] = ()  # test-only: DiTConfig.ablate (tests/test_dit_learning.py)

    def model_config(self, in_channels: int, text_dim: int) -> DiTConfig:
        if self.model not in PRESETS:
            raise ValueError(f"model must be one of {sorted(PRESETS)}: got {self.model!r}")
        base = PRESETS[self.model]
        return DiTConfig.from_dict({**base.to_dict(), "patch": tuple(self.patch), "size_cond": self.size_cond,
                                    "ablate": tuple(self.ablate)}).sized(in_channels, text_dim)


SMOKE = TrainConfig(model="tiny", steps=20, batch_size=4, max_tokens=256, warmup=5, log_every=5, ckpt_every=10)
# max_tokens: a 2 s clip of the default encode preset is 12,720 tokens, an 81-frame one 33,390;
# jobs.train raises an unset budget to the longest sample of the shards' manifest at start-up.
DEFAULT = TrainConfig(model="B", steps=100_000, batch_size=64, max_tokens=16_384, lr=1e-4, warmup=1000,
                      ckpt_every=5000, ema_decay=0.9999, size_cond=True, shift="auto")


def longest_sample(shapes: Sequence[Sequence[int]], patch: tuple[int, int, int]) -> tuple[int, tuple[int, ...]]:
    """(token count, latent shape [C, T, H, W]) of the sample with the most tokens."""
    if not shapes:
        raise ValueError("no latent shapes to size the token budget from: the dataset is empty; check --shards")
    best = max((num_tokens(tuple(s), patch), tuple(int(x) for x in s)) for s in shapes)
    return best


def check_budget(cfg: TrainConfig, shapes: Sequence[Sequence[int]]) -> None:
    """A packed row must hold the longest sample; say both numbers and the fix before any step runs."""
    if cfg.max_tokens is None:
        return
    n, shape = longest_sample(shapes, cfg.patch)
    if cfg.max_tokens < n:
        raise ValueError(f"max_tokens must be at least the longest training sample's token count: max_tokens="
                         f"{cfg.max_tokens}, longest sample {n} tokens (latent {list(shape)}, patch "
                         f"{list(cfg.patch)}); pass --max-tokens {n} or more, or leave it unset to derive it")


@functools.lru_cache(maxsize=2)  # the current epoch and the next (a batch may straddle them)
def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The dataset order of one epoch: computed once per epoch, not once per sample."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_positions(seed: int, step: int, batch_size: int, n: int) -> list[int]:
    """Dataset indices of global batch `step`: consecutive slices of per-epoch permutations."""
    out = []
    for p in range(step * batch_size, (step + 1) * batch_size):
        epoch, k = divmod(p, n)
        out.append(int(epoch_permutation(seed, epoch, n)[k]))
    return out


def sample_generator(seed: int, step: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 65_537 + position)


def lr_at(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))


def ema_decay_at(cfg: TrainConfig, step: int) -> float:
    """EMA decay with warm-up: min(ema_decay, (1 + step) / (10 + step)).

    important: a constant 0.9999 keeps 1 - 0.9999^n of the EMA on the initial (adaLN-Zero:
    zero-output) model, e^-0.2 = 82% after 2k steps, and sampling uses the EMA. With the warm-up
    the init's share after n steps is prod (1+s)/(10+s) = 9! n! / (n+9)!: 1e-5 at n = 10, 7e-25 at
    n = 2000 (the cap 0.9999 is reached at step ~90k). Reference: diffusers' `EMAModel.get_decay`,
    tensorflow's `ExponentialMovingAverage(num_updates=...)`.
    """
    return min(cfg.ema_decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach().float(), alpha=1 - decay)


def batch_loss(model: nn.Module, samples: list[dict], positions: list[int], cfg: TrainConfig,
               step: int, device: torch.device) -> tuple[torch.Tensor, dict]:
    """Mean over samples of each sample's mean squared error over its tokens."""
    xs, targets, ts, texts, masks = [], [], [], [], []
    for s, pos in zip(samples, positions):
        g = sample_generator(cfg.seed, step, pos)
        x0 = s["latent"].float()
        eps = torch.randn(x0.shape, generator=g)
        u = D.draw_u(cfg.objective, 1, g, D.resolve_shift(cfg.shift, x0.shape, cfg.patch))
        x_t, target, t = D.training_inputs(cfg.objective, x0[None], eps[None], u)
        xs.append(x_t[0])
        targets.append(target[0])
        ts.append(t)
        texts.append(s["text_embedding"].float())
        masks.append(D.drop_captions(s["text_mask"].bool()[None], cfg.caption_dropout, g)[0])
    packed = pack(xs, texts, masks, cfg.patch, cfg.max_tokens).to(device)
    target = torch.zeros_like(packed.tokens)
    for tgt, (r, at, k) in zip(targets, packed.places):
        target[r, at : at + k] = patchify(tgt.to(device), cfg.patch)[0]
    use_bf16 = cfg.bf16 and device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
        pred = model(packed, torch.cat(ts).to(device))
    err = (pred.float() - target).pow(2).mean(-1)  # (R, N, P) -> (R, N)
    real = packed.seg >= 0
    per_sample = torch.zeros(len(samples), device=device).index_add_(0, packed.seg[real], err[real])
    lengths = torch.tensor([k for _, _, k in packed.places], device=device, dtype=torch.float)
    loss = (per_sample / lengths).mean()
    return loss, {"tokens": int(real.sum()), "efficiency": packed.efficiency}


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(
    cfg: TrainConfig,
    data: Sequence[dict],
    out: str | Path,
    *,
    device: str | torch.device | None = None,
    stop_after: int | None = None,
    extra_config: dict | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> dict:
    """Train on `data` (samples in the dataset contract) into run dir `out`; resumes from its latest
    checkpoint. `stop_after` ends early at that step with a checkpoint (an interruption, for tests).
    `on_checkpoint(path)` runs on rank 0 after each checkpoint is saved (e.g. to upload it).
    """
    rank, world = _world()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size must be a multiple of the worker count: batch_size={cfg.batch_size}, "
                         f"workers={world}; change --batch-size or --workers")
    if not len(data):
        raise ValueError("no training samples: the dataset is empty; check --shards")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = data[0]
    mcfg = cfg.model_config(first["latent"].shape[0], first["text_embedding"].shape[-1])
    check_budget(cfg, sorted({tuple(d["latent"].shape) for d in data}))
    config = {"model": mcfg.to_dict(), "train": asdict(cfg), "num_samples": len(data), **(extra_config or {})}
    _check_config(out, config, rank)

    torch.manual_seed(cfg.seed)
    model = DiT(mcfg).to(device)
    ema = copy.deepcopy(model).float().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, ema, opt)
        step = state["step"]
        if state["samples_seen"] != step * cfg.batch_size:
            raise ValueError(f"checkpoint {ckpt} data position {state['samples_seen']} != step*batch; corrupt run")
    if world > 1:
        _check_same_step(step, world, device)
    start = step
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log = _LossLog(out / "loss.csv", step) if rank == 0 else None
    if rank == 0:
        print(f"[train] {count_params(model) / 1e6:.2f} M params, {len(data)} samples, start step {step}, "
              f"workers {world}, device {device}", flush=True)

    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    t0, last = time.perf_counter(), None
    while step < end:
        positions = batch_positions(cfg.seed, step, cfg.batch_size, len(data))[rank::world]
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        loss, info = batch_loss(net, [data[i] for i in positions], _global_positions(rank, world, len(positions)),
                                cfg, step, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        update_ema(ema, model, ema_decay_at(cfg, step))
        step += 1
        stats = torch.stack([loss.detach().float(), torch.tensor(float(info["tokens"]), device=device)])
        if world > 1:  # logged loss: mean over workers; tokens: total over workers
            dist.all_reduce(stats)
            stats[0] /= world
        last, info["tokens"] = float(stats[0]), int(stats[1])
        if log is not None and (step % cfg.log_every == 0 or step == end):
            log.write(step, last, lr_at(cfg, step - 1), float(gnorm), info, time.perf_counter() - t0)
        if step % cfg.ckpt_every == 0 or step == end:
            if rank == 0:
                saved = save_checkpoint(out, step, model, ema, opt,
                                        {"samples_seen": step * cfg.batch_size, "resumed_from": start})
                if on_checkpoint is not None:
                    on_checkpoint(saved)
            if world > 1:
                dist.barrier()
    if log is not None:
        log.plot(out / "loss.png")
    return {"step": step, "loss": last, "run": str(out), "seconds": time.perf_counter() - t0}


def _check_same_step(step: int, world: int, device: torch.device) -> None:
    """Every worker must resume from the same step, or DDP's collectives hang: each worker found
    its checkpoint on its own, so compare them all (every rank raises the same clear error)."""
    mine = torch.tensor([step], dtype=torch.long, device=device)
    steps = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(steps, mine)
    seen = [int(s.item()) for s in steps]
    if len(set(seen)) > 1:
        raise RuntimeError(f"workers must resume from the same checkpoint step, got steps {seen} (by rank): the "
                           "run folder must be storage every worker sees; pass --out on a shared filesystem or "
                           "an object store URI (s3://bucket/runs/NAME)")


def _global_positions(rank: int, world: int, n: int) -> list[int]:
    """Positions in the global batch of this worker's samples (worker k takes k, k+W, ...)."""
    return [rank + world * j for j in range(n)]


# Settings a resumed run may change without changing what it computes (the LR schedule does
# not depend on the total step count, so extending `steps` continues the same run).
RESUMABLE_CHANGES = ("steps", "log_every", "ckpt_every")


def _check_config(out: Path, config: dict, rank: int) -> None:
    path = out / "config.json"
    new = json.loads(json.dumps(config))  # tuples -> lists, as stored
    if path.is_file():
        old = json.loads(path.read_text())
        strip = lambda d: {k: v for k, v in d.items() if k not in RESUMABLE_CHANGES}  # noqa: E731
        if old["model"] != new["model"] or strip(old["train"]) != strip(new["train"]):
            diff = sorted(k for k in new["train"] if old["train"].get(k) != new["train"][k])
            raise ValueError(f"run dir {out} holds a run with a different config (differs in: "
                             f"{', '.join(diff) or 'model'}); resume needs the same config, or pass a new --out")
    if rank == 0:
        write_json(path, new)


class _LossLog:
    """loss.csv, truncated to the resume step so a resumed run's log reads as one run."""

    FIELDS = ("step", "loss", "lr", "grad_norm", "tokens", "token_efficiency", "elapsed_s")

    def __init__(self, path: Path, start_step: int):
        self.path = path
        rows = []
        if path.is_file():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= start_step]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)

    def write(self, step: int, loss: float, lr: float, gnorm: float, info: dict, elapsed: float) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([step, f"{loss:.6g}", f"{lr:.3g}", f"{gnorm:.4g}", info["tokens"],
                                    f"{info['efficiency']:.4f}", f"{elapsed:.2f}"])

    def plot(self, png: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with self.path.open() as f:
            rows = list(csv.DictReader(f))
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
        ax.set(xlabel="step", ylabel="loss", yscale="log", title="DiT training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        plt.close(fig)
