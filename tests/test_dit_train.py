"""Training loop: memorisation (objective + conditioning + sampler), exact resume, run files, SDEdit."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latents.dit.checkpoint import latest_checkpoint, load_model
from latents.dit.sample import sample
from latents.dit.synthetic import synthetic_samples
from latents.dit.train import TrainConfig, train

torch.set_num_threads(1)

MEMO = TrainConfig(
    model="tiny",
    steps=1000,
    batch_size=3,
    max_tokens=None,
    lr=2e-3,
    warmup=20,
    ema_decay=0.9,
    caption_dropout=0.1,
    log_every=20,
    ckpt_every=10_000,
    seed=0,
)


def _losses(run: Path) -> list[float]:
    with (run / "loss.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _cosines(x: torch.Tensor, data: list[dict]) -> torch.Tensor:
    ref = torch.stack([d["latent"] for d in data]).flatten(1)
    return torch.nn.functional.cosine_similarity(x.flatten(1)[:, None], ref[None], dim=-1)  # (B, N)


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """3 clips with distinct captions, trained ~8 s on CPU until memorised."""
    data = synthetic_samples(3, shapes=[(2, 4, 4)], seed=1)
    run = tmp_path_factory.mktemp("memo")
    train(MEMO, data, run, device="cpu")
    model, config = load_model(run)
    return data, run, model, config


def test_memorisation_loss_falls_and_each_caption_recalls_its_clip(memorised):
    data, run, model, _ = memorised
    losses = _losses(run)
    start, end = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert end < 0.3 * start, f"loss {start:.3f} -> {end:.3f}: did not fall below 30% of its start"
    text = torch.stack([d["text_embedding"] for d in data])
    mask = torch.stack([d["text_mask"] for d in data])
    x = sample(
        model, text, mask, (4, 2, 4, 4), steps=20, cfg_scale=3.0, generator=torch.Generator().manual_seed(0)
    )
    cos = _cosines(x, data)
    assert cos.argmax(1).tolist() == [0, 1, 2], f"cosine to training clips:\n{cos}"
    assert cos.diagonal().min() > 0.8


def test_memorised_model_uses_the_timestep(memorised):
    """Recall alone can pass without the timestep (the caption picks the clip); the rectified-flow
    velocity v = (x_t - x0) / t cannot: at one noisy input the prediction must change with t, and
    feeding each sample another sample's t must cost loss."""
    from latents.dit import diffusion as D

    data, _, model, _ = memorised
    g = torch.Generator().manual_seed(5)
    k = 8  # noise draws per clip
    x0 = torch.stack([d["latent"] for d in data]).repeat_interleave(k, 0)  # (3k, C, T, H, W)
    text = torch.stack([d["text_embedding"] for d in data]).repeat_interleave(k, 0)
    mask = torch.stack([d["text_mask"] for d in data]).repeat_interleave(k, 0)
    eps = torch.randn(x0.shape, generator=g)
    u = torch.linspace(0.05, 0.95, x0.shape[0])[torch.randperm(x0.shape[0], generator=g)]
    x_t, target, t = D.training_inputs("rflow", x0, eps, u)

    def predict(times: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack(model.forward_latents(list(x_t), times, text, mask))

    same = predict(torch.full_like(t, 100.0)) - predict(torch.full_like(t, 900.0))
    rel = float(same.norm() / target.norm())
    assert rel > 0.2, f"prediction at t=100 vs t=900 on the same input differs by only {rel:.3f} (relative)"
    loss = float((predict(t) - target).pow(2).mean())
    shuffled = float((predict((t + 500.0) % 1000.0) - target).pow(2).mean())  # every t moved by 0.5
    assert shuffled > 2 * loss, f"loss {loss:.3f} with its own t vs {shuffled:.3f} with shuffled t"


def test_sdedit_strength_trades_init_for_prompt(memorised, monkeypatch):
    data, _, model, _ = memorised
    init = data[0]["latent"][None]
    text, mask = data[2]["text_embedding"][None], data[2]["text_mask"][None]
    g = torch.Generator().manual_seed(1)
    light = sample(model, text, mask, (4, 2, 4, 4), steps=20, init=init, strength=0.1, generator=g)
    full = sample(model, text, mask, (4, 2, 4, 4), steps=20, init=init, strength=1.0, generator=g)
    # a memorised model pulls hard to its clip, so "keeps the init" is relative: low strength
    # stays much closer to the init clip than full strength, which lands on the prompt's clip
    assert _cosines(light, data)[0, 0] > _cosines(full, data)[0, 0] + 0.2
    assert _cosines(full, data)[0].argmax() == 2
    import latents.dit.sample as S

    seen = []
    real = S.predict
    monkeypatch.setattr(S, "predict", lambda m, x, t, *a: seen.append(t) or real(m, x, t, *a))
    sample(model, text, mask, (4, 2, 4, 4), steps=4, init=init, strength=0.5)
    assert seen == pytest.approx([500.0, 375.0, 250.0, 125.0])  # denoising starts at t = strength
    with pytest.raises(ValueError, match="needs init latents"):
        sample(model, text, mask, (4, 2, 4, 4), steps=2, strength=0.5)


def test_sampling_any_latent_size(memorised):
    _, _, model, _ = memorised
    text, mask = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    for shape in [(4, 1, 2, 2), (4, 3, 6, 4), (4, 5, 2, 8)]:
        for objective in ("rflow", "ddpm"):
            x = sample(model, text, mask, shape, steps=3, objective=objective)
            assert x.shape == (2, *shape) and torch.isfinite(x).all()


def test_run_files_safetensors_config_and_curve(memorised):
    _, run, _, config = memorised
    assert config["model"]["in_channels"] == 4 and config["model"]["text_dim"] == 16
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and ckpt.name == "step-0001000"
    assert {p.name for p in ckpt.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "optim.safetensors",
        "state.json",
    }
    assert json.loads((ckpt / "state.json").read_text())["samples_seen"] == 3000
    assert (run / "loss.png").stat().st_size > 1000
    # a different config in the same run dir is refused instead of silently mixing runs
    with pytest.raises(ValueError, match="different config"):
        train(TrainConfig(model="tiny", steps=1001, lr=1e-3), synthetic_samples(3, seed=1), run, device="cpu")


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    data = synthetic_samples(7, shapes=[(2, 4, 4), (1, 2, 6), (3, 2, 2)], seed=2)
    cfg = TrainConfig(
        model="tiny",
        steps=12,
        batch_size=4,
        max_tokens=40,
        warmup=4,
        caption_dropout=0.5,
        log_every=1,
        ckpt_every=100,
        seed=3,
    )
    train(cfg, data, tmp_path / "full", device="cpu")
    part = train(cfg, data, tmp_path / "cut", device="cpu", stop_after=5)  # "interrupted" after step 5
    assert part["step"] == 5
    torch.manual_seed(1234)  # a resumed process starts from other global RNG state
    train(cfg, data, tmp_path / "cut", device="cpu")
    a, b = latest_checkpoint(tmp_path / "full"), latest_checkpoint(tmp_path / "cut")
    for name in ("model.safetensors", "ema.safetensors", "optim.safetensors"):
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}:{k} differs after resume"
    assert _losses(tmp_path / "full") == _losses(tmp_path / "cut")
    assert len(_losses(tmp_path / "cut")) == 12


def test_ema_warmup_forgets_the_initial_model(tmp_path):
    from latents.dit.train import ema_decay_at, update_ema

    cfg = TrainConfig(ema_decay=0.999)
    # the init's share of the EMA after n steps: the product of the decays
    ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(ema.weight)  # "the init" (adaLN-Zero: a zero-output model)
    torch.nn.init.ones_(model.weight)  # every trained model since
    for step in range(2000):
        update_ema(ema, model, ema_decay_at(cfg, step))
    init_share = 1 - float(ema.weight)
    assert init_share < 1e-6, (
        f"{init_share:.3g} of the EMA is still the init (0.999^2000 = 0.135 without warm-up)"
    )
    assert ema_decay_at(cfg, 100_000) == 0.999  # capped at ema_decay
    # wired into train(): after 10 steps at 0.9999 the EMA's output layer is near the model's, not ~0
    train(
        TrainConfig(
            model="tiny",
            steps=10,
            batch_size=2,
            max_tokens=None,
            ema_decay=0.9999,
            ckpt_every=10,
            log_every=10,
        ),
        synthetic_samples(4),
        tmp_path,
        device="cpu",
    )
    ckpt = latest_checkpoint(tmp_path)
    w_model, w_ema = (
        load_file(ckpt / "model.safetensors")["final.weight"],
        load_file(ckpt / "ema.safetensors")["final.weight"],
    )
    assert float(w_model.norm()) > 0 and float(w_ema.norm()) > 0.3 * float(w_model.norm())


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoint_files_follow_the_umask(tmp_path, umask):
    """safetensors creates its files 0600 whatever the umask; a checkpoint's files get the mode
    any file created under the caller's umask gets (0644 under 022, so a team can read them)."""
    from latents.dit.checkpoint import save_checkpoint

    model, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    old = os.umask(umask)
    try:
        ckpt = save_checkpoint(tmp_path, 1, model, ema, opt, {})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in ckpt.iterdir()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask) and len(modes) == 4
