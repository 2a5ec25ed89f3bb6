"""The VAEs run as diffusers' reference pipelines run them (dtype, LTX decode timestep)."""

from __future__ import annotations

import pytest
import torch

from jobs.runtime.presets import DEFAULT
from latents import encode as E
from latents.vae import LTX_DECODE_TIMESTEP, VAEConfig, load_vae


def test_wan_vae_loads_in_float32_like_the_diffusers_pipeline():
    # pipeline_wan.py: AutoencoderKLWan.from_pretrained(..., torch_dtype=torch.float32); the DiT alone is bf16
    wan = [c.vae for c in (DEFAULT.encode, E.DEFAULT) if c.vae.kind == "wan"]
    assert wan and all(c.dtype == "float32" for c in wan)


@pytest.fixture(scope="module")
def ltx_timestep_vae(tmp_path_factory):
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ltx-t") / "vae"
    # diffusers' own tiny LTX test config, with the 0.9.1+ timestep-conditioned decoder
    model = AutoencoderKLLTXVideo(
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        latent_channels=8,
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        patch_size=1,
        timestep_conditioning=True,
    )
    model.save_pretrained(d)
    return load_vae(
        VAEConfig(kind="ltx", source=str(d), subfolder="", tiling=False, slicing=False, device="cpu")
    )


def test_ltx_decode_uses_the_pipeline_decode_timestep(ltx_timestep_vae):
    vae = ltx_timestep_vae
    assert vae.model.config.timestep_conditioning
    z = torch.randn(1, 8, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    got = vae.decode(z)
    raw = vae.denormalize(z)
    with torch.inference_mode():
        # LTXPipeline.__call__ default: decode_timestep=0.0 (noise scale = timestep: no noise mixed in)
        ref = vae.model.decode(raw, torch.full((1,), 0.0)).sample.clamp(-1, 1)
        other = vae.model.decode(raw, torch.full((1,), 0.05)).sample.clamp(-1, 1)
    assert LTX_DECODE_TIMESTEP == 0.0
    assert not torch.allclose(ref, other, atol=1e-4)  # the timestep matters to this decoder
    assert torch.allclose(got, ref, atol=1e-5)
