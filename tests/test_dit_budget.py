"""jobs.train sizes the packed-row token budget from the shards: derived when unset, an error when
too small."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from curate import schema as S
from curate.errors import UsageError
from curate.io import layout
from jobs.train import TRAIN_PRESETS, latent_shapes, main, resolve_budget
from latents.dit.packing import num_tokens
from latents.dit.synthetic import synthetic_samples
from latents.dit.train import TrainConfig, train
from latents.encode import DEFAULT as ENCODE_DEFAULT
from latents.shards import MANIFEST_FORMAT

REPO = Path(__file__).resolve().parents[1]


def _default_latent_shapes() -> list[tuple[int, int, int, int]]:
    """Latents of the default encode preset (Wan 2.1: 16 channels, 8x spatial, 4x temporal) for a 2 s
    clip at its target fps and for its longest clip, in every bucket."""
    frames_2s = int(2 * ENCODE_DEFAULT.target_fps) // 4 * 4 + 1  # frame rule 4m + 1: 33 frames
    return [
        (16, (f - 1) // 4 + 1, b.height // 8, b.width // 8)
        for b in ENCODE_DEFAULT.buckets
        for f in (frames_2s, ENCODE_DEFAULT.max_frames)
    ]


def _manifest(folder: Path, shapes: list[tuple[int, ...]]) -> Path:
    """A manifest the validating reader accepts (format, schema version), listing only counts."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"x".join(map(str, s)): 3 for s in shapes}
    manifest = {
        "format": MANIFEST_FORMAT,
        "schema_version": S.SCHEMA_VERSION,
        "counts": {"rows": 3 * len(shapes), "by_latent_shape": counts},
    }
    Path(layout.manifest_path(folder)).write_text(json.dumps(manifest))
    return folder


def test_default_preset_budget_is_derived_from_default_shard_shapes(tmp_path, capsys):
    default = TRAIN_PRESETS["default"]
    shapes = latent_shapes(str(_manifest(tmp_path / "latents", _default_latent_shapes())))
    longest = max(num_tokens(s, default.patch) for s in shapes)
    assert longest == 21 * (848 // 16) * (480 // 16)  # 81 frames in the 480x848 bucket: 33,390 tokens
    assert (
        default.step_tokens and default.max_tokens >= longest
    )  # a step is a token budget; a row holds the longest
    assert resolve_budget(default, shapes, user_set=False) == default
    small = dataclasses.replace(default, max_tokens=4096)  # a preset row that would not hold it ...
    cfg = resolve_budget(small, shapes, user_set=False)
    assert cfg.max_tokens == longest  # ... is raised to fit, and says so
    assert "33390 tokens" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"got 4096, longest sample 33390 tokens .*--max-tokens 33390"):
        resolve_budget(dataclasses.replace(default, max_tokens=4096), shapes, user_set=True)
    assert (
        resolve_budget(dataclasses.replace(default, max_tokens=40_000), shapes, user_set=True).max_tokens
        == 40_000
    )


def test_unset_budget_is_derived_and_training_runs(tmp_path):
    # synthetic:N latents are (4, 2, 4, 4) and smaller: 8 tokens with patch (1, 2, 2)
    cfg = dataclasses.replace(TRAIN_PRESETS["smoke"], steps=2, batch_size=3, max_tokens=5, ckpt_every=2)
    main(cfg, "synthetic:6", tmp_path / "run", gpu=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["max_tokens"] == 8
    with pytest.raises(UsageError, match="got 5, longest sample 8 tokens"):
        main(cfg, "synthetic:6", tmp_path / "run2", gpu=False, max_tokens_set=True)
    # the trainer itself refuses a row shorter than a sample before any step, naming both numbers
    with pytest.raises(ValueError, match="max_tokens=5, longest sample 8 tokens"):
        train(TrainConfig(steps=1, max_tokens=5), synthetic_samples(2), tmp_path / "run3", device="cpu")


def test_cli_too_small_max_tokens_exits_2_naming_both_numbers(tmp_path):
    shards = _manifest(tmp_path / "latents", [(16, 21, 60, 106), (16, 9, 60, 106)])
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train",
            "--input",
            str(shards),
            "--output",
            str(tmp_path / "run"),
            "--preset",
            "default",
            "--max-tokens",
            "4096",
            "--device",
            "cpu",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 2, r.stderr
    assert "got 4096, longest sample 33390 tokens" in r.stderr and "--max-tokens 33390" in r.stderr


def test_bench_attention_work_counts():
    from jobs.bench.train import attention_flops, default_batch_shapes

    # tokens 8, 4, 4 (patch 1x2x2) in rows of 8: padded 3 x 8^2, dense rows 2 x 8^2, per sample 64+16+16
    work = attention_flops([(1, 2, 4, 4), (1, 1, 4, 4), (1, 4, 2, 2)], (1, 2, 2), 8, width=1)
    assert (work["gflop_padded"], work["gflop_packed_dense_mask"], work["gflop_packed_per_sample"]) == (
        0.0,
        0.0,
        0.0,
    )
    assert work["ratio_packed_per_sample_to_padded"] == round(96 / 192, 4)
    assert work["ratio_packed_dense_mask_to_padded"] == round(128 / 192, 4)
    shapes = default_batch_shapes(64)
    assert len(shapes) == 64 and max(num_tokens(s, (1, 2, 2)) for s in shapes) <= 33390
    assert {s[0] for s in shapes} == {16}
