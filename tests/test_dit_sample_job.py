"""jobs.sample end to end with the smoke VAE and text encoder: text -> mp4, any size, SDEdit.

Needs latents.vae / latents.text (the latents branch); skipped where they are absent.
"""

from __future__ import annotations

import av
import pytest
import torch

from curate.errors import UsageError
from curate.synthetic.synth import Segment, make_video
from latents.dit.synthetic import synthetic_samples
from latents.dit.train import TrainConfig, train

pytest.importorskip("latents.vae")
pytest.importorskip("latents.text")

torch.set_num_threads(1)


def _frames(path) -> tuple[int, int, int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sum(1 for _ in c.decode(video=0)), s.width, s.height


def _train(out, enc) -> dict:
    """A 3-step run whose config.json records the manifest jobs.encode writes for `enc`."""
    from latents.encode import manifest_meta
    from latents.models_info import vae_and_text_info

    manifest = manifest_meta(enc, *vae_and_text_info(enc))
    c = manifest["vae"]["latent_channels"]
    data = synthetic_samples(
        4, shapes=[(2, 4, 4)], channels=c, text_len=8, text_dim=manifest["text_encoder"]["dim"]
    )
    train(
        TrainConfig(steps=3, batch_size=2, ckpt_every=100),
        data,
        out,
        device="cpu",
        extra_config={"manifest": manifest, "latent_shapes": {f"[{c}, 2, 4, 4]": 4}},
    )
    return manifest


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from latents.encode import SMOKE

    out = tmp_path_factory.mktemp("run")
    _train(out, SMOKE)
    return out


def test_text_to_mp4_at_training_and_other_sizes(run, tmp_path):
    from jobs.sample import SampleJob, main

    s = main(SampleJob(run=str(run), prompt="a red ball", out=str(tmp_path / "a.mp4"), steps=2))
    assert s["latent_shape"] == [4, 2, 4, 4] and s["smoke_random_models"]
    assert _frames(tmp_path / "a.mp4") == (5, 32, 32)  # wan smoke: 4x time, 8x space
    main(
        SampleJob(
            run=str(run),
            prompt="a red ball",
            out=str(tmp_path / "b.mp4"),
            steps=2,
            frames=9,
            height=16,
            width=48,
        )
    )
    assert _frames(tmp_path / "b.mp4") == (9, 48, 16)


def test_sdedit_from_a_video(run, tmp_path):
    from jobs.sample import SampleJob, main

    video = make_video(tmp_path / "init.mp4", [Segment("shot", 12)], fps=8, width=64, height=48).path
    s = main(
        SampleJob(
            run=str(run),
            prompt="a blue ball",
            out=str(tmp_path / "e.mp4"),
            steps=3,
            init_video=str(video),
            strength=0.6,
        )
    )
    assert s["sdedit_strength"] == 0.6
    assert _frames(tmp_path / "e.mp4") == (5, 32, 32)
    with pytest.raises(UsageError, match="needs --init-video"):
        main(SampleJob(run=str(run), prompt="x", out=str(tmp_path / "f.mp4"), strength=0.5))


def test_sampler_loads_the_vae_and_text_encoder_the_manifest_names(tmp_path):
    """Not a preset picked from (kind, smoke): the recorded loader config (source, revision, dtype)."""
    import dataclasses
    import json

    from jobs.sample import SampleJob, main
    from latents.encode import SMOKE
    from latents.text import build_smoke_text_encoder
    from latents.vae import VAEConfig, build_smoke_vae

    vae_dir = build_smoke_vae(tmp_path / "my-vae", "wan")  # a VAE in a folder of its own, not a smoke preset
    text_dir = build_smoke_text_encoder(tmp_path / "my-text")
    enc = dataclasses.replace(
        SMOKE,
        vae=VAEConfig(
            kind="wan", source=str(vae_dir), subfolder="", tiling=False, dtype="float32", device="cpu"
        ),
        text=dataclasses.replace(SMOKE.text, source=str(text_dir), smoke=False),
    )
    run = tmp_path / "run"
    _train(run, enc)
    s = main(SampleJob(run=str(run), prompt="a red ball", out=str(tmp_path / "a.mp4"), steps=2))
    assert s["vae"] == str(vae_dir) and s["text_encoder"] == str(text_dir)
    assert _frames(tmp_path / "a.mp4") == (5, 32, 32)  # wan: 4x time, 8x space

    # the same folder, but not the VAE the shards were normalised with: refused, both values named
    cfg = json.loads((run / "config.json").read_text())
    cfg["manifest"]["vae"]["latents_std"][0] *= 2
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match=r"latents_std: manifest .* loaded"):
        main(SampleJob(run=str(run), prompt="a red ball", out=str(tmp_path / "b.mp4"), steps=2))
