"""`caption_clip_score`: how well a caption matches its clip, by the score stage's own CLIP.

The score stage stores each clip's `clip_embedding` (unit-norm mean of its frames' CLIP
image embeddings). After captioning, the caption is embedded by the *same* open_clip
model's text tower and the score is the cosine of the two (CLIPScore without the 2.5 weight
and the clamp: it stays a plain cosine, comparable across runs of one model). CLIP reads
77 tokens, so a dense caption is embedded sentence by sentence (each sentence truncated to
the context) and the unit-norm mean of the sentence embeddings is compared: every part of
a long caption counts, not only its first 77 tokens.

A clip without `clip_embedding` (scored by an older run, or its score failed) gets null.
Reference: Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning" (EMNLP 2021).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str, max_sentences: int = 12) -> list[str]:
    """The caption's sentences (the whole text when it has no sentence end), at most `max_sentences`."""
    parts = [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]
    return parts[:max_sentences] or [text.strip()]


class CaptionClipScorer:
    """`CaptionClipScorer(model, pretrained, device, smoke, weights_dir)`, `load()`,
    `scores(captions, image_embeddings)`.

    `model`/`pretrained`/`weights_dir` as in `curate.scores.clip_models.load_clip` (the score stage's CLIP:
    same loader, same weights folder: the check on the driver looked there too);
    `smoke`: the smoke preset's tiny random CLIP directory, built offline when missing.
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None,
        device: str = "auto",
        smoke: bool = False,
        weights_dir: str | None = None,
    ):
        self.model_name, self.pretrained, self.device, self.smoke = model, pretrained, device, smoke
        self.weights_dir = weights_dir
        self.model: Any = None

    def load(self) -> None:
        import open_clip

        from curate.scores.clip_models import build_smoke_clip, load_clip
        from curate.scores.score import resolve_device

        if self.smoke:
            build_smoke_clip(self.model_name)  # no-op when present
        self.device = resolve_device(self.device)
        self.model, _ = load_clip(self.model_name, self.pretrained, self.device, self.weights_dir)
        d = Path(self.model_name).expanduser()
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{d}" if d.is_dir() else self.model_name)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit-norm text embeddings (N, D) float32."""
        import torch

        if self.model is None:
            self.load()
        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)  # truncated to the model's context
            e = self.model.encode_text(tokens).float()
            e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return e.cpu().numpy()

    def scores(self, captions: list[str], image_embeddings: list[Any]) -> list[float | None]:
        """Cosine of each caption (sentence-mean text embedding) and its clip's image embedding."""
        todo = [i for i, (c, e) in enumerate(zip(captions, image_embeddings)) if c and e is not None]
        out: list[float | None] = [None] * len(captions)
        if not todo:
            return out
        per = [sentences(captions[i]) for i in todo]
        emb = self.embed_texts([s for p in per for s in p])  # (sum sentences, D)
        start = 0
        for i, p in zip(todo, per):
            t = emb[start : start + len(p)].mean(axis=0)  # (S, D) -> (D,)
            start += len(p)
            t = t / max(float(np.linalg.norm(t)), 1e-12)
            img = np.asarray(image_embeddings[i], np.float32)
            img = img / max(float(np.linalg.norm(img)), 1e-12)
            out[i] = float(t @ img)
        return out
