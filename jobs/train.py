"""Train the bundled DiT on latent shards: one process, or N DDP workers with Ray Train.

    python -m jobs.train --shards OUT/latents --out RUN [--workers N] [--preset smoke|default]

--workers 1 trains in this process (no Ray). --workers N > 1 runs Ray Train's TorchTrainer
(DDP; gloo on CPU, NCCL on GPU) on a local Ray instance, or on the cluster when RAY_ADDRESS is
set (as under `ray job submit`). Rerunning the same command resumes from RUN's last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from curate.errors import UsageError
from jobs import presets
from latents.dit.train import TrainConfig, train

TRAIN_PRESETS = {name: p.train for name, p in presets.PRESETS.items()}


MANIFEST_NAMES = ("_manifest.json", "manifest.json")  # latents.shards writes the first


def _manifest_path(shards: str) -> Path | None:
    found = [Path(shards) / n for n in MANIFEST_NAMES if (Path(shards) / n).is_file()]
    return found[0] if found else None


def open_dataset(shards: str) -> Sequence[dict]:
    """All samples of the shards, in stored order (the one place the trainer touches the data).

    `synthetic:N` gives N random samples in the dataset contract (plumbing checks only).
    The trainer needs random access for its deterministic (resumable, worker-count-independent)
    order: `latents.samples.ShardSamples` reads row groups on demand, a bounded number at a time.
    """
    if shards.startswith("synthetic:"):
        from latents.dit.synthetic import synthetic_samples

        return synthetic_samples(int(shards.split(":", 1)[1]), shapes=[(2, 4, 4), (1, 4, 6), (3, 2, 4)])
    if _manifest_path(shards) is None:
        raise UsageError(f"--shards must be a finished latents folder with {MANIFEST_NAMES[0]} (written by "
                         f"jobs.encode): got {shards}; run the encode stage first or pass its OUT/latents")
    from latents.samples import ShardSamples

    # row groups read on demand into a bounded cache (memory flat in the number of shards);
    # stored dtype (bf16/fp16) and text padded to the longest caption of each row group
    return ShardSamples(shards)


def data_facts(shards: str, data: Sequence[dict]) -> dict:
    """What the sampler needs from the data: the manifest (VAE, text encoder, normalisation) and
    the training latent shapes (JSON keys) with their counts."""
    path = _manifest_path(shards) if not shards.startswith("synthetic:") else None
    if hasattr(data, "latent_shapes"):  # from the manifest: no sample read
        shapes = Counter({json.dumps(list(k)): v for k, v in data.latent_shapes().items()})
    else:
        shapes = Counter(json.dumps(list(d["latent"].shape)) for d in data)
    return {"shards": shards, "manifest": json.loads(path.read_text()) if path else None,
            "latent_shapes": dict(sorted(shapes.items()))}


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: the process group is already up; train() wraps the model in DDP."""
    import ray.train.torch
    import torch

    torch.set_num_threads(config["threads"])
    cfg = TrainConfig(**{**config["cfg"], "patch": tuple(config["cfg"]["patch"])})
    data = open_dataset(config["shards"])
    train(cfg, data, config["out"], device=ray.train.torch.get_device(), stop_after=config["stop_after"],
          extra_config=data_facts(config["shards"], data))


def run_distributed(cfg: TrainConfig, shards: str, out: Path, workers: int, use_gpu: bool,
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
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(name="dit", storage_path=str((out / "_ray").resolve())),
    )
    trainer.fit()


def main(cfg: TrainConfig, shards: str, out: str | Path, workers: int = 1, gpu: bool | None = None,
         stop_after: int | None = None) -> dict:
    out = Path(out)
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
        summary = train(cfg, data, out, device="cuda" if gpu else "cpu", stop_after=stop_after,
                        extra_config=data_facts(shards, data))
    else:
        run_distributed(cfg, shards, out, workers, gpu, stop_after)
        rows = (out / "loss.csv").read_text().strip().splitlines()
        last = rows[-1].split(",") if len(rows) > 1 else [None, None]
        summary = {"step": int(last[0]) if last[0] else 0, "loss": float(last[1]) if last[1] else None,
                   "run": str(out), "workers": workers}
    print(f"[train] done: {summary}; log {out / 'loss.csv'}, curve {out / 'loss.png'}", flush=True)
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
