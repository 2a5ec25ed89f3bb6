"""Encode stage: kept, captioned clips -> bucketed pixels -> normalised VAE latents + text embeddings.

Two steps, so a Ray plan can run the CPU part in tasks ahead of the GPU actors:
- `prepare_batch(table, cfg)` (pure, CPU): decode each clip once at the target fps, straight
  to about the bucket's scale, minimal centre crop + resize to its bucket; adds the
  `PIXELS` column (uint8 frames, raw bytes) and fills pixel_frames/height/width and sample_fps.
- `EncodeStage(cfg)(table)` (actor: VAE + text encoder loaded once): fills the latent group
  (latents stored normalised, see latents/vae.py), and for 1 clip in `psnr_every` decodes the
  latent back and records its PSNR against the bucketed source frames in the `ROUNDTRIP_PSNR`
  column (not part of the schema: the shard writer summarises it in the manifest).
Rows that are not status=ok, not kept or not captioned pass through unchanged.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch

from curate import schema as S
from curate.errors import OnError, StageError, one_line
from curate.io.storage import config_hash
from curate.video.decode import ClipFrames, Selection, decode_clip
from latents.buckets import (
    Bucket,
    FramePlan,
    decode_size,
    make_buckets,
    nearest_bucket,
    plan_frames,
    resize_to_bucket,
)
from latents.shards import tensor_to_bytes
from latents.text import TEXT_DEFAULT, TEXT_SMOKE, TextConfig, load_text_encoder
from latents.vae import LTX_DEFAULT, LTX_SMOKE, WAN_DEFAULT, WAN_SMOKE, VAEConfig, load_vae

STAGE = "encode"
# Intermediate columns (between prepare tasks and VAE actors; never written to shards).
PIXELS = "_encode_pixels"  # (F, H, W, 3) uint8 raw bytes; shape in pixel_frames/height/width
# the same frames decoded ahead, before captioning (`with_ahead`): carried past the caption stage
AHEAD_PIXELS = S.AHEAD_PREFIX + "encode_pixels"  # (F, H, W, 3) uint8 raw bytes
AHEAD_SHAPE = S.AHEAD_PREFIX + "encode_shape"  # list<int32> [F, H, W, 3]
AHEAD_FPS = S.AHEAD_PREFIX + "encode_fps"  # f64: the sample fps
AHEAD_ERROR = S.AHEAD_PREFIX + "encode_error"  # str: why preparing the clip failed (then no pixels)
# important: clips per writer batch at most. A writer task holds its whole batch: at the default
# preset's shapes one 81-frame 848x480 clip is a 16x21x60x106 bf16 latent, ~4.3 MB, so 256 clips
# are ~1.1 GB (2048 would be ~8.7 GB); it is also what a kill redoes per writer in flight.
WRITE_ROWS = 256
ROUNDTRIP_PSNR = "_roundtrip_psnr"  # dB, on the sampled clips only

_TEMPORAL = {"wan": 4, "ltx": 8}  # frame rule k (k*m + 1), known without loading weights


@dataclass(frozen=True)
class EncodeConfig:
    vae: VAEConfig = field(default_factory=lambda: WAN_DEFAULT)
    text: TextConfig = field(default_factory=lambda: TEXT_DEFAULT)
    bucket_area: int = 480 * 832
    bucket_aspects: tuple[float, ...] = (16 / 9, 4 / 3, 1.0, 3 / 4, 9 / 16)
    bucket_multiple: int = 16  # sides multiple of this (VAE spatial compression x DiT patch)
    target_fps: float = 16.0
    max_frames: int = 81
    min_frames: int = 5
    latent_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # storage dtype
    text_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    vae_batch: int = 1  # clips of one (frames, bucket) shape per VAE call
    psnr_every: int = 16  # round-trip PSNR on ~1 clip in N (0: never)
    on_error: OnError = "record"

    @property
    def buckets(self) -> tuple[Bucket, ...]:
        return make_buckets(self.bucket_area, self.bucket_aspects, self.bucket_multiple)

    @property
    def frame_k(self) -> int:
        return _TEMPORAL[self.vae.kind]


DEFAULT = EncodeConfig()
LTX = EncodeConfig(
    vae=LTX_DEFAULT, bucket_area=512 * 768, bucket_multiple=32, target_fps=24.0, max_frames=121, min_frames=9
)
SMOKE = EncodeConfig(
    vae=WAN_SMOKE,
    text=TEXT_SMOKE,
    bucket_area=64 * 64,
    bucket_aspects=(16 / 9, 1.0, 9 / 16),
    target_fps=8.0,
    max_frames=9,
    min_frames=5,
    latent_dtype="float16",
    text_dtype="float16",
    vae_batch=2,
    psnr_every=2,
)
SMOKE_LTX = replace(
    SMOKE, vae=LTX_SMOKE, bucket_area=128 * 128, bucket_multiple=32, max_frames=17, min_frames=9
)


def eligible_mask(table: pa.Table) -> list[bool]:
    """Rows this stage encodes: status ok, kept, with a caption."""
    status = table.column(S.STATUS).to_pylist()
    kept = table.column(S.KEPT).to_pylist()
    cap = table.column(S.CAPTION).to_pylist()
    return [s == S.STATUS_OK and bool(k) and c is not None for s, k, c in zip(status, kept, cap)]


@dataclass(frozen=True)
class ClipPlan:
    """What encode takes of one clip: its frame times, its bucket, and the decode selection."""

    frames: FramePlan
    bucket: Bucket
    selection: Selection


def plan_clip(row: dict[str, Any], cfg: EncodeConfig) -> ClipPlan:
    plan = plan_frames(
        row[S.START_PTS],
        row[S.END_PTS],
        row[S.FPS],
        cfg.target_fps,
        cfg.max_frames,
        cfg.frame_k,
        cfg.min_frames,
    )
    bucket = nearest_bucket(row[S.WIDTH], row[S.HEIGHT], cfg.buckets)
    size = decode_size(row[S.WIDTH], row[S.HEIGHT], bucket)
    return ClipPlan(plan, bucket, Selection(times=plan.times, size=size))


def prepare_clip(row: dict[str, Any], cfg: EncodeConfig) -> tuple[np.ndarray, float]:
    """One clip -> ((F, H, W, 3) uint8 frames in its bucket, sample fps). Decodes the span once."""
    cp = plan_clip(row, cfg)
    sel = cp.selection
    clip = decode_clip(row[S.SOURCE_URI], row[S.START_PTS], row[S.END_PTS], times=sel.times, size=sel.size)
    return finish_clip(clip, cp, cfg)


def finish_clip(clip: ClipFrames, cp: ClipPlan, cfg: EncodeConfig) -> tuple[np.ndarray, float]:
    """A decoded selection -> ((F, H, W, 3) uint8 frames in the bucket, sample fps)."""
    plan, bucket = cp.frames, cp.bucket
    n = clip.frames.shape[0]
    if n != plan.num_frames:
        # the container ended early (span end past the last frame): keep what the rule allows
        n = cfg.frame_k * ((n - 1) // cfg.frame_k) + 1 if n else 0
        if n < cfg.min_frames:
            raise StageError(
                STAGE,
                f"decoded {clip.frames.shape[0]} of {plan.num_frames} planned frames; "
                f"need at least {cfg.min_frames}",
            )
    return resize_to_bucket(clip.frames[:n], bucket), plan.sample_fps


def _error_cols(table: pa.Table, errors: dict[int, str]) -> dict[str, list]:
    status = table.column(S.STATUS).to_pylist()
    err = table.column(S.ERROR).to_pylist()
    failed = table.column(S.FAILED_STAGE).to_pylist()
    for i, reason in errors.items():
        status[i], err[i], failed[i] = S.STATUS_ERROR, reason, STAGE
    return {S.STATUS: status, S.ERROR: err, S.FAILED_STAGE: failed}


def _with_column(table: pa.Table, name: str, values: list, typ: pa.DataType) -> pa.Table:
    arr = pa.array(values, type=typ)
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, arr) if i >= 0 else table.append_column(name, arr)


def pixels_column(frames: list[np.ndarray | None]) -> pa.Array:
    """uint8 frame arrays (None: null) as one large_binary column, copied once (no bytes objects
    in between: at real shapes a clip is ~100 MB)."""
    sizes = np.array([0 if f is None else f.nbytes for f in frames], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    data = np.empty(int(offsets[-1]), np.uint8)
    for f, a in zip(frames, offsets[:-1]):
        if f is not None:
            data[a : a + f.nbytes] = f.reshape(-1)
    valid = np.array([f is not None for f in frames])
    mask = pa.array(valid).buffers()[1] if not valid.all() else None
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(frames), [mask, pa.py_buffer(offsets), pa.py_buffer(data)], int((~valid).sum())
    )


def with_ahead(
    table: pa.Table, frames: dict[int, tuple[np.ndarray, float]], errors: dict[int, str]
) -> pa.Table:
    """`table` with encode's frames decoded ahead (jobs.curate: in the caption's decode of the
    clip): (F, H, W, 3) uint8 bytes, their shape and fps, or why preparing failed."""
    n = table.num_rows
    got = [frames.get(i) for i in range(n)]
    cols = {
        AHEAD_PIXELS: pixels_column([g[0] if g else None for g in got]),
        AHEAD_SHAPE: pa.array([list(g[0].shape) if g else None for g in got], pa.list_(pa.int32())),
        AHEAD_FPS: pa.array([g[1] if g else None for g in got], pa.float64()),
        AHEAD_ERROR: pa.array([errors.get(i) for i in range(n)], pa.string()),
    }
    for name, col in cols.items():
        table = table.append_column(name, col)
    return table


def _ahead_of(table: pa.Table) -> Callable[[int], tuple[np.ndarray, float]] | None:
    """Row i's frames decoded ahead (`with_ahead`) as a view of the column's buffer, or None
    when the table has none."""
    if AHEAD_PIXELS not in table.column_names:
        return None
    px = table.column(AHEAD_PIXELS).combine_chunks()
    shape, fps, err = (table.column(c).to_pylist() for c in (AHEAD_SHAPE, AHEAD_FPS, AHEAD_ERROR))
    offsets = np.frombuffer(px.buffers()[1], np.int64, len(px) + 1, px.offset * 8)
    data = np.frombuffer(px.buffers()[2], np.uint8) if px.buffers()[2] is not None else np.empty(0, np.uint8)

    def get(i: int) -> tuple[np.ndarray, float]:
        if err[i] is not None:
            raise StageError(STAGE, err[i])
        if not px[i].is_valid:
            raise StageError(STAGE, "no frames were decoded ahead for this clip")
        frames = data[offsets[i] : offsets[i + 1]].reshape(shape[i])  # bytes -> (F, H, W, 3), no copy
        return frames, fps[i]

    return get


def prepare_batch(table: pa.Table, cfg: EncodeConfig) -> pa.Table:
    """CPU step: decode + bucket the eligible clips (or take the frames decoded ahead); adds
    PIXELS, fills pixel_* and sample_fps."""
    ahead = _ahead_of(table)
    table = S.conform(table.select([n for n in table.column_names if n in S.CLIP_SCHEMA.names]))
    pixels: list[np.ndarray | None] = [None] * table.num_rows
    frames_, heights, widths, fps_ = ([None] * table.num_rows for _ in range(4))
    errors: dict[int, str] = {}
    rows = table.to_pylist()
    for i, ok in enumerate(eligible_mask(table)):
        if not ok:
            continue
        try:
            px, fps = ahead(i) if ahead is not None else prepare_clip(rows[i], cfg)
        except Exception as e:
            if cfg.on_error == "raise":
                raise
            errors[i] = one_line(e)
            continue
        pixels[i] = px
        frames_[i], heights[i], widths[i] = px.shape[:3]
        fps_[i] = fps
    table = S.set_columns(
        table,
        {
            S.PIXEL_FRAMES: frames_,
            S.PIXEL_HEIGHT: heights,
            S.PIXEL_WIDTH: widths,
            S.SAMPLE_FPS: fps_,
            **_error_cols(table, errors),
        },
    )
    return table.append_column(PIXELS, pixels_column(pixels))


def psnr(decoded: torch.Tensor, source: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] videos, on the [0, 1] scale."""
    mse = float(((decoded.float() - source.float()) / 2).pow(2).mean())
    return 99.0 if mse <= 1e-10 else 10 * math.log10(1.0 / mse)


def _sampled(clip_id: str, every: int) -> bool:
    if every <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(clip_id.encode(), digest_size=4).digest(), "little")
    return h % every == 0


class EncodeStage:
    """Fills the latent group of kept, captioned clips (see the module docstring)."""

    def __init__(self, cfg: EncodeConfig = SMOKE):
        self.cfg = cfg
        self.cfg_hash = config_hash(cfg)
        self.vae: Any = None
        self.text: Any = None

    def load(self) -> None:
        if self.vae is None:
            self.vae = load_vae(self.cfg.vae)
            self.text = load_text_encoder(self.cfg.text)
            s = self.vae.info.spatial_compression
            if self.cfg.bucket_multiple % s:
                from curate.errors import UsageError

                raise UsageError(
                    f"bucket_multiple must be a multiple of the VAE's spatial compression {s}, "
                    f"got {self.cfg.bucket_multiple}; set bucket_multiple={s} or a multiple of it"
                )

    def __call__(self, table: pa.Table) -> pa.Table:
        self.load()
        if PIXELS not in table.column_names:
            table = prepare_batch(table, self.cfg)
        n = table.num_rows
        px_col = table.column(PIXELS).to_pylist()
        shapes = list(
            zip(*(table.column(c).to_pylist() for c in (S.PIXEL_FRAMES, S.PIXEL_HEIGHT, S.PIXEL_WIDTH)))
        )
        todo = [
            i for i in range(n) if px_col[i] is not None and table.column(S.STATUS)[i].as_py() == S.STATUS_OK
        ]
        latents: dict[int, torch.Tensor] = {}
        psnrs: list[float | None] = [None] * n
        errors: dict[int, str] = {}
        clip_ids = table.column(S.CLIP_ID).to_pylist()
        # VAE calls batch clips of one (frames, height, width) shape
        groups: dict[tuple, list[int]] = {}
        for i in todo:
            groups.setdefault(shapes[i], []).append(i)
        for (f, h, w), idx in groups.items():
            for j in range(0, len(idx), max(1, self.cfg.vae_batch)):
                chunk = idx[j : j + max(1, self.cfg.vae_batch)]
                try:
                    self._encode_chunk(chunk, px_col, (f, h, w), clip_ids, latents, psnrs)
                except Exception as e:
                    if self.cfg.on_error == "raise":
                        raise
                    for i in chunk:
                        errors[i] = one_line(e)
        done = [i for i in todo if i in latents]
        embs = self.text.encode_trimmed([table.column(S.CAPTION)[i].as_py() for i in done]) if done else []
        cols: dict[str, list] = {
            c: table.column(c).to_pylist()
            for c in (
                S.LATENT,
                S.LATENT_SHAPE,
                S.LATENT_DTYPE,
                S.VAE_ID,
                S.TEXT_EMBEDDING,
                S.TEXT_EMBEDDING_SHAPE,
                S.TEXT_EMBEDDING_DTYPE,
                S.CONFIG_HASH,
            )
        }
        ldt, tdt = getattr(torch, self.cfg.latent_dtype), getattr(torch, self.cfg.text_dtype)
        for i, emb in zip(done, embs):
            cols[S.LATENT][i], cols[S.LATENT_SHAPE][i], cols[S.LATENT_DTYPE][i] = tensor_to_bytes(
                latents[i].to(ldt)
            )
            cols[S.TEXT_EMBEDDING][i], cols[S.TEXT_EMBEDDING_SHAPE][i], cols[S.TEXT_EMBEDDING_DTYPE][i] = (
                tensor_to_bytes(emb.to(tdt))
            )
            cols[S.VAE_ID][i] = self.vae.info.vae_id
            cols[S.CONFIG_HASH][i] = self.cfg_hash
        out = S.set_columns(table.drop_columns([PIXELS]), {**cols, **_error_cols(table, errors)})
        return out.append_column(ROUNDTRIP_PSNR, pa.array(psnrs, type=pa.float32()))

    def _encode_chunk(
        self,
        chunk: list[int],
        px_col: list,
        fhw: tuple[int, int, int],
        clip_ids: list[str],
        latents: dict[int, torch.Tensor],
        psnrs: list[float | None],
    ) -> None:
        f, h, w = fhw
        arr = np.stack([np.frombuffer(px_col[i], np.uint8).reshape(f, h, w, 3) for i in chunk])
        # (B, F, H, W, 3) uint8 -> (B, 3, F, H, W) in [-1, 1]
        x = torch.from_numpy(arr).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)
        z = self.vae.encode(x)  # (B, C, T, h, w) normalised float32
        for b, i in enumerate(chunk):
            latents[i] = z[b]
        sample = [b for b, i in enumerate(chunk) if _sampled(clip_ids[i], self.cfg.psnr_every)]
        if sample:
            # decode what is stored (after the storage dtype), as a reader would
            zq = z[sample].to(getattr(torch, self.cfg.latent_dtype)).float()
            y = self.vae.decode(zq)  # (b, 3, F, H, W)
            for k, b in enumerate(sample):
                psnrs[chunk[b]] = psnr(y[k], x[b])


def manifest_meta(cfg: EncodeConfig, vae_info: dict[str, Any], text_info: dict[str, Any]) -> dict[str, Any]:
    """What the shard manifest records about how its latents were made."""
    return {
        "vae": vae_info,
        "text_encoder": text_info,
        "buckets": [
            {"width": b.width, "height": b.height, "aspect": round(b.aspect, 4)} for b in cfg.buckets
        ],
        "encode": {
            "target_fps": cfg.target_fps,
            "max_frames": cfg.max_frames,
            "min_frames": cfg.min_frames,
            "latent_dtype": cfg.latent_dtype,
            "text_dtype": cfg.text_dtype,
            "config_hash": config_hash(cfg),
            "latents_normalised": "z_norm = (z - latents_mean) * scaling_factor / latents_std",
        },
        "smoke": bool(cfg.vae.smoke or cfg.text.smoke),
    }
