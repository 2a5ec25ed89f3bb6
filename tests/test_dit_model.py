"""DiT model, tubelet packing and objective functions (tiny, CPU, seconds)."""

from __future__ import annotations

import pytest
import torch

from latents.dit import diffusion as D
from latents.dit.model import PRESETS, DiT, apply_rope, rope_angles
from latents.dit.packing import pack, padding_efficiency, patchify, plan_rows, unpack, unpatchify

torch.set_num_threads(1)


def _random_model(seed: int = 0) -> DiT:
    """A tiny DiT with every weight random (adaLN-Zero init would hide masking bugs)."""
    torch.manual_seed(seed)
    model = DiT(PRESETS["tiny"].sized(4, 16))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def _samples(shapes, text_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = [torch.randn(4, *s, generator=g) for s in shapes]
    txt = [torch.randn(6, 16, generator=g) for _ in shapes]
    msk = [torch.arange(6) < n for n in text_lens]
    return lat, txt, msk


@pytest.mark.parametrize("patch", [(1, 2, 2), (2, 1, 2), (1, 1, 1)])
def test_patchify_roundtrip_and_grid_positions(patch):
    x = torch.randn(3, 4, 6, 8)
    tokens, pos = patchify(x, patch)
    assert tokens.shape == (4 * 6 * 8 // (patch[0] * patch[1] * patch[2]), 3 * patch[0] * patch[1] * patch[2])
    assert torch.equal(unpatchify(tokens, tuple(x.shape), patch), x)
    assert len({tuple(p) for p in pos.tolist()}) == tokens.shape[0]  # one distinct (t, y, x) per token
    # token k holds exactly the values of its tubelet
    t, y, xx = pos[5].tolist()
    pt, ph, pw = patch
    block = x[:, t * pt : (t + 1) * pt, y * ph : (y + 1) * ph, xx * pw : (xx + 1) * pw]
    assert torch.equal(tokens[5], block.reshape(-1))


def test_indivisible_latent_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible by the tubelet patch"):
        patchify(torch.randn(4, 2, 5, 4), (1, 2, 2))


@pytest.mark.parametrize("backend", ["varlen", "flex", "dense"])
def test_packed_forward_equals_per_sample_forwards(backend, monkeypatch):
    monkeypatch.setattr(DiT, "attention", backend)
    model = _random_model()
    shapes = [(2, 4, 4), (1, 6, 4), (3, 2, 2), (1, 2, 4), (2, 2, 6)]
    lat, txt, msk = _samples(shapes, [3, 6, 0, 1, 4])  # sample 2: dropped caption (no text)
    t = torch.tensor([10.0, 500.0, 990.0, 250.0, 0.0])
    packed = pack(lat, txt, msk, model.cfg.patch, max_tokens=20)
    assert packed.tokens.shape[0] < len(shapes)  # several samples share a row ...
    assert bool((packed.seg < 0).any())  # ... and there is padding to mask
    with torch.no_grad():
        out = unpack(packed, model(packed, t), model.cfg.patch)
        for i in range(len(shapes)):
            alone = model.forward_latents([lat[i]], t[i : i + 1], txt[i][None], msk[i][None])[0]
            assert torch.isfinite(alone).all()
            assert (out[i] - alone).abs().max() < 1e-5, f"sample {i} sees other samples"


@pytest.mark.parametrize("backend", ["varlen", "flex", "dense"])
def test_no_leakage_between_packed_samples(backend, monkeypatch):
    """Changing sample B's latent, time or text changes nothing of sample A's output in the same row."""
    monkeypatch.setattr(DiT, "attention", backend)
    model = _random_model(2)
    shapes = [(2, 4, 4), (2, 4, 4), (1, 2, 4)]  # two of one length (one varlen group) + another
    lat, txt, msk = _samples(shapes, [3, 5, 2])
    t = torch.tensor([100.0, 600.0, 300.0])
    with torch.no_grad():
        base = model.forward_latents(lat, t, txt, msk, max_tokens=64)
        lat2, txt2 = [x.clone() for x in lat], [x.clone() for x in txt]
        lat2[1], txt2[1] = torch.randn(4, 2, 4, 4) * 3, torch.randn(6, 16)
        other = model.forward_latents(lat2, torch.tensor([100.0, 50.0, 300.0]), txt2, msk, max_tokens=64)
    packed = pack(lat, txt, msk, model.cfg.patch, max_tokens=64)
    assert packed.tokens.shape[0] == 1  # all three share one row
    assert (base[1] - other[1]).abs().max() > 1e-2  # B itself changed ...
    for i in (0, 2):  # ... A and C did not, bit for bit up to float rounding
        assert (base[i] - other[i]).abs().max() < 1e-6


def test_text_conditioning_reaches_the_output_only_through_valid_tokens():
    model = _random_model(1)
    lat, txt, msk = _samples([(2, 4, 4)], [3])
    t = torch.tensor([400.0])
    with torch.no_grad():
        base = model.forward_latents(lat, t, txt[0][None], msk[0][None])[0]
        junk = txt[0].clone()
        junk[3:] = 100.0  # masked positions: must not matter
        same = model.forward_latents(lat, t, junk[None], msk[0][None])[0]
        other = model.forward_latents(lat, t, torch.randn(1, 6, 16), msk[0][None])[0]
        dropped = model.forward_latents(lat, t, txt[0][None], torch.zeros(1, 6, dtype=torch.bool))[0]
    assert torch.allclose(base, same, atol=1e-6)
    assert (base - other).abs().max() > 1e-3
    assert torch.isfinite(dropped).all() and (base - dropped).abs().max() > 1e-3


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)

    def score(pq, pk):
        cq, sq = rope_angles(torch.tensor([[pq]]), 16, 10000.0)
        ck, sk = rope_angles(torch.tensor([[pk]]), 16, 10000.0)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())

    assert score([1, 2, 3], [0, 0, 0]) == pytest.approx(score([5, 9, 4], [4, 7, 1]), abs=1e-5)
    assert score([1, 2, 3], [0, 0, 0]) != pytest.approx(score([1, 3, 2], [0, 0, 0]), abs=1e-3)


def test_packing_beats_padding_on_mixed_buckets():
    shapes = [(2, 4, 4), (1, 6, 4), (3, 2, 2), (1, 2, 4), (2, 2, 6), (4, 4, 4)] * 6
    lat, txt, msk = _samples(shapes, [3] * len(shapes))
    packed = pack(lat, txt, msk, (1, 2, 2), max_tokens=64)
    lengths = [n for _, _, n in packed.places]
    assert sorted(x for row in plan_rows(lengths, 64) for x in row) == list(range(len(shapes)))
    assert packed.efficiency >= 0.95 > padding_efficiency(lengths)
    with pytest.raises(ValueError, match="raise max_tokens"):
        plan_rows([10, 70], 64)


def test_objectives_invert_with_oracle_predictions():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 2, 4, 4, generator=g), torch.randn(2, 4, 2, 4, 4, generator=g)
    # rectified flow: the exact velocity carries noise back to data in a single Euler step
    x_t, v, t = D.training_inputs("rflow", x0, eps, torch.tensor([1.0, 1.0]))
    assert torch.allclose(D.rf_step(x_t, v, 1.0, 0.0), x0, atol=1e-5)
    assert torch.equal(t, torch.tensor([1000.0, 1000.0]))
    # DDPM: the exact eps gives x0 back through a DDIM step to alpha-bar 1
    x_t, target, t = D.training_inputs("ddpm", x0, eps, torch.tensor([0.3, 0.3]))
    ab = float(D.ddpm_alphas_cumprod()[int(t[0])])
    assert torch.equal(target, eps)
    assert torch.allclose(D.ddim_step(x_t[0], eps[0], ab, 1.0), x0[0], atol=1e-4)
    mask = torch.ones(1000, 4, dtype=torch.bool)
    kept = D.drop_captions(mask, 0.25, torch.Generator().manual_seed(0)).any(-1).float().mean()
    assert 0.7 < float(kept) < 0.8


@pytest.mark.parametrize("objective", ["rflow", "ddpm"])
@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_sampler_loops_reach_the_data_with_an_oracle(objective, strength, monkeypatch):
    """With the exact prediction for a known x0, the full sampler loop (time grid, DDIM steps,
    SDEdit start) must land on x0: checks the samplers independently of training."""
    import latents.dit.sample as S

    x0 = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ab = D.ddpm_alphas_cumprod()

    def oracle(model, x, t, *args):
        if objective == "ddpm":
            return (x - ab[int(t)].sqrt() * x0) / (1 - ab[int(t)]).sqrt()
        return (x - x0) / (t / D.DDPM_STEPS)

    monkeypatch.setattr(S, "predict", oracle)
    model = torch.nn.Linear(1, 1)  # only its device is read
    init = torch.randn(1, 4, 2, 4, 4) if strength < 1 else None
    out = S.sample(
        model,
        torch.zeros(1, 2, 3),
        torch.ones(1, 2, dtype=torch.bool),
        (4, 2, 4, 4),
        steps=7,
        objective=objective,
        init=init,
        strength=strength,
    )
    assert (out - x0).abs().max() < 1e-4


@pytest.mark.gpu
def test_gpu_bf16_packed_forward_and_train_step(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from latents.dit.synthetic import synthetic_samples
    from latents.dit.train import TrainConfig, train

    model = _random_model().cuda()
    lat, txt, msk = _samples([(2, 4, 4), (1, 6, 4), (3, 2, 2)], [3, 6, 0])
    packed = pack(lat, txt, msk, model.cfg.patch, max_tokens=24).to("cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out = unpack(
            packed, model(packed, torch.tensor([10.0, 500.0, 990.0], device="cuda")), model.cfg.patch
        )
    cpu = _random_model().eval()
    with torch.no_grad():
        ref = cpu.forward_latents([lat[0]], torch.tensor([10.0]), txt[0][None], msk[0][None])[0]
    assert (out[0].float().cpu() - ref).abs().max() < 0.1  # bf16 tolerance
    summary = train(
        TrainConfig(steps=5, batch_size=4, ckpt_every=5), synthetic_samples(8), tmp_path, device="cuda"
    )
    assert summary["step"] == 5 and summary["loss"] == summary["loss"]  # finite, not NaN


def test_every_parameter_gets_a_gradient_when_all_captions_are_dropped():
    """DDP all-reduces every parameter's gradient: a batch without text must still give one (zero)."""
    model = _random_model(3).train()
    lat, txt, msk = _samples([(2, 4, 4), (1, 2, 4)], [0, 0])
    out = model.forward_latents(lat, torch.tensor([10.0, 700.0]), txt, msk, max_tokens=64)
    sum(o.sum() for o in out).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_size_conditioning_reaches_each_packed_sample_by_its_own_grid():
    import dataclasses

    torch.manual_seed(4)
    model = DiT(dataclasses.replace(PRESETS["tiny"].sized(4, 16), size_cond=True))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    model.eval()
    lat, txt, msk = _samples([(2, 4, 4), (1, 2, 6), (3, 2, 2)], [3, 4, 2])
    t = torch.tensor([100.0, 400.0, 800.0])
    with torch.no_grad():
        packed = model.forward_latents(lat, t, txt, msk, max_tokens=64)
        alone = [
            model.forward_latents([lat[i]], t[i : i + 1], txt[i][None], msk[i][None])[0] for i in range(3)
        ]
        model.size_embed[-1].weight.zero_()
        model.size_embed[-1].bias.zero_()
        no_size = model.forward_latents([lat[0]], t[:1], txt[0][None], msk[0][None])[0]
    for i in range(3):
        assert (packed[i] - alone[i]).abs().max() < 1e-5  # each sample gets its own size
    assert (alone[0] - no_size).abs().max() > 1e-2  # and the size changes the output
    grids = model.size_features([(4, 2, 4, 4), (4, 2, 4, 8)], torch.device("cpu"))
    assert (grids[0] - grids[1]).abs().max() > 0.1  # a crop and a whole clip are told apart
