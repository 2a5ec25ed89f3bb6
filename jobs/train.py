"""Train the bundled DiT on latent shards: one process, or N DDP workers with Ray Train.

    python -m jobs.train --shards OUT/latents --out RUN [--workers N] [--preset smoke|default]

--workers 1 trains in this process (no Ray). --workers N > 1 runs Ray Train's TorchTrainer
(DDP; gloo on CPU, NCCL on GPU) on a local Ray instance, or on the cluster when RAY_ADDRESS is
set (as under `ray job submit`). Rerunning the same command resumes from RUN's last checkpoint.

--shards and --out may be object store URIs (s3://bucket/out/latents, s3://bucket/runs/a):
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
from collections.abc import Sequence

from curate import storage
from curate.errors import UsageError
from jobs import presets
from latents import run_sync
from latents.dit.train import TrainConfig, train

TRAIN_PRESETS = {name: p.train for name, p in presets.PRESETS.items()}


MANIFEST_NAMES = (".manifest.json", "_manifest.json", "manifest.json")  # latents.shards writes the first


def _manifest_path(shards: str) -> str | None:
    try:
        found = [storage.join(shards, n) for n in MANIFEST_NAMES if storage.is_file(storage.join(shards, n))]
    except (OSError, ValueError) as e:
        raise UsageError(f"--shards {shards!r} must be readable, got: {storage.one_line(e)}; check the path, "
                         "the bucket and the AWS_* credentials") from e
    return found[0] if found else None


def open_dataset(shards: str) -> Sequence[dict]:
    """All samples of the shards, in stored order (the one place the trainer touches the data).

    `synthetic:N` gives N random samples in the dataset contract (plumbing checks only).
    important: shards are read into memory; the trainer needs random access for its
    deterministic (resumable, worker-count-independent) order. Fine for latent sets of
    up to a few GB; larger sets need a map-style reader over the Parquet row groups.
    """
    if shards.startswith("synthetic:"):
        from latents.dit.synthetic import synthetic_samples

        return synthetic_samples(int(shards.split(":", 1)[1]), shapes=[(2, 4, 4), (1, 4, 6), (3, 2, 4)])
    if _manifest_path(shards) is None:
        raise UsageError(f"--shards must be a finished latents folder with {MANIFEST_NAMES[0]} (written by "
                         f"jobs.encode): got {shards}; run the encode stage first or pass its OUT/latents")
    from latents.dataset import LatentDataset

    # stored dtype (bf16/fp16) and text padded to the longest caption of each row group: half
    # the memory of float32; the trainer widens each sample where it computes
    return list(LatentDataset(shards, batch_size=None, shuffle=False, rank=0, world_size=1,
                              latent_dtype="stored", pad_text="longest"))


def data_facts(shards: str, data: Sequence[dict]) -> dict:
    """What the sampler needs from the data: the manifest (VAE, text encoder, normalisation) and
    the training latent shapes (JSON keys) with their counts."""
    path = _manifest_path(shards) if not shards.startswith("synthetic:") else None
    shapes = Counter(json.dumps(list(d["latent"].shape)) for d in data)
    return {"shards": shards, "manifest": storage.read_json(path) if path else None,
            "latent_shapes": dict(sorted(shapes.items()))}


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: the process group is already up; train() wraps the model in DDP."""
    import ray.train.torch
    import torch

    torch.set_num_threads(config["threads"])
    cfg = TrainConfig(**{**config["cfg"], "patch": tuple(config["cfg"]["patch"])})
    data = open_dataset(config["shards"])
    rank = ray.train.get_context().get_world_rank()
    _train_into(cfg, data, config["out"], device=ray.train.torch.get_device(), stop_after=config["stop_after"],
                extra_config=data_facts(config["shards"], data), rank=rank)


def _train_into(cfg: TrainConfig, data: Sequence[dict], out: str, *, rank: int = 0, **kwargs) -> dict:
    """train() into `out`; a remote `out` is trained in a local staging copy, rank 0 pushing each checkpoint."""
    with run_sync.staged_run(out) as local:
        push = None
        if run_sync.is_remote(out) and rank == 0:
            def push(ckpt) -> None:
                run_sync.push_checkpoint(ckpt, out, local)
        summary = train(cfg, data, local, on_checkpoint=push, **kwargs)
        if run_sync.is_remote(out) and rank == 0:
            run_sync.push_files(out, local)  # the final loss.csv / loss.png
    return {**summary, "run": str(out)}


def run_distributed(cfg: TrainConfig, shards: str, out: str, workers: int, use_gpu: bool,
                    stop_after: int | None = None) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from jobs.adapter import init_ray

    init_ray()
    threads = 1 if use_gpu else max(1, (os.cpu_count() or 1) // workers)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "shards": shards, "out": str(out),
                           "threads": threads, "stop_after": stop_after},
        # CPU workers spread over nodes (each gets its node's cores); GPU workers pack (NCCL in-node)
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})},
                                     placement_strategy="PACK" if use_gpu else "SPREAD"),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        # Ray Train's own result files: next to a local run; on this node's temp dir for a remote one
        run_config=RunConfig(name="dit", storage_path=os.path.join(tempfile.gettempdir(), "tubelet-ray-train")
                             if storage.is_remote(out) else os.path.abspath(storage.join(out, "_ray"))),
    )
    trainer.fit()


def main(cfg: TrainConfig, shards: str, out: str, workers: int = 1, gpu: bool | None = None,
         stop_after: int | None = None) -> dict:
    out = str(out)
    if workers < 1:
        raise UsageError(f"--workers must be >= 1: got {workers}")
    if cfg.batch_size % workers:
        raise UsageError(f"--batch-size must be a multiple of --workers: got {cfg.batch_size} and {workers}; "
                         f"use e.g. --batch-size {workers * max(1, cfg.batch_size // workers)}")
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    if workers == 1:
        data = open_dataset(shards)
        summary = _train_into(cfg, data, out, device="cuda" if gpu else "cpu", stop_after=stop_after,
                              extra_config=data_facts(shards, data))
    else:
        run_distributed(cfg, shards, out, workers, gpu, stop_after)
        rows = storage.read_bytes(storage.join(out, "loss.csv")).decode().strip().splitlines()
        last = rows[-1].split(",") if len(rows) > 1 else [None, None]
        summary = {"step": int(last[0]) if last[0] else 0, "loss": float(last[1]) if last[1] else None,
                   "run": str(out), "workers": workers}
    print(f"[train] done: {summary}; log {storage.join(out, 'loss.csv')}, curve {storage.join(out, 'loss.png')}",
          flush=True)
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="OUT/latents (manifest.json + shard-*.parquet) or synthetic:N")
    p.add_argument("--out", required=True, help="run directory (config, checkpoints, loss.csv/png)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--preset", choices=sorted(TRAIN_PRESETS), default="smoke")
    p.add_argument("--model", choices=["tiny", "S", "B", "L"])
    p.add_argument("--objective", choices=["rflow", "ddpm"])
    for name, typ in (("steps", int), ("batch-size", int), ("max-tokens", int), ("lr", float),
                      ("warmup", int), ("ckpt-every", int), ("seed", int), ("caption-dropout", float)):
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("--cpu", action="store_true", help="train on CPU even where a GPU is present")
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    over = {k: v for k, v in vars(a).items()
            if v is not None and k in {f.name for f in dataclasses.fields(TrainConfig)}}
    return dataclasses.replace(TRAIN_PRESETS[a.preset], **over)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    try:
        main(config_from_args(args), args.shards, args.out, workers=args.workers, gpu=False if args.cpu else None)
    except (UsageError, ValueError) as e:  # bad argument or config: rule, value seen, fix
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
