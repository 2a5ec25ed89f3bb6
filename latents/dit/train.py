"""The training loop: token-budget steps of packed micro-batches, gradient accumulation (DDP
`no_sync` on all but the last), optional per-block activation checkpointing, AdamW (no weight
decay on norms, biases, embeddings) with warmup and cosine/linear decay, grad clipping, EMA,
bf16 autocast on GPU, validation loss at fixed draws, EMA previews, safetensors checkpoints
(the last K kept), exact resume on CPU, loss.csv / val.csv / loss.png / TensorBoard.

Data: a source of units (row groups) listed from metadata (`latents.samples`); the order is a
pure function of (seed, epoch, global position) and a step takes consecutive positions
(`latents.dit.loader`: `batch_size` samples, or samples up to `step_tokens` tokens), read by a
background thread. Each sample's time, caption dropout and noise come from generators seeded by
(seed, global position); the noise is drawn on the training device.

Loss weighting (exact whatever the ranks and micro-batches): the step loss is the mean over
the step's S samples of each sample's mean squared error over its own tokens,
L = (1/S) sum_s l_s. A micro-batch on one of W ranks backpropagates sum_{s in it} l_s * W / S;
gradients add up over micro-batches, and DDP's mean over ranks divides by W, so the gradient is
that of L: one step over N micro-batches equals one step over the same samples in one batch,
up to float summation order. Runs with torch.distributed initialised (Ray Train sets it up) wrap
the model in DDP.

Exact resume holds on CPU. On CUDA, atomics in index_add / scatter and SDPA's backward are not
deterministic, so a resumed GPU run follows the same data and draws but not bit for bit.

Reference: facebookresearch/DiT train.py (EMA, AdamW), Esser et al. 2024 (SD3); Dehghani et
al. 2023 (NaViT: token budgets); Chen et al. 2016 (activation checkpointing).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

from latents.dit import diffusion as D
from latents.dit.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
    write_json,
)
from latents.dit.loader import Source, StepLoader, micro_batches
from latents.dit.model import PRESETS, DiT, DiTConfig, count_params
from latents.dit.packing import num_tokens, pack, patchify
from latents.dit.runlog import T_BUCKETS, RunLog
from latents.samples import ListSource, StreamOrder

Schedule = Literal["constant", "cosine", "linear"]
VAL_SEED = 7_919  # validation draws: fixed per held-out sample, apart from every training draw


@dataclass(frozen=True)
class TrainConfig:
    model: str = "tiny"  # key of model.PRESETS; channels / text width come from the data
    patch: tuple[int, int, int] = (1, 2, 2)
    objective: D.Objective = "rflow"
    steps: int = 1000
    batch_size: int = 8  # global samples per step, when step_tokens is None
    step_tokens: int | None = None  # global token budget per step (all ranks); None: batch_size samples
    max_tokens: int | None = (
        1024  # packed row length (>= the longest sample); None pads each sample to the longest
    )
    micro_tokens: int | None = (
        None  # token slots per rank per forward (micro-batch); None: the rank's share at once
    )
    checkpointing: bool = False  # recompute each block in backward: activations ~ 1 block + block inputs
    lr: float = 3e-4
    lr_schedule: Schedule = (
        "constant"  # after warmup: constant, or cosine / linear down to lr * min_lr_ratio at `steps`
    )
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0  # on matrices only: never on norms, biases, embeddings
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    seed: int = 0
    window: int = 8  # units (row groups) whose rows are shuffled together; the loader holds ~2 windows
    prefetch: int = 2  # steps built ahead by the loader thread
    val_rows: int = 0  # held-out rows (the last units in stored order); 0: no validation split
    val_every: int = 0  # steps between validation losses (0: never)
    preview_every: int = 0  # steps between EMA sample previews (0: never; needs a preview callback)
    preview_count: int = 2
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 0  # checkpoints kept (the newest); 0 keeps all
    tensorboard: bool = True
    bf16: bool = True  # autocast to bf16 on CUDA (ignored on CPU)
    size_cond: bool = (
        False  # condition on each sample's latent grid (duration, resolution); DiTConfig.size_cond
    )
    # timestep shift of the rectified-flow draws, a number or "auto" (per sample from its grid:
    # diffusion.resolve_shift); recorded in config.json, so jobs.sample / SDEdit use the same
    shift: D.Shift = 1.0
    ablate: tuple[str, ...] = ()  # test-only: DiTConfig.ablate (tests/test_dit_learning.py)

    def model_config(self, in_channels: int, text_dim: int) -> DiTConfig:
        if self.model not in PRESETS:
            raise ValueError(f"model must be one of {sorted(PRESETS)}: got {self.model!r}")
        base = PRESETS[self.model]
        return DiTConfig.from_dict(
            {
                **base.to_dict(),
                "patch": tuple(self.patch),
                "size_cond": self.size_cond,
                "ablate": tuple(self.ablate),
            }
        ).sized(in_channels, text_dim)


SMOKE = TrainConfig(
    model="tiny", steps=20, batch_size=4, max_tokens=256, warmup=5, log_every=5, ckpt_every=10
)
# The default preset's step is a token budget. A 2 s clip of the default encode preset is 12,720
# tokens, an 81-frame 480x848 one 33,390 (the longest: rows of 65,536 hold it). One step is
# 2^19 tokens (~40 two-second clips); a rank runs micro-batches of one 65,536-token row with
# per-block checkpointing: projected peak on one GPU at DiT-B in `python -m jobs.bench train`
# (~21 GB, under 80 GB), and 8 micro-batches per step on 1 GPU, 1 on 8 GPUs.
DEFAULT = TrainConfig(
    model="B",
    steps=100_000,
    batch_size=64,
    step_tokens=524_288,
    max_tokens=65_536,
    micro_tokens=65_536,
    checkpointing=True,
    lr=1e-4,
    lr_schedule="cosine",
    weight_decay=0.01,
    warmup=1000,
    window=16,
    val_rows=256,
    val_every=1000,
    preview_every=5000,
    ckpt_every=5000,
    keep_last=3,
    ema_decay=0.9999,
    size_cond=True,
    shift="auto",
)


def longest_sample(
    shapes: Sequence[Sequence[int]], patch: tuple[int, int, int]
) -> tuple[int, tuple[int, ...]]:
    """(token count, latent shape [C, T, H, W]) of the sample with the most tokens."""
    if not shapes:
        raise ValueError(
            "no latent shapes to size the token budget from: the dataset is empty; check --input"
        )
    best = max((num_tokens(tuple(s), patch), tuple(int(x) for x in s)) for s in shapes)
    return best


def check_budget(cfg: TrainConfig, shapes: Sequence[Sequence[int]], world: int = 1) -> None:
    """Rows, micro-batches and steps must hold the longest sample (every rank at least one per
    step); say the numbers and the fix before any step runs. `shapes` come from metadata."""
    n, shape = longest_sample(shapes, cfg.patch)
    what = f"longest sample {n} tokens (latent {list(shape)}, patch {list(cfg.patch)})"
    if cfg.max_tokens is not None and cfg.max_tokens < n:
        raise ValueError(
            f"max_tokens must be at least the longest training sample's token count: max_tokens="
            f"{cfg.max_tokens}, {what}; pass --max-tokens {n} or more, or leave it unset to derive it"
        )
    row = cfg.max_tokens if cfg.max_tokens is not None else n
    if cfg.micro_tokens is not None and cfg.micro_tokens < row:
        raise ValueError(
            f"micro_tokens must hold one packed row: micro_tokens={cfg.micro_tokens}, row length "
            f"{row} ({what}); pass --micro-tokens {row} or more"
        )
    if cfg.step_tokens is not None and cfg.step_tokens < world * n:
        raise ValueError(
            f"step_tokens must give every worker at least one sample: step_tokens={cfg.step_tokens}, "
            f"{world} worker(s) x {what}; pass --step-tokens {world * n} or more"
        )


def sample_generator(
    seed: int, position: int, stream: int = 0, device: torch.device | str = "cpu"
) -> torch.Generator:
    """The generator of one sample's draws: stream 0 (time, caption dropout) on the CPU, stream 1
    (noise) on the training device; seeded by (seed, global position), nothing else."""
    return torch.Generator(device=device).manual_seed(((seed * 1_000_003 + position) * 2 + stream) % 2**63)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then constant or cosine / linear decay to lr * min_lr_ratio at `steps`."""
    if cfg.lr_schedule == "constant" or step < cfg.warmup:
        return cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    f = 0.5 * (1 + math.cos(math.pi * frac)) if cfg.lr_schedule == "cosine" else 1 - frac
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * f)


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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only; none on norms, biases (1-D) and the
    embedders (patch, timestep, size), as in GPT-2 / nanoGPT's configure_optimizers."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (rest if p.ndim < 2 or "embed" in name.split(".")[0] else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def micro_loss(
    model: nn.Module,
    samples: list[dict],
    cfg: TrainConfig,
    device: torch.device,
    *,
    scale: float,
    seed: int | None = None,
    dropout: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """(scale * sum of per-sample losses, per-sample losses (S,), draws u (S,), info) of one
    micro-batch. A sample's loss is its mean squared error over its own tokens; its draws come
    from (seed, its "position"). The trainer passes scale = workers / samples in the step."""
    seed = cfg.seed if seed is None else seed
    dropout = cfg.caption_dropout if dropout is None else dropout
    xs, targets, ts, us, texts, masks = [], [], [], [], [], []
    for s in samples:
        g = sample_generator(seed, s["position"])
        x0 = s["latent"].to(device).float()
        eps = torch.randn(x0.shape, generator=sample_generator(seed, s["position"], 1, device), device=device)
        u = D.draw_u(cfg.objective, 1, g, D.resolve_shift(cfg.shift, x0.shape, cfg.patch))
        x_t, target, t = D.training_inputs(cfg.objective, x0[None], eps[None], u.to(device))
        xs.append(x_t[0])
        targets.append(target[0])
        ts.append(t)
        us.append(u)
        texts.append(s["text_embedding"].to(device).float())
        masks.append(D.drop_captions(s["text_mask"].bool()[None], dropout, g)[0].to(device))
    packed = pack(xs, texts, masks, cfg.patch, cfg.max_tokens)
    target = torch.zeros_like(packed.tokens)
    for tgt, (r, at, k) in zip(targets, packed.places):
        target[r, at : at + k] = patchify(tgt, cfg.patch)[0]
    use_bf16 = cfg.bf16 and device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
        pred = model(packed, torch.cat(ts).to(device))
    err = (pred.float() - target).pow(2).mean(-1)  # (R, N, P) -> (R, N)
    real = packed.seg >= 0
    per_sample = torch.zeros(len(samples), device=device).index_add_(0, packed.seg[real], err[real])
    lengths = torch.tensor([k for _, _, k in packed.places], device=device, dtype=torch.float)
    per_sample = per_sample / lengths
    info = {"tokens": int(real.sum()), "slots": packed.seg.numel()}
    return per_sample.sum() * scale, per_sample.detach(), torch.cat(us), info


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def split_units(units: Sequence[tuple[int, tuple[int, ...]]], val_rows: int) -> tuple[list[int], list[int]]:
    """(training unit ids, held-out unit ids): the last units in stored order until they hold
    `val_rows` rows, never the first one: a run smaller than its validation split still trains
    (on one unit, with the rest held out). Metadata only; the same split on every rank and every resume."""
    val: list[int] = []
    rows = 0
    for u in range(len(units) - 1, 0, -1):
        if rows >= val_rows:
            break
        val.append(u)
        rows += units[u][0]
    return [u for u in range(len(units)) if u not in set(val)], sorted(val)


Preview = Callable[[nn.Module, int, list[dict]], None]


def train(
    cfg: TrainConfig,
    data: Sequence[dict] | Source,
    out: str | Path,
    *,
    device: str | torch.device | None = None,
    stop_after: int | None = None,
    extra_config: dict | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
    preview: Preview | None = None,
) -> dict:
    """Train on `data` (samples in the dataset contract, or a source of units such as
    `latents.samples.ShardSource`) into run dir `out`; resumes from its latest checkpoint, and
    continues a finished run when `cfg.steps` is larger. `stop_after` ends early at that step with
    a checkpoint (an interruption, for tests). `on_checkpoint(path)` runs on rank 0 after each
    checkpoint is saved (e.g. to upload it); `preview(ema_model, step, samples)` every
    `preview_every` steps on rank 0 (samples: the first held-out ones, text and latent shape).
    """
    rank, world = _world()
    if cfg.step_tokens is None and cfg.batch_size % world:
        raise ValueError(
            f"batch_size must be a multiple of the worker count: batch_size={cfg.batch_size}, "
            f"workers={world}; change --batch-size or --workers"
        )
    source: Source = data if hasattr(data, "load_unit") else ListSource(data)  # type: ignore[arg-type]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mcfg = cfg.model_config(source.in_channels, source.text_dim)
    check_budget(cfg, sorted({shape for _, shape in source.units}), world)
    train_ids, val_ids = split_units(source.units, cfg.val_rows)
    order = StreamOrder(source.units, train_ids, cfg.seed, cfg.window)
    config = {"model": mcfg.to_dict(), "train": asdict(cfg), "num_samples": order.n, **(extra_config or {})}
    _check_config(out, config, rank)

    torch.manual_seed(cfg.seed)
    model = DiT(mcfg).to(device)
    ema = copy.deepcopy(model).float().requires_grad_(False)
    model.checkpointing = cfg.checkpointing
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    step, position = 0, 0
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, ema, opt)
        step, position = state["step"], state["samples_seen"]
        if cfg.step_tokens is None and position != step * cfg.batch_size:
            raise ValueError(f"checkpoint {ckpt} data position {position} != step*batch; corrupt run")
    if world > 1:
        _check_same_step(step, world, device)
    start = step
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    log = RunLog(out, step, cfg.tensorboard) if rank == 0 else None
    if rank == 0:
        budget = f"{cfg.step_tokens} tokens" if cfg.step_tokens else f"{cfg.batch_size} samples"
        print(
            f"[train] {count_params(model) / 1e6:.2f} M params, {order.n} samples "
            f"({len(val_ids)} held-out row groups), step {budget}, start step {step}, "
            f"workers {world}, device {device}",
            flush=True,
        )

    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    loader = StepLoader(
        source,
        order,
        cfg.patch,
        batch_size=cfg.batch_size,
        step_tokens=cfg.step_tokens,
        max_tokens=cfg.max_tokens,
        micro_tokens=cfg.micro_tokens,
        rank=rank,
        world=world,
        start_step=step,
        start_pos=position,
        end_step=end,
        prefetch=cfg.prefetch,
    )
    val_samples: list[dict] | None = None
    t0 = time.perf_counter()
    t_log, tokens_since, last = t0, 0, None
    t_shown, first_step = t0, step
    for st in loader:
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        stats = torch.zeros(
            3 + 2 * T_BUCKETS, dtype=torch.float64, device=device
        )  # sum l, tokens, slots, buckets
        for j, mb in enumerate(st.micro):
            # important: DDP all-reduces on the last micro-batch's backward only
            sync = world == 1 or j == len(st.micro) - 1
            with contextlib.nullcontext() if sync else net.no_sync():
                loss, per, us, info = micro_loss(net, mb, cfg, device, scale=world / st.total)
                loss.backward()
            bucket = (us * T_BUCKETS).long().clamp(0, T_BUCKETS - 1).to(device)
            stats[0] += per.sum().double()
            stats[1] += info["tokens"]
            stats[2] += info["slots"]
            stats[3 : 3 + T_BUCKETS].index_add_(0, bucket, per.double())
            stats[3 + T_BUCKETS :].index_add_(0, bucket, torch.ones_like(per, dtype=torch.float64))
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        update_ema(ema, model, ema_decay_at(cfg, step))
        step += 1
        if world > 1:  # logged loss and buckets: over all samples of the step; tokens: total over workers
            dist.all_reduce(stats)
        last = float(stats[0] / st.total)
        tokens_since += int(stats[1])
        if log is not None and (step % cfg.log_every == 0 or step == end):
            now = time.perf_counter()
            buckets = [
                float(stats[3 + k] / stats[3 + T_BUCKETS + k]) if stats[3 + T_BUCKETS + k] else None
                for k in range(T_BUCKETS)
            ]
            log.write(
                step,
                last,
                lr_at(cfg, step - 1),
                float(gnorm),
                int(stats[1]),
                float(stats[1] / stats[2]),
                tokens_since / max(now - t_log, 1e-9),
                now - t0,
                buckets,
            )
            t_log, tokens_since = now, 0
            if now - t_shown >= progress_every_s() or step == end:
                print(progress_line(step, first_step, end, last, now - t0), flush=True)
                t_shown = now
        do_val = bool(cfg.val_every) and step % cfg.val_every == 0
        do_preview = bool(cfg.preview_every) and preview is not None and step % cfg.preview_every == 0
        if rank == 0 and val_ids and (do_val or do_preview):
            if val_samples is None:  # read on first use: start-up reads no latent rows
                val_samples = _held_out(source, val_ids, cfg.val_rows)
            if do_val and log is not None:
                log.write_val(
                    step,
                    validation_loss(model, val_samples, cfg, device),
                    validation_loss(ema, val_samples, cfg, device),
                )
            if do_preview:
                preview(ema, step, val_samples[: cfg.preview_count])
        if step % cfg.ckpt_every == 0 or step == end:
            if rank == 0:
                saved = save_checkpoint(
                    out, step, model, ema, opt, {"samples_seen": st.end, "resumed_from": start}
                )
                prune_checkpoints(out, cfg.keep_last)
                if on_checkpoint is not None:
                    on_checkpoint(saved)
            if world > 1:
                dist.barrier()
    if log is not None:
        log.close()
        log.plot(out / "loss.png")
    return {"step": step, "loss": last, "run": str(out), "seconds": time.perf_counter() - t0}


def _held_out(source: Source, ids: list[int], rows: int) -> list[dict]:
    """The first `rows` held-out samples, each with its position in the held-out split."""
    out: list[dict] = []
    for u in ids:
        for s in source.load_unit(u):
            if len(out) < rows:
                out.append(
                    {
                        **s,
                        "latent": s["latent"].clone(),
                        "text_embedding": s["text_embedding"].clone(),
                        "text_mask": s["text_mask"].clone(),
                        "position": len(out),
                    }
                )
    return out


@torch.no_grad()
def validation_loss(model: nn.Module, samples: list[dict], cfg: TrainConfig, device: torch.device) -> float:
    """Mean per-sample loss over the held-out samples at fixed draws (time and noise seeded by
    the sample's place in the held-out split, no caption dropout): comparable across steps and
    runs. Micro-batched like training, so it fits where training fits."""
    was = model.training
    model.eval()
    total = 0.0
    lengths = [num_tokens(tuple(s["latent"].shape), cfg.patch) for s in samples]
    for mb in micro_batches(lengths, cfg.max_tokens, cfg.micro_tokens):
        _, per, _, _ = micro_loss(
            model, [samples[i] for i in mb], cfg, device, scale=1.0, seed=VAL_SEED + cfg.seed, dropout=0.0
        )
        total += float(per.sum())
    model.train(was)
    return total / max(1, len(samples))


def _check_same_step(step: int, world: int, device: torch.device) -> None:
    """Every worker must resume from the same step, or DDP's collectives hang: each worker found
    its checkpoint on its own, so compare them all (every rank raises the same clear error)."""
    mine = torch.tensor([step], dtype=torch.long, device=device)
    steps = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(steps, mine)
    seen = [int(s.item()) for s in steps]
    if len(set(seen)) > 1:
        raise RuntimeError(
            f"workers must resume from the same checkpoint step, got steps {seen} (by rank): the "
            "run folder must be storage every worker sees; pass --output on a shared filesystem or "
            "an object store URI (s3://bucket/runs/NAME)"
        )


def progress_every_s() -> float:
    """Seconds between the trainer's progress lines: TUBELET_PROGRESS_EVERY, as the curation jobs'
    progress (read here too: latents/dit imports nothing of jobs/ or curate/)."""
    try:
        return max(0.0, float(os.environ.get("TUBELET_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def progress_line(step: int, first: int, end: int, loss: float | None, elapsed: float) -> str:
    """`[train] step 120/1000  loss 0.4132  2.31 steps/s  ETA 6m21s`."""
    rate = (step - first) / max(elapsed, 1e-9)
    text = f"[train] step {step}/{end}"
    if loss is not None:
        text += f"  loss {loss:.4f}"
    text += f"  {rate:.2f} steps/s"
    if step < end and rate > 0:
        left = round((end - step) / rate)
        text += f"  ETA {left // 60}m{left % 60:02d}s"
    return text


# Settings a resumed run may change without changing what it computes (micro-batching and
# checkpointing change only float summation order). `steps` extends a run: with a decaying LR
# schedule the rest of the run follows the schedule of the new length.
RESUMABLE_CHANGES = (
    "steps",
    "log_every",
    "ckpt_every",
    "keep_last",
    "val_every",
    "preview_every",
    "preview_count",
    "prefetch",
    "tensorboard",
    "micro_tokens",
    "checkpointing",
)


def _check_config(out: Path, config: dict, rank: int) -> None:
    path = out / "config.json"
    new = json.loads(json.dumps(config))  # tuples -> lists, as stored
    if path.is_file():
        old = json.loads(path.read_text())
        strip = lambda d: {k: v for k, v in d.items() if k not in RESUMABLE_CHANGES}  # noqa: E731
        if old["model"] != new["model"] or strip(old["train"]) != strip(new["train"]):
            diff = sorted(k for k in new["train"] if old["train"].get(k) != new["train"][k])
            raise ValueError(
                f"run dir {out} holds a run with a different config (differs in: "
                f"{', '.join(diff) or 'model'}); resume needs the same config, or pass a new --output"
            )
    if rank == 0:
        write_json(path, new)
