"""latents: bytes<->tensor, buckets, frame rule, the tiny Wan/LTX VAEs and the text encoder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from curate.errors import UsageError
from latents.buckets import Bucket, crop_box, make_buckets, nearest_bucket, plan_frames, resize_to_bucket
from latents.shards import ShardError, bytes_to_tensor, tensor_to_bytes
from latents.text import TextConfig, load_text_encoder, pad_embedding
from latents.vae import VAEConfig, build_smoke_vae, load_vae

torch.set_num_threads(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bytes_roundtrip_is_bit_exact(dtype):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(3, 2, 5, 7, generator=g) * 100).to(dtype)
    t[0, 0, 0, :4] = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0]).to(dtype)
    t[0, 0, 1, 0] = torch.finfo(dtype).tiny  # smallest normal survives
    buf, shape, name = tensor_to_bytes(t)
    back = bytes_to_tensor(buf, shape, name)
    assert back.dtype == dtype and list(back.shape) == [3, 2, 5, 7]
    # compare bit patterns: catches -0.0 vs 0.0 and any rounding
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(back.view(bits), t.view(bits))


def test_bytes_of_wrong_length_raise_not_zeros():
    buf, shape, name = tensor_to_bytes(torch.ones(4, 4, dtype=torch.float16))
    with pytest.raises(ShardError, match="do not match shape"):
        bytes_to_tensor(buf[:-2], shape, name)


def test_buckets_have_about_equal_area_and_distinct_aspects():
    buckets = make_buckets(480 * 832, (16 / 9, 4 / 3, 1.0, 3 / 4, 9 / 16), 16)
    assert len(buckets) == 5
    areas = [b.width * b.height for b in buckets]
    assert max(areas) / min(areas) < 1.1
    assert all(b.width % 16 == 0 and b.height % 16 == 0 for b in buckets)
    for b, want in zip(buckets, (9 / 16, 3 / 4, 1.0, 4 / 3, 16 / 9)):  # sorted by aspect
        assert abs(b.aspect / want - 1) < 0.05


@pytest.mark.parametrize(
    ("size", "want_aspect"),
    [
        ((1920, 1080), 16 / 9),
        ((1280, 720), 16 / 9),
        ((640, 480), 4 / 3),
        ((512, 512), 1.0),
        ((480, 640), 3 / 4),
        ((1080, 1920), 9 / 16),
        ((3000, 1000), 16 / 9),
        ((720, 1000), 3 / 4),
    ],
)
def test_each_aspect_lands_in_its_bucket(size, want_aspect):
    buckets = make_buckets(256 * 256, (16 / 9, 4 / 3, 1.0, 3 / 4, 9 / 16), 16)
    b = nearest_bucket(*size, buckets)
    closest = min(buckets, key=lambda x: abs(x.aspect - want_aspect))
    assert b == closest


def test_crop_is_minimal_and_never_letterboxes():
    b = Bucket(64, 64)
    assert crop_box(160, 90, b) == (35, 0, 90, 90)  # trims only the sides
    assert crop_box(90, 160, b) == (0, 35, 90, 90)
    assert crop_box(64, 64, b) == (0, 0, 64, 64)
    frames = np.zeros((2, 90, 160, 3), np.uint8)
    frames[:, :, 35:125] = 200  # the centred square is bright, the trimmed sides are black
    out = resize_to_bucket(frames, b)
    assert out.shape == (2, 64, 64, 3) and out.min() == 200  # no black bars survive


@pytest.mark.parametrize("k", [4, 8])
def test_frame_plan_follows_the_vae_rule_and_target_fps(k):
    plan = plan_frames(1.0, 4.0, clip_fps=30.0, target_fps=16.0, max_frames=200, k=k)
    assert plan.sample_fps == 16.0
    assert (plan.num_frames - 1) % k == 0 and plan.num_frames <= 48 < plan.num_frames + k
    assert np.all(np.diff(plan.times) > 0) and plan.times[0] >= 1.0 and plan.times[-1] < 4.0
    capped = plan_frames(0.0, 60.0, 30.0, 16.0, max_frames=81, k=k)
    assert capped.num_frames == 81  # 81 = 4*20 + 1 = 8*10 + 1
    # a 12 fps source is not upsampled (no made-up frames)
    assert plan_frames(0.0, 2.0, 12.0, 16.0, 200, k).sample_fps == 12.0
    with pytest.raises(ValueError, match="need at least"):
        plan_frames(0.0, 0.2, 30.0, 16.0, 200, k, min_frames=9)


@pytest.fixture(scope="module")
def smoke_vaes(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("vae")
    return {
        kind: load_vae(
            VAEConfig(
                kind=kind, source=str(build_smoke_vae(d / kind, kind)), subfolder="", tiling=False, smoke=True
            )
        )
        for kind in ("wan", "ltx")
    }


@pytest.mark.parametrize(
    ("kind", "frames", "hw"),
    [("wan", 9, (48, 80)), ("wan", 17, (64, 64)), ("ltx", 9, (64, 96)), ("ltx", 17, (64, 64))],
)
def test_latent_shape_follows_the_vae_rule(smoke_vaes, kind, frames, hw):
    vae = smoke_vaes[kind]
    info = vae.info
    k, s = (4, 8) if kind == "wan" else (8, 32)
    assert (info.temporal_compression, info.spatial_compression, info.frame_rule) == (k, s, f"{k}k+1")
    x = torch.rand(2, 3, frames, *hw) * 2 - 1
    z = vae.encode(x)
    assert tuple(z.shape) == (2, *info.latent_shape(frames, *hw))
    assert z.shape[2] == (frames - 1) // k + 1 and z.shape[3] == hw[0] // s
    y = vae.decode(z)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1


def test_normalisation_uses_the_recorded_constants(smoke_vaes):
    for vae in smoke_vaes.values():
        info = vae.info
        assert len(set(info.latents_std)) > 1  # the smoke models carry non-trivial constants
        z = torch.randn(1, info.latent_channels, 2, 2, 2)
        assert torch.allclose(vae.denormalize(vae.normalize(z)), z, atol=1e-5)
        c = 1
        want = (z[0, c] - info.latents_mean[c]) * info.scaling_factor / info.latents_std[c]
        assert torch.allclose(vae.normalize(z)[0, c], want, atol=1e-6)


def test_frames_off_the_rule_are_refused_with_the_fix(smoke_vaes):
    with pytest.raises(UsageError, match=r"4k\+1"):
        smoke_vaes["wan"].encode(torch.zeros(1, 3, 8, 64, 64))


def test_missing_weights_name_the_download(tmp_path):
    with pytest.raises(UsageError, match="`hf download "):
        load_vae(VAEConfig(kind="wan", source=str(tmp_path / "nothing-here"), subfolder="vae"))


def test_smoke_models_load_through_the_same_loader_from_a_pipeline_folder(tmp_path):
    build_smoke_vae(tmp_path / "pipe" / "vae", "ltx")
    vae = load_vae(VAEConfig(kind="ltx", source=str(tmp_path / "pipe"), subfolder="vae", tiling=True))
    assert vae.info.latent_channels == 8 and vae.info.scaling_factor == 0.5


def test_text_encoder_contract(tmp_path):
    te = load_text_encoder(TextConfig(source=str(tmp_path / "te"), max_length=24, smoke=True))
    emb, mask = te.encode(["a red car", "a very long caption " * 10, ""])
    assert emb.shape == (3, 24, te.info.dim) and mask.shape == (3, 24) and mask.dtype == torch.bool
    n = mask.sum(1).tolist()
    assert n[0] < n[1] == 24 and n[2] >= 1  # truncation; even an empty caption keeps its end token
    assert emb[0, n[0] :].abs().sum() == 0  # padding is exactly zero
    trimmed = te.encode_trimmed(["a red car"])[0]
    padded, m = pad_embedding(trimmed, 24)
    assert trimmed.shape[0] == n[0] and torch.allclose(padded, emb[0]) and torch.equal(m, mask[0])
    assert not math.isnan(float(emb.sum()))


def test_smoke_build_is_deterministic(tmp_path):
    a = load_vae(VAEConfig(kind="wan", source=str(tmp_path / "a"), subfolder="", smoke=True, tiling=False))
    b = load_vae(VAEConfig(kind="wan", source=str(tmp_path / "b"), subfolder="", smoke=True, tiling=False))
    x = torch.rand(1, 3, 5, 32, 32) * 2 - 1
    assert torch.equal(a.encode(x), b.encode(x))
    assert Path(tmp_path / "a" / "SMOKE.json").is_file()


@pytest.mark.parametrize("kind", ["wan", "ltx"])
def test_tiled_encode_gives_the_untiled_latent_shape(tmp_path, kind):
    src = str(build_smoke_vae(tmp_path / kind, kind))
    plain = load_vae(VAEConfig(kind=kind, source=src, subfolder="", tiling=False, smoke=True))
    tile = 32 if kind == "wan" else 128
    tiled = load_vae(VAEConfig(kind=kind, source=src, subfolder="", tiling=True, tile_px=tile, smoke=True))
    hw = (64, 96) if kind == "wan" else (192, 256)  # several tiles in each direction
    x = torch.rand(1, 3, 9, *hw) * 2 - 1
    a, b = plain.encode(x), tiled.encode(x)
    assert a.shape == b.shape
    assert not torch.equal(a, b)  # the tiled path really ran (blended seams differ slightly)
    assert torch.isfinite(b).all()  # (random weights: closeness to the untiled result means little)
