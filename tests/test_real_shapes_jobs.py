"""The path users run: the `default` preset through every job CLI, on a hub-layout weights folder.

The real-shape models of tests/real_shapes.py (real widths, reduced depth, random weights) sit in
one folder laid out as `hf download <repo> --local-dir DIR/<repo>` lays out the real repos. The
real CLIs run as subprocesses, as a user types them: `jobs.check`, `jobs.curate` on a short real
clip (its own local Ray), `jobs.train` (two steps, the tiny DiT: the default DiT-B at the default
clip's 12-14k tokens takes minutes per step on a CPU) and `jobs.sample` from its checkpoint. The
asserts read what a user reads: the check's lines, captions with their `caption_clip_score`,
the manifest's VAE / text-encoder entries, shards through pandas, the sampled mp4. Then a folder
lacking one file of one repo: the check names that file and exits 2, and jobs.curate exits 2
before Ray or any actor starts. Run with the in-process chain: `pytest -m real_shapes`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curate import schema as S
from curate.video.decode import decode_clip
from curate.video.probe import probe
from jobs.runtime.presets import DEFAULT
from latents.dit.packing import num_tokens
from tests import real_shapes as R
from tests.test_real_shapes import _cut

pytestmark = [pytest.mark.real_shapes, pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]
SOURCE = "bigbuckbunny.mp4"  # 1280x720, 25 fps, one shot
CLIP_SECONDS = 2.2  # one clip just above the default split's 2 s minimum (the shortest default latent)
SAMPLE_FRAMES = 9  # jobs.sample --frames: 3 latent frames at the default 848x480 bucket (CPU time)


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TUBELET_WEIGHTS")}
    # an empty HF cache: the weights folder is the only place the weights can come from
    env.update(
        PYTHONPATH=str(REPO),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp / "hf"),
        TUBELET_CACHE=str(tmp / "cache"),
        RAY_AUTH_MODE="disabled",
        PYTHONUNBUFFERED="1",
    )
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    print(f"[real-shapes jobs] {args[0]}: rc {r.returncode} in {time.perf_counter() - t:.1f} s", flush=True)
    return r


def _lacking_one(weights: Path, dst: Path, rel: str) -> Path:
    """`dst`: the weights folder again (links, nothing copied) without `rel`."""
    for f in weights.rglob("*"):
        if f.is_file() and f.relative_to(weights).as_posix() != rel:
            (dst / f.relative_to(weights)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(weights)).symlink_to(f)
    return dst


def test_default_preset_through_the_job_clis(
    real_videos: Path, real_shape_models: dict, tmp_path: Path
) -> None:
    weights = real_shape_models["weights"]
    env = _env(tmp_path)
    wd = ["--weights-dir", str(weights)]

    # --- jobs.check: every model found in the folder ---------------------------------------------
    r = _run(["jobs.check", "--preset", "default", *wd], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("\n  ok ") == 5 and "MISSING" not in r.stdout, r.stdout

    # --- jobs.curate: probe .. split .. score .. filter .. caption .. encode .. shards .. report ---
    inp = tmp_path / "in"
    inp.mkdir()
    _cut(real_videos / SOURCE, inp / "clip.mp4", CLIP_SECONDS)
    out = tmp_path / "out"
    r = _run(
        [
            "jobs.curate",
            "--input",
            str(inp),
            "--output",
            str(out),
            "--preset",
            "default",
            *wd,
            "--device",
            "cpu",
        ],
        env,
        timeout=1500,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    scored = pd.read_parquet(out / "scored")
    assert len(scored) == 1 and scored[S.KEPT].all(), scored[[S.KEPT, S.DROP_REASON, S.AESTHETIC]]
    assert len(scored[S.CLIP_EMBEDDING].iloc[0]) == 768  # ViT-L/14
    captions = pd.read_parquet(out / "captions")
    cap = captions.iloc[0]
    assert cap[S.STATUS] == S.STATUS_OK, cap[S.ERROR]
    assert cap[S.CAPTION].endswith(".") and len(cap[S.CAPTION].split()) == R.CHAIN_WORDS
    assert cap[S.CAPTION_MODEL] == DEFAULT.caption.model and cap[S.CAPTION_SHORT]
    assert (
        pd.notna(cap[S.CAPTION_CLIP_SCORE]) and -1.0 <= cap[S.CAPTION_CLIP_SCORE] <= 1.0
    )  # null reads as NaN
    manifest = json.loads((out / "latents" / ".manifest.json").read_text())
    vae_ref = json.loads(R.WAN_VAE.read_text())
    assert manifest["vae"]["vae_id"] == f"{DEFAULT.encode.vae.source}/vae" and not manifest["vae"]["smoke"]
    assert manifest["vae"]["latents_mean"] == vae_ref["latents_mean"]
    assert manifest["vae"]["latents_std"] == vae_ref["latents_std"]
    assert manifest["vae"]["config"]["tiling"] is False  # encoded as diffusers' Wan pipelines encode
    assert manifest["text_encoder"]["text_encoder_id"] == DEFAULT.encode.text.source
    assert (manifest["text_encoder"]["dim"], manifest["text_encoder"]["max_length"]) == (4096, 512)
    shards = pd.read_parquet(out / "latents")
    assert len(shards) == manifest["counts"]["rows"] == 1
    row = shards.iloc[0]
    c, t, h, w = row[S.LATENT_SHAPE]
    assert (c, h, w) == (16, 480 // 8, 848 // 8) and t >= 2
    assert row[S.TEXT_EMBEDDING_SHAPE][1] == 4096 and row[S.CAPTION] == cap[S.CAPTION]
    assert (out / "report" / "index.html").is_file()

    # --- jobs.train: two steps on the shards ---------------------------------------------------------
    run = tmp_path / "run"
    # the default's token budget scaled to this clip: rows of one sample, two micro-batches a step
    # (its 65,536-slot rows and 2^19-token steps take minutes a step on a CPU, even the tiny DiT)
    tokens = num_tokens((c, t, h, w), DEFAULT.train.patch)
    r = _run(
        [
            "jobs.train",
            "--input",
            str(out / "latents"),
            "--output",
            str(run),
            "--preset",
            "default",
            "--model",
            "tiny",
            "--steps",
            "2",
            "--max-tokens",
            str(tokens),
            "--micro-tokens",
            str(tokens),
            "--step-tokens",
            str(2 * tokens),
            "--warmup",
            "1",
            "--ckpt-every",
            "2",
            "--device",
            "cpu",
        ],
        env,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    run_cfg = json.loads((run / "config.json").read_text())
    assert run_cfg["model"]["in_channels"] == 16 and run_cfg["model"]["text_dim"] == 4096
    assert sorted((run / "checkpoints").glob("step-*"))

    # --- jobs.sample: an mp4 from the checkpoint, through the manifest's VAE and text encoder -------
    mp4 = tmp_path / "sample.mp4"
    r = _run(
        [
            "jobs.sample",
            "--input",
            str(run),
            "--output",
            str(mp4),
            "--prompt",
            cap[S.CAPTION],
            "--steps",
            "2",
            "--frames",
            str(SAMPLE_FRAMES),
            "--height",
            "480",
            "--width",
            "848",
            *wd,
            "--device",
            "cpu",
        ],
        env,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    back = probe(mp4)
    assert back[S.STATUS] == S.STATUS_OK and (back[S.WIDTH], back[S.HEIGHT]) == (848, 480)
    assert decode_clip(mp4, 0.0, 60.0, offsets=np.arange(10 * SAMPLE_FRAMES)).frames.shape == (
        SAMPLE_FRAMES,
        480,
        848,
        3,
    )


@pytest.mark.parametrize(
    ("rel", "named"),
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct/generation_config.json", "generation_config.json"),
        (
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers/tokenizer/tokenizer.json",
            "tokenizer/tokenizer.json or tokenizer/spiece.model",
        ),
    ],
)
def test_a_folder_lacking_one_file_stops_every_job_before_ray(
    real_shape_models: dict, tmp_path: Path, rel: str, named: str
) -> None:
    weights = _lacking_one(real_shape_models["weights"], tmp_path / "w", rel)
    env = _env(tmp_path)
    r = _run(["jobs.check", "--preset", "default", "--weights-dir", str(weights)], env)
    assert r.returncode == 2
    assert r.stdout.count("MISSING") == 1 and f"lacks {named}  ->  hf download" in r.stdout, r.stdout
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "v.mp4").write_bytes(b"")  # never read: the weights check comes first
    out = tmp_path / "out"
    r = _run(
        [
            "jobs.curate",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(out),
            "--preset",
            "default",
            "--weights-dir",
            str(weights),
        ],
        env,
        timeout=300,
    )
    assert r.returncode == 2 and f"lacks {named}" in r.stderr and "Traceback" not in r.stderr, r.stderr[
        -3000:
    ]
    assert (
        "Started a local Ray instance" not in r.stdout + r.stderr
    )  # stopped before Ray, so before any actor
    assert not list(out.rglob("*.parquet"))
