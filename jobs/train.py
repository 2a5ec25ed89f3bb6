"""Train the bundled DiT on latent shards: one process, or N DDP workers with Ray Train.

    python -m jobs.train --input OUT/latents --output RUN [--workers N] [--preset smoke|default]

--workers 1 trains in this process (no Ray). --workers N > 1 runs Ray Train's TorchTrainer
(DDP; gloo on CPU, NCCL on GPU) on a local Ray instance, or on the cluster when RAY_ADDRESS is
set (as under `ray job submit`). Rerunning the same command resumes from RUN's last checkpoint.
Before anything starts, the packed-row token budget is checked against the longest sample
in the shards' manifest (`resolve_budget`); start-up reads the manifest and shard footers, no
latent row. A step is a token budget (`--step-tokens`, the default preset) or a sample count
(`--batch-size`); each worker accumulates gradients over micro-batches of `--micro-tokens`.
With `--val-rows` the last row groups are held out for a validation loss; with
`--preview-every` the EMA model's samples for held-out captions are decoded through the
manifest's VAE into RUN/previews/step-N/. TensorBoard event files go to RUN/tb/.

--input and --output may be object store URIs (s3://bucket/out/latents, s3://bucket/runs/a):
shards are read through pyarrow's filesystem; each worker trains in a local staging folder
and rank 0 uploads every checkpoint (state.json last), so all ranks resume from the same one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections import Counter

from curate.errors import UsageError, io_line
from curate.io import storage
from curate.io.storage import check_writable
from jobs.runtime import flags, lease, presets
from latents import run_sync
from latents.dit.loader import Source
from latents.dit.train import TrainConfig, longest_sample, train

TRAIN_PRESETS = {name: p.train for name, p in presets.PRESETS.items()}


def read_shards_manifest(shards: str) -> dict:
    """The shards' manifest through the one validating reader (`latents.shards.read_manifest`):
    a folder without one, or with a corrupt or foreign one, is a usage error that says so."""
    from latents.shards import ShardError, read_manifest

    try:
        return read_manifest(shards)
    except ShardError as e:
        raise UsageError(
            f"--input must be a finished latents folder (written by jobs.encode), got {shards}: {e}"
        ) from e
    except (OSError, ValueError) as e:
        raise UsageError(
            f"--input {shards!r} must be readable, got: {io_line(e)}; check the path, "
            "the bucket and the AWS_* credentials"
        ) from e


def open_dataset(shards: str) -> Source:
    """The shards as a source of units (the one place the trainer touches the data).

    `synthetic:N` gives N random samples in the dataset contract (plumbing checks only).
    A shard folder is `latents.samples.ShardSource`: row groups listed from the manifest (no
    latent row read), each decoded when the trainer's stream reaches its window.
    """
    from latents.samples import ListSource, ShardSource

    if shards.startswith("synthetic:"):
        from latents.dit.synthetic import synthetic_samples

        return ListSource(
            synthetic_samples(int(shards.split(":", 1)[1]), shapes=[(2, 4, 4), (1, 4, 6), (3, 2, 4)])
        )
    read_shards_manifest(shards)  # the usage error for a folder that is not a finished shard set
    # stored dtype (bf16/fp16) and text padded to the longest caption of each row group
    return ShardSource(shards)


def data_facts(shards: str, data: Source) -> dict:
    """What the sampler needs from the data: the manifest (VAE, text encoder, normalisation) and
    the training latent shapes (JSON keys) with their counts (from metadata: no sample read)."""
    manifest = read_shards_manifest(shards) if not shards.startswith("synthetic:") else None
    shapes = Counter({json.dumps(list(k)): v for k, v in data.latent_shapes().items()})
    return {"shards": shards, "manifest": manifest, "latent_shapes": dict(sorted(shapes.items()))}


def latent_shapes(shards: str) -> list[tuple[int, ...]]:
    """Every latent shape [C, T, H, W] in the shards, from the manifest alone (no shard is read)."""
    if shards.startswith("synthetic:"):
        return sorted(open_dataset(shards).latent_shapes())
    by_shape = read_shards_manifest(shards).get("counts", {}).get("by_latent_shape", {})
    return sorted(tuple(int(x) for x in key.split("x")) for key, rows in by_shape.items() if rows)


def resolve_budget(cfg: TrainConfig, shapes: list[tuple[int, ...]], user_set: bool) -> TrainConfig:
    """The packed row length for these shards: a row must hold the longest sample.

    A budget the user passed (--max-tokens) that is too small is an error naming both numbers;
    a preset's budget that is too small is raised to the longest sample's token count.
    """
    if cfg.max_tokens is None:
        return cfg
    if not shapes:
        raise UsageError(
            "the shards' manifest lists no latent shapes (no rows); run jobs.encode on kept, "
            "captioned clips first"
        )
    n, shape = longest_sample(shapes, cfg.patch)
    if cfg.max_tokens >= n:
        return cfg
    if user_set:
        raise UsageError(
            f"--max-tokens must be at least the longest sample's token count: got {cfg.max_tokens}, "
            f"longest sample {n} tokens (latent {list(shape)}, patch {list(cfg.patch)}); pass "
            f"--max-tokens {n} or more, or leave it unset to derive it from the shards"
        )
    print(
        f"[train] token budget: the longest sample is {n} tokens (latent {list(shape)}, patch "
        f"{list(cfg.patch)}) > the preset's max_tokens {cfg.max_tokens}; packing rows of {n} tokens",
        flush=True,
    )
    micro = (
        cfg.micro_tokens if cfg.micro_tokens is None else max(cfg.micro_tokens, n)
    )  # a micro-batch holds a row
    return dataclasses.replace(cfg, max_tokens=n, micro_tokens=micro)


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: the process group is already up; train() wraps the model in DDP."""
    import ray.train.torch
    import torch

    torch.set_num_threads(config["threads"])
    cfg = TrainConfig(**{**config["cfg"], "patch": tuple(config["cfg"]["patch"])})
    data = open_dataset(config["shards"])
    rank = ray.train.get_context().get_world_rank()
    _train_into(
        cfg,
        data,
        config["out"],
        device=ray.train.torch.get_device(),
        stop_after=config["stop_after"],
        extra_config=data_facts(config["shards"], data),
        rank=rank,
        preview=previewer(config["shards"]),
    )


def need_of(workers: int, use_gpu: bool) -> flags.Need:
    return flags.Need(
        gpus=float(workers) if use_gpu else 0.0,
        cpus=float(workers),
        max_cpus_one=1.0,
        what=f"train ({workers} worker(s), 1 CPU{' + 1 GPU' if use_gpu else ''} each)",
        fix="lower --workers",
    )


class Previewer:
    """EMA previews: sample each held-out caption at its own latent shape, decode through the
    shards' VAE (loaded on first use, on CPU), write RUN/previews/step-N/<k>.mp4 + captions.json."""

    def __init__(self, manifest: dict, steps: int = 20, cfg_scale: float = 4.0):
        self.manifest, self.steps, self.cfg_scale = manifest, steps, cfg_scale
        self.vae = None
        self.run: str | None = None  # set by _train_into: the local run folder

    def __call__(self, ema, step: int, samples: list[dict]) -> None:
        import torch

        from curate.video.mp4 import write_video
        from latents.dit.sample import sample
        from latents.vae import load_vae, vae_config_from_manifest

        if self.vae is None:
            self.vae = load_vae(dataclasses.replace(vae_config_from_manifest(self.manifest), device="cpu"))
        folder = os.path.join(self.run or ".", "previews", f"step-{step:07d}")
        os.makedirs(folder, exist_ok=True)
        captions = {}
        device = next(ema.parameters()).device
        for k, s in enumerate(samples):
            z = sample(
                ema,
                s["text_embedding"][None].float().to(device),
                s["text_mask"][None].to(device),
                tuple(s["latent"].shape),
                steps=self.steps,
                cfg_scale=self.cfg_scale,
                generator=torch.Generator().manual_seed(k),
            )
            pixels = self.vae.decode(z.float().cpu())  # (1, 3, F, H, W) in [-1, 1]
            # (3, F, H, W) -> (F, H, W, 3) uint8, even sides for libx264
            frames = (
                ((pixels[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            )
            frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
            write_video(os.path.join(folder, f"{k}.mp4"), list(frames), fps=8)
            captions[f"{k}.mp4"] = s["caption"]
        with open(os.path.join(folder, "captions.json"), "w") as f:
            json.dump(captions, f, indent=2)
        ema.train(False)


def previewer(shards: str) -> Previewer | None:
    """A Previewer for shards whose manifest names their VAE; None for synthetic data."""
    manifest = None if shards.startswith("synthetic:") else read_shards_manifest(shards)
    return Previewer(manifest) if manifest and manifest.get("vae", {}).get("config") else None


def _train_into(
    cfg: TrainConfig, data: Source, out: str, *, rank: int = 0, preview: Previewer | None = None, **kwargs
) -> dict:
    """train() into `out`; a remote `out` is trained in a local staging copy, rank 0 pushing each
    checkpoint."""
    with run_sync.staged_run(out) as local:
        push = None
        if run_sync.is_remote(out) and rank == 0:

            def push(ckpt) -> None:
                run_sync.push_checkpoint(ckpt, out, local)

        if preview is not None:
            preview.run = str(local)
        summary = train(cfg, data, local, on_checkpoint=push, preview=preview, **kwargs)
        if run_sync.is_remote(out) and rank == 0:
            run_sync.push_files(out, local)  # the final loss.csv / loss.png
    return {**summary, "run": str(out)}


def run_distributed(
    cfg: TrainConfig,
    shards: str,
    out: str,
    workers: int,
    use_gpu: bool,
    stop_after: int | None = None,
    address: str | None = None,
    verbose: bool = False,
) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from jobs.runtime.adapter import init_ray

    init_ray(address, quiet=not verbose, need=need_of(workers, use_gpu))
    threads = 1 if use_gpu else max(1, (os.cpu_count() or 1) // workers)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "cfg": dataclasses.asdict(cfg),
            "shards": shards,
            "out": str(out),
            "threads": threads,
            "stop_after": stop_after,
        },
        # CPU workers spread over nodes (each gets its node's cores); GPU workers pack (NCCL in-node)
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})},
            placement_strategy="PACK" if use_gpu else "SPREAD",
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        # Ray Train's own result files: next to a local run; on this node's temp dir for a remote one
        run_config=RunConfig(
            name="dit",
            storage_path=os.path.join(tempfile.gettempdir(), "tubelet-ray-train")
            if storage.is_remote(out)
            else os.path.abspath(storage.join(out, "_ray")),
        ),
    )
    trainer.fit()


def main(
    cfg: TrainConfig,
    shards: str,
    out: str,
    workers: int = 1,
    gpu: bool | None = None,
    stop_after: int | None = None,
    address: str | None = None,
    verbose: bool = False,
    max_tokens_set: bool = False,
) -> dict:
    """`max_tokens_set`: cfg.max_tokens was chosen by the caller (a too-small budget is an error)
    rather than taken from a preset (a too-small budget is raised to fit the shards)."""
    # important: Ray Train workers run in their own working directory; paths must be absolute
    shards, out = flags.canonical(str(shards)), flags.canonical(str(out))
    if workers < 1:
        raise UsageError(f"--workers must be >= 1: got {workers}")
    if cfg.step_tokens is None and cfg.batch_size % workers:
        raise UsageError(
            f"--batch-size must be a multiple of --workers: got {cfg.batch_size} and {workers}; "
            f"use e.g. --batch-size {workers * max(1, cfg.batch_size // workers)}"
        )
    cfg = resolve_budget(cfg, latent_shapes(shards), max_tokens_set)  # before Ray or any data load
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    check_writable(out)  # before the data is read, not after training
    with lease.hold(out, "jobs.train"):  # two trainings in one run folder would mix checkpoints
        if workers == 1:
            data = open_dataset(shards)
            summary = _train_into(
                cfg,
                data,
                out,
                device="cuda" if gpu else "cpu",
                stop_after=stop_after,
                extra_config=data_facts(shards, data),
                preview=previewer(shards),
            )
        else:
            run_distributed(cfg, shards, out, workers, gpu, stop_after, address, verbose)
            rows = storage.read_bytes(storage.join(out, "loss.csv")).decode().strip().splitlines()
            last = rows[-1].split(",") if len(rows) > 1 else [None, None]
            summary = {
                "step": int(last[0]) if last[0] else 0,
                "loss": float(last[1]) if last[1] else None,
                "run": str(out),
                "workers": workers,
            }
    print(
        f"[train] done: {summary}; log {storage.join(out, 'loss.csv')}, "
        f"curve {storage.join(out, 'loss.png')}",
        flush=True,
    )
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = flags.JobParser("python -m jobs.train", __doc__.split("\n")[0])
    flags.add_io(
        p,
        "OUT/latents (.manifest.json + shard-*.parquet) or synthetic:N",
        "run directory (config, checkpoints, loss.csv/png)",
    )
    flags.add_preset(p, sorted(TRAIN_PRESETS))
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="DDP workers (1: this process, no Ray); 1 CPU, and 1 GPU when training on GPU, each",
    )
    p.add_argument("--model", choices=["tiny", "S", "B", "L"], help="DiT size (default: the preset's)")
    p.add_argument(
        "--objective", choices=["rflow", "ddpm"], help="training objective (default: the preset's)"
    )
    for name, typ in (
        ("steps", int),
        ("batch-size", int),
        ("max-tokens", int),
        ("lr", flags.finite_float),
        ("warmup", int),
        ("ckpt-every", int),
        ("seed", int),
        ("caption-dropout", flags.finite_float),
        ("step-tokens", int),
        ("micro-tokens", int),
        ("weight-decay", flags.finite_float),
        ("window", int),
        ("val-rows", int),
        ("val-every", int),
        ("preview-every", int),
        ("keep-last", int),
    ):
        p.add_argument(f"--{name}", type=typ, help="(default: the preset's)")
    p.add_argument("--lr-schedule", choices=["constant", "cosine", "linear"], help="(default: the preset's)")
    p.add_argument(
        "--checkpointing",
        action=argparse.BooleanOptionalAction,
        help="recompute each block in backward (less activation memory; default: the preset's)",
    )
    p.add_argument(
        "--shift",
        help="timestep shift of the rectified-flow draws: a number (1: none) or auto (from "
        "each sample's tokens per frame and frames); recorded in config.json, so jobs.sample and "
        "SDEdit use the same (default: the preset's)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    flags.add_ray(p)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    over = {
        k: v
        for k, v in vars(a).items()
        if v is not None and k in {f.name for f in dataclasses.fields(TrainConfig)}
    }
    return dataclasses.replace(TRAIN_PRESETS[a.preset], **over)


def use_gpu_of(a: argparse.Namespace) -> bool:
    """--device against this machine (a cluster is checked after connecting)."""
    if a.device not in ("auto", "cpu", "cuda"):
        raise flags.fail("--device must be auto, cpu or cuda", repr(a.device), "pass --device auto")
    local = not (a.address or os.environ.get("RAY_ADDRESS"))
    gpus = flags.local_capacity()[0] if local or a.workers == 1 else None
    if a.device == "cuda" and gpus == 0:
        raise flags.fail("--device cuda needs a CUDA GPU on this machine", "0 GPUs", "pass --device cpu")
    return a.device == "cuda" or (a.device == "auto" and bool(gpus))


def parse_shift(text: str) -> float | str:
    """--shift: "auto" or a positive number."""
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise flags.fail(
            "--shift must be a positive number or auto", repr(text), "pass e.g. --shift 3 or --shift auto"
        )
    return value


def check_args(a: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """Every check that needs no Ray: flags, folders, this machine's GPUs and CPUs."""
    flags.check_int("--workers", a.workers, 1)
    for flag, v, lo in (
        ("--steps", a.steps, 1),
        ("--batch-size", a.batch_size, 1),
        ("--max-tokens", a.max_tokens, 1),
        ("--warmup", a.warmup, 0),
        ("--ckpt-every", a.ckpt_every, 1),
        ("--step-tokens", a.step_tokens, 1),
        ("--micro-tokens", a.micro_tokens, 1),
        ("--window", a.window, 1),
        ("--val-rows", a.val_rows, 0),
        ("--val-every", a.val_every, 0),
        ("--preview-every", a.preview_every, 0),
        ("--keep-last", a.keep_last, 0),
    ):
        if v is not None:
            flags.check_int(flag, v, lo)
    if a.lr is not None:
        flags.check_float("--lr", a.lr, 0, strict=True, fix="pass e.g. --lr 1e-4")
    if a.shift is not None:
        a.shift = parse_shift(a.shift)
    a.input, a.output = flags.canonical(a.input), flags.canonical(a.output)
    if not a.input.startswith("synthetic:"):
        read_shards_manifest(a.input)  # raises the UsageError that says what the folder lacks
    flags.check_writable_file("--output", storage.join(a.output, "config.json"))
    gpu = use_gpu_of(a)
    if a.workers > 1:
        flags.check_local(need_of(a.workers, gpu), a.address)
    return config_from_args(a), gpu


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg, gpu = check_args(args)
        try:
            main(
                cfg,
                args.input,
                args.output,
                workers=args.workers,
                gpu=gpu,
                address=args.address,
                verbose=args.verbose,
                max_tokens_set=args.max_tokens is not None,
            )
        except ValueError as e:  # a config rule of the trainer (TrainConfig checks): rule, value seen, fix
            raise UsageError(str(e)) from e
        return 0

    return flags.run_cli(body)


if __name__ == "__main__":
    sys.exit(cli())
