"""Text encoder for conditioning: captions -> per-token embeddings, precomputed once per clip.

CONTRACT (shared with latents/dit, the DiT sampler):

- `load_text_encoder(cfg) -> TextEncoder` (hub id / local dir / cache; the tiny smoke model
  that `build_smoke_text_encoder(dir)` saves loads through the same path).
- `TextEncoder.encode(list[str]) -> (emb [B, L, D] float32, mask [B, L] bool)` with
  L = `info.max_length` (fixed padding); padded positions of `emb` are exactly 0 and
  `mask` is False there (the Wan pipeline's convention: trim to the true length, pad with 0).
- `TextEncoder.encode_trimmed(list[str]) -> list[Tensor [L_i, D] float32]`: what the shards
  store per clip (only the L_i real tokens, with their shape); the dataset pads them back
  to `[L, D]` + mask, so stored and live embeddings agree.
- `TextEncoder.info` (`TextInfo`: id, max_length, dim, loader config; recorded in the shard
  manifest): `load_text_encoder(text_config_from_manifest(read_manifest(root)))` gives the
  encoder whose embeddings the shards hold.

Default: the UMT5-XXL encoder of Wan 2.1 (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`, subfolders
`text_encoder` + `tokenizer`, D = 4096, L = 512). Smoke: a 2-layer UMT5 with D = 32 and a
byte-level tokenizer built offline (ENVIRONMENT.md section 5 recipe); random, meaningless.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from curate.errors import UsageError
from curate.weights import Weights, expand, local_repo, subfolder_kwargs
from latents.vae import SMOKE_CACHE, WAN_ID, TorchDtype


@dataclass(frozen=True)
class TextConfig:
    source: str = WAN_ID  # hub id or local directory (a pipeline folder or one with the two subfolders)
    model_subfolder: str = "text_encoder"
    tokenizer_subfolder: str = "tokenizer"
    revision: str | None = None
    max_length: int = 512
    dtype: TorchDtype = "float32"
    device: str = "auto"
    batch_size: int = 16
    smoke: bool = False
    weights_dir: str | None = None  # folder with <dir>/<hub id> (hf download --local-dir); None: HF cache


TEXT_DEFAULT = TextConfig(dtype="bfloat16")
TEXT_SMOKE = TextConfig(source=str(SMOKE_CACHE / "text-umt5"), max_length=64, smoke=True)


@dataclass(frozen=True)
class TextInfo:
    text_encoder_id: str
    revision: str | None
    max_length: int
    dim: int
    smoke: bool
    config: dict[str, Any] | None = None  # the TextConfig that loads this encoder again (JSON form)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def text_config_from_manifest(manifest: dict[str, Any], **overrides: Any) -> TextConfig:
    """The TextConfig recorded in a latent shard manifest (`manifest["text_encoder"]["config"]`)."""
    cfg = manifest.get("text_encoder", {}).get("config")
    if not cfg:
        raise UsageError("the shard manifest records no text encoder config; re-encode with this tubelet")
    return replace(TextConfig(**cfg), **overrides)


def prompt_clean(text: str) -> str:
    """Wan 2.1's text cleaning before UMT5 (diffusers pipeline_wan.py `prompt_clean`, from Wan2.1):
    ftfy.fix_text, html.unescape twice (doubly escaped web text), whitespace runs to one space."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder:
    """Tokenizer + encoder. See the module docstring for the contract."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        info: TextInfo,
        device: torch.device,
        batch_size: int = 16,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.batch_size = batch_size

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (emb [B, L, D] float32, zero past each caption's tokens; mask [B, L] bool)."""
        embs, masks = [], []
        for i in range(0, len(texts), self.batch_size):
            # as the reference pipeline feeds UMT5: cleaned text (stored and live embeddings alike)
            batch = [prompt_clean(t) for t in texts[i : i + self.batch_size]]
            tok = self.tokenizer(
                batch,
                padding="max_length",
                max_length=self.info.max_length,
                truncation=True,
                return_tensors="pt",
            )
            ids = tok["input_ids"].to(self.device)
            mask = tok["attention_mask"].to(self.device).bool()
            h = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
            h = h * mask[..., None]  # (B, L, D): padded tokens are exactly zero
            embs.append(h.cpu())
            masks.append(mask.cpu())
        if not embs:
            return torch.zeros(0, self.info.max_length, self.info.dim), torch.zeros(
                0, self.info.max_length, dtype=torch.bool
            )
        return torch.cat(embs), torch.cat(masks)

    def encode_trimmed(self, texts: list[str]) -> list[torch.Tensor]:
        """Captions -> one [L_i, D] float32 tensor per caption (its real tokens only)."""
        emb, mask = self.encode(texts)
        return [e[: int(m.sum())].clone() for e, m in zip(emb, mask)]


def pad_embedding(emb: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stored [L_i, D] embedding -> ([length, D] zero-padded, [length] bool mask)."""
    n = min(int(emb.shape[0]), length)
    out = torch.zeros(length, emb.shape[1], dtype=torch.float32)
    out[:n] = emb[:n].float()
    mask = torch.zeros(length, dtype=torch.bool)
    mask[:n] = True
    return out, mask


def text_weights(cfg: TextConfig) -> list[Weights]:
    """The hub weights this config loads (none for smoke models and local folders)."""
    if cfg.smoke or Path(expand(cfg.source) or "").is_dir():  # a folder given as source: the loader checks it
        return []
    m, t = (f"{s}/" if s else "" for s in (cfg.model_subfolder, cfg.tokenizer_subfolder))
    # every file load_text_encoder opens: the encoder config + weights, the tokenizer (fast json or
    # the sentencepiece model it is built from)
    return [
        Weights(
            "text encoder",
            cfg.source,
            cfg.revision,
            files=(f"{m}config.json", f"{t}tokenizer_config.json"),
            one_of=((f"{t}tokenizer.json", f"{t}spiece.model"),),
            any_of=(
                (f"{m}model.safetensors",),
                (f"{m}model.safetensors.index.json",),
                (f"{m}pytorch_model.bin",),
                (f"{m}pytorch_model.bin.index.json",),
            ),
            include=tuple(f"{s}*" for s in (m, t) if s),
        )
    ]


def load_text_encoder(cfg: TextConfig) -> TextEncoder:
    from transformers import AutoTokenizer, UMT5EncoderModel

    if cfg.smoke and not (Path(cfg.source) / cfg.model_subfolder / "config.json").is_file():
        build_smoke_text_encoder(cfg.source)
    # the one weights rule (curate.weights): the check looked at the very same folder
    source = local_repo(cfg.source, cfg.weights_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision, **subfolder_kwargs(source, cfg.source, cfg.tokenizer_subfolder)
        )
        model = UMT5EncoderModel.from_pretrained(
            source,
            revision=cfg.revision,
            dtype=getattr(torch, cfg.dtype),
            **subfolder_kwargs(source, cfg.source, cfg.model_subfolder),
        )
    except (OSError, ValueError) as e:
        fetch = Weights(
            "",
            cfg.source,
            cfg.revision,
            include=tuple(f"{s}/*" for s in (cfg.model_subfolder, cfg.tokenizer_subfolder) if s),
        )
        raise UsageError(
            f"text encoder weights {cfg.source!r} "
            f"(subfolders {cfg.model_subfolder!r}, {cfg.tokenizer_subfolder!r}) "
            f"must be available locally, got: {str(e).splitlines()[0][:200]}; fetch them with "
            f"`{fetch.download_line(cfg.weights_dir)}` "
            "(or set HF_HOME to a cache that has them), or pass a local directory with --weights-dir"
        ) from e
    device = (
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.device == "auto"
        else torch.device(cfg.device)
    )
    model = model.to(device).eval()
    tid = f"smoke-random-umt5-{model.config.d_model}d" if cfg.smoke else cfg.source
    info = TextInfo(
        text_encoder_id=tid,
        revision=cfg.revision,
        max_length=cfg.max_length,
        dim=int(model.config.d_model),
        smoke=cfg.smoke,
        config=asdict(cfg),
    )
    return TextEncoder(model, tokenizer, info, device, cfg.batch_size)


def build_smoke_text_encoder(directory: str | Path, seed: int = 0) -> Path:
    """A tiny random UMT5 encoder + byte-level tokenizer, saved as `text_encoder/` + `tokenizer/`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    directory = Path(directory)
    if (directory / "text_encoder" / "config.json").is_file():
        return directory
    torch.manual_seed(seed)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(["<pad>", "</s>", "<unk>", *alphabet])}
    pad, eos, unk = "<pad>", "</s>", "<unk>"
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    # like T5's tokenizer: every caption ends with </s>, so even an empty one has a real token
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=pad, eos_token=eos, unk_token=unk)
    cfg = UMT5Config(
        vocab_size=len(vocab),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = UMT5EncoderModel(cfg).eval()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        tok.save_pretrained(tmp / "tokenizer")
        model.save_pretrained(tmp / "text_encoder")
        try:
            os.replace(tmp, directory)
        except OSError:
            if not (directory / "text_encoder" / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory
