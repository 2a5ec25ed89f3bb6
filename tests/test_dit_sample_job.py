"""jobs.sample end to end with the smoke VAE and text encoder: text -> mp4, any size, SDEdit.

Needs latents.vae / latents.text (the latents branch); skipped where they are absent.
"""

from __future__ import annotations

import av
import pytest
import torch

from curate.errors import UsageError
from curate.synth import Segment, make_video
from latents.dit.synthetic import synthetic_samples
from latents.dit.train import TrainConfig, train

pytest.importorskip("latents.vae")
pytest.importorskip("latents.text")

torch.set_num_threads(1)


def _frames(path) -> tuple[int, int, int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sum(1 for _ in c.decode(video=0)), s.width, s.height


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from latents.text import TEXT_SMOKE, load_text_encoder

    dim = load_text_encoder(TEXT_SMOKE).info.dim
    data = synthetic_samples(4, shapes=[(2, 4, 4)], channels=4, text_len=8, text_dim=dim)
    out = tmp_path_factory.mktemp("run")
    manifest = {"vae": {"kind": "wan", "smoke": True}, "encode": {"target_fps": 8.0}, "smoke": True}
    train(TrainConfig(steps=3, batch_size=2, ckpt_every=100), data, out, device="cpu",
          extra_config={"manifest": manifest, "latent_shapes": {"[4, 2, 4, 4]": 4}})
    return out


def test_text_to_mp4_at_training_and_other_sizes(run, tmp_path):
    from jobs.sample import SampleJob, main

    s = main(SampleJob(run=str(run), prompt="a red ball", out=str(tmp_path / "a.mp4"), steps=2))
    assert s["latent_shape"] == [4, 2, 4, 4] and s["smoke_random_models"]
    assert _frames(tmp_path / "a.mp4") == (5, 32, 32)  # wan smoke: 4x time, 8x space
    main(SampleJob(run=str(run), prompt="a red ball", out=str(tmp_path / "b.mp4"), steps=2,
                   frames=9, height=16, width=48))
    assert _frames(tmp_path / "b.mp4") == (9, 48, 16)


def test_sdedit_from_a_video(run, tmp_path):
    from jobs.sample import SampleJob, main

    video = make_video(tmp_path / "init.mp4", [Segment("shot", 12)], fps=8, width=64, height=48).path
    s = main(SampleJob(run=str(run), prompt="a blue ball", out=str(tmp_path / "e.mp4"), steps=3,
                       init_video=str(video), strength=0.6))
    assert s["sdedit_strength"] == 0.6
    assert _frames(tmp_path / "e.mp4") == (5, 32, 32)
    with pytest.raises(UsageError, match="needs --init-video"):
        main(SampleJob(run=str(run), prompt="x", out=str(tmp_path / "f.mp4"), strength=0.5))
