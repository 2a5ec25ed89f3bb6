"""Model inputs as the upstream references feed them (the `default` preset's models).

Each test pins one row of the README table "Weights and model inputs": Qwen2.5-VL video frames
sized by qwen-vl-utils' video limits, LLaVA-OneVision frames never resampled, Wan 2.1's
prompt_clean before UMT5, the Wan VAE untiled (as diffusers' Wan pipelines encode), and the
display size of square-pixel video kept as coded. Tiny random models, CPU, seconds.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from captioner import prompts
from captioner.vlm import Request, build_smoke_vlm, load_vlm
from curate.video.decode import Geometry
from curate.video.probe import probe
from latents.text import TEXT_SMOKE, load_text_encoder, prompt_clean
from latents.vae import WAN_DEFAULT, build_smoke_vae, load_vae

REAL_QWEN = Path(__file__).resolve().parent / "real_configs" / "qwen2_5_vl_7b_instruct"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUBELET_CACHE", str(tmp_path / "cache"))


# --- reference: qwen-vl-utils vision_process.py (constants and formulas, re-implemented here) -----
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128 * 28 * 28, 768 * 28 * 28
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)
FRAME_FACTOR = 2


def _ref_smart_resize(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def _ref_video_tokens(nframes: int, h: int, w: int) -> int:
    """Visual tokens qwen-vl-utils' fetch_video gives a (nframes, h, w) video (merge 2x2, 2 frames/patch)."""
    max_pixels = max(
        min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / nframes * FRAME_FACTOR), int(VIDEO_MIN_PIXELS * 1.05)
    )
    rh, rw = _ref_smart_resize(h, w, 28, VIDEO_MIN_PIXELS, max_pixels)
    return (nframes // 2) * (rh // 28) * (rw // 28)


def _as_hub_repo(d: Path) -> Path:
    """A smoke Qwen2.5-VL folder re-laid as the real repo is: preprocessor_config.json (the image
    limits, the repo's own file) and no video processor config."""
    (d / "processor_config.json").unlink()
    shutil.copy(REAL_QWEN / "preprocessor_config.json", d / "preprocessor_config.json")
    return d


@pytest.mark.parametrize(("frames", "h", "w"), [(2, 144, 176), (2, 144, 338), (2, 720, 1280), (6, 360, 640)])
def test_qwen_video_frames_get_qwen_vl_utils_video_limits(tmp_path, frames, h, w):
    vlm = load_vlm(str(_as_hub_repo(build_smoke_vlm(tmp_path / "vlm"))), device="cpu")
    size = vlm.processor.video_processor.size
    assert (size.shortest_edge, size.longest_edge) == (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
    req = Request(prompts.dense_messages(prompts.LATEST), np.zeros((frames, h, w, 3), np.uint8), 2.0)
    t, gh, gw = vlm._inputs([req])["video_grid_thw"][0].tolist()
    assert t * gh * gw // 4 == _ref_video_tokens(frames, h, w)  # e.g. 143 tokens for 2 frames of 144x176


def test_a_checkpoints_own_video_config_wins(tmp_path):
    d = build_smoke_vlm(tmp_path / "vlm")  # saves its video processor (28*28*4 .. 28*28*16) itself
    size = load_vlm(str(d), device="cpu").processor.video_processor.size
    assert (size.shortest_edge, size.longest_edge) == (28 * 28 * 4, 28 * 28 * 16)


def test_llava_onevision_frames_are_never_resampled(tmp_path):
    d = build_smoke_vlm(tmp_path / "llava", "llava_onevision")
    cfg = json.loads((d / "processor_config.json").read_text())
    cfg["video_processor"].update(do_sample_frames=True, num_frames=2)  # a repo config that samples
    (d / "processor_config.json").write_text(json.dumps(cfg))
    vlm = load_vlm(str(d), device="cpu")
    req = Request(prompts.dense_messages(prompts.LATEST), np.zeros((6, 64, 96, 3), np.uint8), 2.0)
    assert vlm._inputs([req])["pixel_values_videos"].shape[1] == 6  # the 6 frames tubelet sampled


def test_wan_prompt_clean_before_umt5(tmp_path):
    assert prompt_clean("  A  cat &amp;amp; dog\n\tsit ") == "A cat & dog sit"
    assert (
        prompt_clean("The Mona Lisa doesn\u00c3\u00a2\u00e2\u201a\u00ac\u00e2\u201e\u00a2t smile")
        == "The Mona Lisa doesn't smile"
    )  # ftfy.fix_text: mojibake repaired
    enc = load_text_encoder(replace(TEXT_SMOKE, source=str(tmp_path / "umt5"), device="cpu"))
    dirty, clean = enc.encode(["a  dog &amp;amp; a\ncat "]), enc.encode(["a dog & a cat"])
    assert torch.equal(dirty[1], clean[1]) and torch.equal(dirty[0], clean[0])


def test_wan_vae_encodes_untiled_as_the_reference_pipeline(tmp_path):
    from diffusers import AutoencoderKLWan

    src = build_smoke_vae(tmp_path / "wan", "wan")
    vae = load_vae(replace(WAN_DEFAULT, source=str(src), subfolder="", device="cpu"))  # the preset's tiling
    assert not vae.model.use_tiling
    x = torch.rand(1, 3, 5, 288, 288, generator=torch.Generator().manual_seed(0)) * 2 - 1  # > one 256-px tile
    ref = AutoencoderKLWan.from_pretrained(
        src, torch_dtype=torch.float32
    ).eval()  # as pipeline_wan.py loads it
    with torch.inference_mode():
        z = ref.encode(x).latent_dist.mode()
    assert torch.allclose(vae.encode(x), vae.normalize(z), atol=1e-5)


def test_square_pixel_display_size_keeps_an_odd_width(tmp_path):
    path = tmp_path / "odd.mp4"
    with av.open(str(path), "w") as c:  # 637x357, square pixels (yuv444p: odd sizes allowed)
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 637, 357, "yuv444p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((357, 637, 3), 20 * i, np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode())
    row = probe(path)
    assert (row["width"], row["height"]) == (637, 357)
    assert Geometry(637, 357, Fraction(0), 0).display_size == (637, 357)  # SAR unknown: square
    assert Geometry(720, 480, Fraction(32, 27), 0).display_size == (854, 480)  # 853.3 -> even, as ffmpeg
    assert Geometry(720, 480, Fraction(32, 27), 90).display_size == (480, 854)
