"""The resume rule: a stage's resume key hashes what decides its output, never its resources.

Every stage job compares its finished markers' `config_hash` with the key below, so an equal
key re-runs nothing and another key re-runs the stage (the Ray tests of each job show the
marker side: tests/test_caption_job.py resumes with another batch size, tests/test_latents_encode.py
re-encodes under another frame policy).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from captioner.stage import caption_hash
from curate.decisions import filters
from curate.io.storage import config_hash
from jobs.runtime import presets
from jobs.score import scoring_hash

P = presets.PRESETS["smoke"]


def _keys(stage: str):
    """(the stage's resume key, its config, [resource-only changes], [output-deciding changes])."""
    if stage == "split":
        c = P.split
        return (
            config_hash,
            c,
            [replace(c, device="cuda"), replace(c, on_error="raise")],
            [replace(c, min_seconds=c.min_seconds + 1), replace(c, detector="hybrid")],
        )
    if stage == "score":
        c = P.score
        resources = [
            replace(c, device="cuda"),
            replace(c, weights_dir="/w"),
            replace(c, on_error="raise"),
            replace(c, nsfw=replace(c.nsfw, threads=4)),
            replace(c, filters=filters.FilterConfig()),
        ]  # decisions are re-made on every run
        outputs = [
            replace(c, clip_frames=c.clip_frames + 1),
            replace(c, precision="fp16"),
            replace(c, clip_model="other"),
        ]
        return scoring_hash, c, resources, outputs
    if stage == "caption":
        c = P.caption
        return (
            caption_hash,
            c,
            [
                replace(c, device="cuda"),
                replace(c, batch_size=c.batch_size + 3),
                replace(c, weights_dir="/w"),
                replace(c, on_error="raise"),
            ],
            [
                replace(c, model="other"),
                replace(c, prompt_version="other"),
                replace(c, num_frames=c.num_frames + 1),
                replace(c, dtype="bfloat16"),
                replace(c, qa=replace(c.qa, min_words=3)),
            ],
        )
    c = P.encode
    return (
        config_hash,
        c,
        [
            replace(c, vae=replace(c.vae, device="cuda"), text=replace(c.text, device="cuda")),
            replace(c, vae_batch=7),
            replace(c, psnr_every=0),
            replace(c, vae=replace(c.vae, slicing=False)),
            replace(c, vae=replace(c.vae, weights_dir="/w"), text=replace(c.text, weights_dir="/w")),
            replace(c, text=replace(c.text, batch_size=3)),
        ],
        [
            replace(c, max_frames=5),
            replace(c, target_fps=c.target_fps + 1),
            replace(c, latent_dtype="float32"),
            replace(c, vae=replace(c.vae, dtype="bfloat16")),
            replace(c, text=replace(c.text, max_length=32)),
        ],
    )


@pytest.mark.parametrize("stage", ["split", "score", "caption", "encode"])
def test_resources_rerun_nothing_and_outputs_rerun_the_stage(stage):
    key, cfg, resources, outputs = _keys(stage)
    assert all(key(c) == key(cfg) for c in resources), [c for c in resources if key(c) != key(cfg)]
    changed = [key(c) for c in outputs]
    assert key(cfg) not in changed and len(set(changed)) == len(changed)
