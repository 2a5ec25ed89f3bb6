"""The `default` preset end to end with real-shape models (real widths, reduced depth, random weights).

split -> score -> caption -> encode -> train -> sample on one short real clip, through the same
stage objects and job functions the Ray jobs use, with the models of tests/real_shapes.py loaded
by the project's loaders. Exercises what the tiny smoke models cannot: the real buckets, frame
rule, VAE compression and normalisation constants, text width, dtypes and DiT token counts.
Only depth and weight values differ from a real run (and the clip-length cap, see MAX_FRAMES).
Run only this: `pytest -m real_shapes`.
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner import stage as caption_stage
from curate import schema as S
from curate.decisions import filters
from curate.io.storage import config_hash
from curate.scores import score, score_frames
from curate.shots.split import split_video
from curate.video.decode import decode_clip
from curate.video.mp4 import write_video
from curate.video.probe import probe
from jobs import encode as encode_job
from jobs import sample as sample_job
from jobs import train as train_job
from latents import encode as E
from latents.buckets import nearest_bucket, valid_frame_count
from latents.dit import model as dit_model
from latents.dit.packing import num_tokens
from latents.models_info import vae_and_text_info
from latents.shards import read_manifest
from tests import real_shapes as R

pytestmark = [pytest.mark.real_shapes, pytest.mark.slow]

SOURCE = "bigbuckbunny.mp4"  # 1280x720, 25 fps, one 5.3 s shot
CLIP_SECONDS = 2.2  # just above SplitConfig.min_seconds (2 s), so split keeps one clip
# important: the full-width Wan VAE costs minutes per frame chunk at 848x480 on 2 CPU cores, so the
# clip is capped at 9 frames (the 4k+1 rule's third value: 3 latent frames). A real run keeps 81.
MAX_FRAMES = 9


def _rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _lap(times: dict[str, float], step: str, t0: float) -> None:
    times[step] = time.perf_counter() - t0
    cpu = os.times()
    print(
        f"[real-shapes] {step}: {times[step]:.1f} s wall, process CPU so far {cpu.user + cpu.system:.0f} s, "
        f"peak RSS {_rss_peak_mb():.0f} MB",
        flush=True,
    )


def _cut(src: Path, dst: Path, seconds: float) -> Path:
    """The first `seconds` of a real video, re-encoded (H.264, its own size and rate)."""
    fps = probe(src)["fps_avg"]
    clip = decode_clip(src, 0.0, seconds, offsets=np.arange(round(seconds * fps)))
    write_video(dst, list(clip.frames), fps=round(fps))
    return dst


def test_default_chain_with_real_shapes(
    real_videos: Path, real_shape_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    times: dict[str, float] = {}
    t = time.perf_counter()
    model_dirs = real_shape_models
    preset = R.real_shape_preset(model_dirs, max_frames=MAX_FRAMES)
    monkeypatch.setitem(dit_model.PRESETS, R.DIT_KEY, replace(dit_model.PRESETS["B"], depth=1))
    src = _cut(real_videos / SOURCE, tmp_path / "src.mp4", CLIP_SECONDS)

    # --- split -------------------------------------------------------------------------------
    video, clips = split_video(src, preset.split)
    assert video[S.STATUS] == S.STATUS_OK and len(clips) == 1, (video, clips)
    table = S.table_from_rows(clips)
    row = table.to_pylist()[0]
    assert (row[S.WIDTH], row[S.HEIGHT]) == (1280, 720)
    assert row[S.END_PTS] - row[S.START_PTS] >= preset.split.min_seconds
    _lap(times, "split", t)

    # --- score (CPU step, model actor, run-level cascade) --------------------------------------
    t = time.perf_counter()
    prepared = score_frames.prepare_batch(table, preset.score)
    assert prepared.column(score_frames.FRAMES)[0].is_valid, "the cheap gate kept the clip from the model"
    shape = prepared.column(score_frames.FRAMES_SHAPE)[0].as_py()
    assert shape == [preset.score.clip_frames, 224, 224, 3]  # ViT-L/14 input side
    clip_stage = score.ClipScoreStage(preset.score)
    clip_stage.load()
    assert clip_stage.pre["size"] == preset.score.image_size == 224
    openai = __import__("open_clip").get_pretrained_cfg("ViT-L-14", "openai")
    assert np.allclose(clip_stage.mean.cpu().numpy(), openai["mean"])
    assert np.allclose(clip_stage.std.cpu().numpy(), openai["std"])
    assert clip_stage.model.visual.transformer.width == 1024
    scored = clip_stage(prepared)
    del clip_stage  # each stage's models go before the next stage loads (peak memory)
    gc.collect()
    emb = scored.column(S.CLIP_EMBEDDING)[0].as_py()
    assert len(emb) == 768 and abs(float(np.linalg.norm(np.float32(emb))) - 1.0) < 1e-2
    assert np.isfinite(scored.column(S.AESTHETIC)[0].as_py())
    decided, funnel = filters.apply_cascade(scored, preset.score.filters)
    assert funnel and decided.column(S.KEPT)[0].is_valid
    # random weights make the aesthetic decision meaningless: the chain goes on with the clip kept
    decided = S.set_columns(decided, {S.KEPT: [True], S.DROP_REASON: [None]})
    _lap(times, "score", t)

    # --- caption -------------------------------------------------------------------------------
    t = time.perf_counter()
    cap_stage = caption_stage.CaptionStage(preset.caption)
    cap_stage.load()
    vlm = cap_stage.vlm
    assert vlm.family == "qwen2_5_vl"
    assert vlm.model.config.text_config.hidden_size == 3584
    assert vlm.model.config.vision_config.hidden_size == 1280
    assert vlm.model.get_input_embeddings().weight.shape == (152064, 3584)
    assert vlm.model.dtype == torch.float32  # dtype "auto" on CPU (bf16 on GPU)
    captioned = cap_stage(caption_stage.attach_frames(decided, preset.caption))
    del cap_stage, vlm
    gc.collect()
    cap = captioned.to_pylist()[0]
    assert cap[S.STATUS] == S.STATUS_OK, cap[S.ERROR]
    assert cap[S.CAPTION] and cap[S.CAPTION_MODEL] == preset.caption.model
    assert cap[S.CAPTION_CLIP_SCORE] is not None  # the score stage's CLIP, from the weights folder
    _lap(times, "caption", t)

    # --- encode (CPU step, VAE + text actor, shards + manifest as jobs.encode writes them) -------
    t = time.perf_counter()
    enc = preset.encode
    bucket = nearest_bucket(1280, 720, enc.buckets)
    assert (bucket.width, bucket.height) == (848, 480)  # 16:9 bucket of 480*832 px, sides multiple of 16
    frames = valid_frame_count(min(MAX_FRAMES, int(CLIP_SECONDS * enc.target_fps)), enc.frame_k)
    pixels = E.prepare_batch(captioned, enc)
    px = pixels.to_pylist()[0]
    assert (px[S.PIXEL_FRAMES], px[S.PIXEL_HEIGHT], px[S.PIXEL_WIDTH]) == (frames, 480, 848)
    assert px[S.SAMPLE_FPS] == enc.target_fps
    stage = E.EncodeStage(enc)
    stage.load()
    info = stage.vae.info
    vae_ref = json.loads(R.WAN_VAE.read_text())
    assert (info.latent_channels, info.spatial_compression, info.temporal_compression) == (16, 8, 4)
    assert info.latents_mean == vae_ref["latents_mean"] and info.latents_std == vae_ref["latents_std"]
    assert stage.vae.dtype == getattr(torch, enc.vae.dtype)
    assert stage.text.info.dim == 4096 and stage.text.info.max_length == 512
    assert stage.text.model.dtype == getattr(torch, enc.text.dtype)
    encoded = stage(pixels)
    del stage
    gc.collect()
    out = tmp_path / "latents"
    # the writer task's batch (shards, index part, marker), then the driver's manifest merge
    encode_job.write_batch(encoded, str(out), config_hash(enc))
    meta = E.manifest_meta(enc, *vae_and_text_info(enc))
    manifest = encode_job.merge_shards(
        str(out),
        encode_job.finished_batches(str(out), config_hash(enc)),
        meta,
        {"input_rows": 1, "eligible": 1, "errors": 0},
    )
    lat = encoded.to_pylist()[0]
    assert lat[S.STATUS] == S.STATUS_OK, lat[S.ERROR]
    latent_shape = [16, (frames - 1) // 4 + 1, 480 // 8, 848 // 8]
    assert lat[S.LATENT_SHAPE] == latent_shape
    assert lat[S.LATENT_DTYPE] == enc.latent_dtype
    assert lat[S.TEXT_EMBEDDING_SHAPE][1] == 4096 and 1 <= lat[S.TEXT_EMBEDDING_SHAPE][0] <= 512
    assert lat[S.TEXT_EMBEDDING_DTYPE] == enc.text_dtype
    on_disk = read_manifest(out)
    assert on_disk["counts"]["rows"] == 1 and manifest["vae"]["latents_mean"] == vae_ref["latents_mean"]
    assert on_disk["text_encoder"]["dim"] == 4096
    _lap(times, "encode", t)

    # --- train (a few steps on the shards) -----------------------------------------------------
    t = time.perf_counter()
    tcfg = preset.train
    tokens = num_tokens(tuple(latent_shape), tcfg.patch)
    assert tokens == 3 * 30 * 53
    # the default's token budget scaled to this one clip: rows of one sample, two micro-batches
    # accumulated per step (the default's 65,536-slot rows and 2^19-token steps, ~110 samples
    # at real width, take tens of minutes a step on a CPU)
    assert tcfg.step_tokens and tcfg.micro_tokens and tcfg.checkpointing
    tcfg = replace(tcfg, max_tokens=tokens, micro_tokens=tokens, step_tokens=2 * tokens)
    run = tmp_path / "run"
    summary = train_job.main(tcfg, str(out), run, workers=1, gpu=False)
    assert summary["step"] == tcfg.steps and np.isfinite(summary["loss"])
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert ckpts and (ckpts[-1] / "ema.safetensors").is_file()
    run_cfg = json.loads((run / "config.json").read_text())
    assert run_cfg["model"]["in_channels"] == 16 and run_cfg["model"]["text_dim"] == 4096
    assert run_cfg["model"]["hidden"] == 768
    _lap(times, "train", t)

    # --- sample ------------------------------------------------------------------------------
    t = time.perf_counter()
    vae_cfg, text_cfg, _ = sample_job.codec_configs(run_cfg, None)
    if vae_cfg.source != enc.vae.source or text_cfg.source != enc.text.source:
        # the sampler maps (kind, smoke) to a preset instead of loading the manifest's VAE and text
        # encoder (issue 15, item 1): give it the manifest's loaders until that fix lands
        from latents.text import text_config_from_manifest
        from latents.vae import vae_config_from_manifest

        fps = float(on_disk["encode"]["target_fps"])
        monkeypatch.setattr(
            sample_job,
            "codec_configs",
            lambda rc, p: (
                vae_config_from_manifest(rc["manifest"]),
                text_config_from_manifest(rc["manifest"]),
                fps,
            ),
        )
    mp4 = tmp_path / "sample.mp4"
    result = sample_job.main(sample_job.SampleJob(run=str(run), prompt=cap[S.CAPTION], out=str(mp4), steps=2))
    assert result["latent_shape"] == latent_shape
    back = probe(mp4)
    assert back[S.STATUS] == S.STATUS_OK
    assert (back[S.WIDTH], back[S.HEIGHT]) == (848, 480)
    decoded = decode_clip(mp4, 0.0, 60.0, offsets=np.arange(10 * frames))
    assert decoded.frames.shape == (frames, 480, 848, 3)
    _lap(times, "sample", t)
    print(
        f"[real-shapes] seconds per step {json.dumps({k: round(v, 1) for k, v in times.items()})}, "
        f"peak RSS {_rss_peak_mb():.0f} MB"
    )
