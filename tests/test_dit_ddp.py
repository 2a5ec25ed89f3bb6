"""jobs.train: 2 DDP workers (Ray Train, gloo on CPU) follow the 1-worker loss curve; CLI errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from curate.errors import UsageError
from jobs.train import TRAIN_PRESETS, main
from latents.dit.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parent.parent


def _losses(run: Path) -> list[float]:
    with (run / "loss.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.ray
def test_two_ddp_workers_follow_the_single_worker_curve(tmp_path):
    import ray

    from jobs.runtime.adapter import _pythonpath

    # important: a fresh local instance; a bare ray.init() would join any cluster that another
    # process started on this machine with `ray start`, whose CPUs may all be taken. An instance
    # an earlier test left running in this process has the wrong runtime_env: replace it.
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": _pythonpath(), "HF_HUB_OFFLINE": "1"}},
        log_to_driver=False,
        configure_logging=True,
        logging_level="ERROR",
    )
    cfg = dataclasses.replace(
        TRAIN_PRESETS["smoke"],
        steps=8,
        batch_size=4,
        max_tokens=32,
        log_every=1,
        ckpt_every=100,
        caption_dropout=0.5,
        lr=1e-3,
        warmup=2,
    )
    try:
        main(cfg, "synthetic:10", tmp_path / "one", workers=1, gpu=False)
        main(cfg, "synthetic:10", tmp_path / "two", workers=2, gpu=False)
    finally:
        ray.shutdown()
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    assert one[0] != one[-1]  # the curve moves, so agreement is not trivial
    for a, b in zip(one, two):
        assert b == pytest.approx(a, rel=1e-4)
    wa = load_file(latest_checkpoint(tmp_path / "one") / "model.safetensors")
    wb = load_file(latest_checkpoint(tmp_path / "two") / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5


def test_batch_must_split_over_workers(tmp_path):
    cfg = dataclasses.replace(TRAIN_PRESETS["smoke"], batch_size=3)
    with pytest.raises(UsageError, match="multiple of --workers"):
        main(cfg, "synthetic:4", tmp_path / "run", workers=2)


def test_cli_missing_shards_exits_2(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train",
            "--input",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 2
    assert "manifest.json" in r.stderr and str(tmp_path / "nope") in r.stderr


def test_cli_trains_synthetic_run_and_resumes(tmp_path):
    args = [
        sys.executable,
        "-m",
        "jobs.train",
        "--input",
        "synthetic:6",
        "--output",
        str(tmp_path / "run"),
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--ckpt-every",
        "2",
        "--shift",
        "3",
        "--device",
        "cpu",
    ]
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert latest_checkpoint(tmp_path / "run").name == "step-0000004"
    assert "[train] step 4/4  loss " in r.stdout  # the progress line's last state
    assert (
        json.loads((tmp_path / "run" / "config.json").read_text())["train"]["shift"] == 3
    )  # jobs.sample reads it
    args[args.index("--steps") + 1] = "6"
    r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "start step 4" in r.stdout  # extending --steps resumes the same run
    assert "[train] step 6/6  loss " in r.stdout and "steps/s" in r.stdout
    assert latest_checkpoint(tmp_path / "run").name == "step-0000006"
    assert torch.isfinite(torch.tensor(_losses(tmp_path / "run"))).all()
    with pytest.raises(ValueError, match="differs in: lr"):
        main(
            dataclasses.replace(TRAIN_PRESETS["smoke"], steps=6, batch_size=2, ckpt_every=2, lr=0.1),
            "synthetic:6",
            tmp_path / "run",
            gpu=False,
        )


def test_cli_bad_shift_exits_2(tmp_path, capsys):
    from jobs.train import cli

    assert (
        cli(["--input", "synthetic:6", "--output", str(tmp_path / "run"), "--shift", "-1", "--device", "cpu"])
        == 2
    )
    assert "--shift must be a positive number or auto, got '-1'" in capsys.readouterr().err
