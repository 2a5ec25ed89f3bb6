"""Model scores of a clip: open_clip image embeddings and the LAION aesthetic score.

A few frames per clip (default 3: near start, middle, near end, inside a margin that
avoids trimmed edges) arrive already decoded, resized and centre-cropped to the model's
input size by the CPU step (curate/scores/score_frames.py), so only small arrays reach the
model actors. Per clip we store the unit-norm mean of the frames' unit-norm embeddings
(`clip_embedding`, float16) and the mean of the per-frame aesthetic scores.

The aesthetic head is the LAION "improved aesthetic predictor": a 5-layer linear MLP on
L2-normalised CLIP ViT-L/14 image embeddings, trained on SAC+LOGOS+AVA ratings (about 1-10).
Reference: github.com/christophschuhmann/improved-aesthetic-predictor.

Weights (the `default` preset; nothing downloads at test time):
- CLIP: open_clip `ViT-L-14` / `openai`: `hf download timm/vit_large_patch14_clip_224.openai`
  (HF cache) or `... --local-dir WEIGHTS/timm/vit_large_patch14_clip_224.openai` (--weights-dir WEIGHTS).
  important: the architecture follows the tag's pretrained config (open_clip.get_pretrained_cfg):
  OpenAI's weights need QuickGELU, which plain `ViT-L-14` lacks (open_clip only warns), and the
  tag's mean/std are the input normalisation. `clip_architecture` decides it for every load.
- Head: `sac+logos+ava1-l14-linearMSE.pth`, from
  https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth
  saved into --weights-dir, $TUBELET_WEIGHTS or ~/.cache/tubelet/weights (or pass its path).
`python -m jobs.check --preset default` says what is missing and prints the lines that fetch it.
The `smoke` preset uses a tiny random CLIP and head (`build_smoke_clip`) saved to a directory
and read by the same loader; its scores are meaningless and every output says so.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.errors import UsageError
from curate.schema import AESTHETIC, CLIP_EMBEDDING, CLIP_SCHEMA, conform, set_columns
from curate.scores.clip_models import (
    build_smoke_clip,
    clip_architecture,
    clip_tag_weights,
    head_weights,
    load_aesthetic_head,
    load_clip,
    resolve_head,
)
from curate.scores.score_config import ScoreConfig
from curate.scores.score_frames import FRAMES, FRAMES_SHAPE
from curate.weights import Weights, expand

# Images embedded in this process; tests use it to prove cheap-dropped clips never reach the model.
MODEL_STATS: Counter[str] = Counter()


def model_label(cfg: ScoreConfig) -> str:
    """What produced the scores, for logs and the funnel; smoke is labelled as random."""
    if cfg.smoke:
        return "smoke: tiny random CLIP + random aesthetic head (scores are meaningless)"
    return f"open_clip {cfg.clip_model}/{cfg.clip_pretrained} + aesthetic {cfg.aesthetic_head}"


def clip_weights(cfg: ScoreConfig) -> list[Weights]:
    """The CLIP weights and aesthetic head a score config needs (none for smoke / local files)."""
    if cfg.smoke:
        return []
    out = clip_tag_weights(cfg.clip_model, cfg.clip_pretrained) if cfg.clip_pretrained else []
    clip_architecture(cfg.clip_model, cfg.clip_pretrained)  # a bad model name or tag fails here
    head = cfg.aesthetic_head
    if head and not Path(expand(head) or head).exists() and not head.startswith("hf-hub:"):
        out.append(head_weights(Path(head).name))
    return out


def check_weights(cfg: ScoreConfig) -> None:
    """Fail fast (on the driver, before any actor starts) when real weights are not available.

    Checks files only (weights folder, HF cache), builds nothing; see curate/weights.py.
    """
    from curate.scores import nsfw, ocr
    from curate.weights import require

    if cfg.ocr.enabled:
        ocr.models_dir()
    if cfg.nsfw.enabled:
        nsfw.model_path()
    if cfg.smoke:
        return
    if (
        cfg.aesthetic_head is None
        or Path(expand(cfg.aesthetic_head) or "").exists()
        or cfg.aesthetic_head.startswith("hf-hub:")
    ):
        resolve_head(cfg.aesthetic_head or cfg.clip_model, cfg.weights_dir)
    require(clip_weights(cfg), cfg.weights_dir)


# --- the stage -----------------------------------------------------------------------------


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


class ClipScoreStage:
    """Actor-pool stage: frames column in -> `clip_embedding` + `aesthetic` out (frames dropped).

    Rows without frames (cheap-filtered or failed clips) pass through untouched: they never
    reach the model.
    """

    def __init__(self, cfg: ScoreConfig):
        self.cfg = cfg
        self.model: Any = None
        self.head: Any = None

    def load(self) -> None:
        import torch

        cfg = self.cfg
        if cfg.smoke:
            build_smoke_clip(cfg.clip_model)  # no-op when present; actors on any node can build it
        self.device = resolve_device(cfg.device)
        self.model, self.pre = load_clip(cfg.clip_model, cfg.clip_pretrained, self.device, cfg.weights_dir)
        if self.pre["size"] != cfg.image_size:
            raise UsageError(
                f"image_size must match the CLIP input size {self.pre['size']}, "
                f"got {cfg.image_size}; set image_size={self.pre['size']}"
            )
        self.head = load_aesthetic_head(cfg.aesthetic_head or cfg.clip_model, cfg.weights_dir).to(self.device)
        self.mean = torch.tensor(
            self.pre.get("mean", (0.48145466, 0.4578275, 0.40821073)), device=self.device
        )
        self.std = torch.tensor(self.pre.get("std", (0.26862954, 0.26130258, 0.27577711)), device=self.device)

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) uint8 -> unit-norm embeddings (N, D) float32 and aesthetic scores (N,)."""
        import torch

        if self.model is None:
            self.load()
        MODEL_STATS["images"] += len(images)
        x = torch.from_numpy(images).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (N, S, S, 3) -> (N, 3, S, S)
        x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        use_amp = self.device.startswith("cuda") and self.cfg.precision != "fp32"
        dtype = torch.float16 if self.cfg.precision == "fp16" else torch.bfloat16
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=use_amp):
            emb = self.model.encode_image(x).float()
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            score = self.head(emb).float().squeeze(-1)
        return emb.cpu().numpy(), score.cpu().numpy()

    def __call__(self, batch: pa.Table) -> pa.Table:
        frames = batch.column(FRAMES).to_pylist() if FRAMES in batch.column_names else [None] * batch.num_rows
        shapes = batch.column(FRAMES_SHAPE).to_pylist() if FRAMES_SHAPE in batch.column_names else frames
        have = [i for i, f in enumerate(frames) if f is not None]
        emb_col: list[list[float] | None] = [None] * batch.num_rows
        aes_col: list[float | None] = [None] * batch.num_rows
        if have:
            arrays = [
                np.frombuffer(frames[i], np.uint8).reshape(shapes[i]) for i in have
            ]  # (T, S, S, 3) each
            counts = [len(a) for a in arrays]
            emb, aes = self.embed(np.concatenate(arrays))  # (sum T, D), (sum T,)
            start = 0
            for i, n in zip(have, counts):
                e = emb[start : start + n].mean(axis=0)  # (T, D) -> (D,)
                emb_col[i] = (e / max(float(np.linalg.norm(e)), 1e-12)).astype(np.float16).tolist()
                aes_col[i] = float(aes[start : start + n].mean())
                start += n
        out = conform(batch, CLIP_SCHEMA)  # drops the frames columns
        return set_columns(out, {CLIP_EMBEDDING: emb_col, AESTHETIC: aes_col})
