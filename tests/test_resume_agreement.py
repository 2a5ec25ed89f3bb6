"""DDP workers that found different checkpoints (each looked in its own folder) fail with one
clear error on every rank, instead of hanging in the first collective."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from latents.dit.train import _check_same_step
from tests.s3server import free_port


def _worker(rank: int, port: int, steps: list[int], results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        _check_same_step(steps[rank], 2, torch.device("cpu"))
        results[rank] = "ok"
    except RuntimeError as e:
        results[rank] = str(e)
    finally:
        dist.destroy_process_group()


def _run(steps: list[int]) -> list[str]:
    with mp.Manager() as m:
        results = m.list(["", ""])
        mp.spawn(_worker, args=(free_port(), steps, results), nprocs=2, join=True)
        return list(results)


def test_ranks_that_agree_go_on_and_ranks_that_disagree_fail_clearly():
    assert _run([6, 6]) == ["ok", "ok"]
    errors = _run([6, 0])
    assert all("same checkpoint step, got steps [6, 0]" in e and "s3://" in e for e in errors)
