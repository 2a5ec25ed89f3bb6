"""Real-shape copies of the `default` preset's models: real widths, reduced depth, random weights.

Each model is built from its real configuration (tests/real_configs/, or the config open_clip
ships for the default CLIP), with only its depth cut, random weights, and saved in the on-disk
layout its real weights have, so the project's own loaders read it: an open_clip local dir, a
Qwen2.5-VL-7B-Instruct model folder (config.json, preprocessor_config.json, tokenizer, chat
template, safetensors), and a Wan2.1 Diffusers pipeline folder (`vae/`, `text_encoder/`,
`tokenizer/`). `real_shape_preset(root)` is `jobs.runtime.presets.DEFAULT` with `dataclasses.replace`
pointing its sources at those folders; widths, buckets, frame rules, dtypes and normalisation
constants stay those of the real preset. Outputs are meaningless (random weights).
"""

from __future__ import annotations

import copy
import gc
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from captioner import stage as caption_stage
from curate import score
from jobs.runtime import presets

CONFIGS = Path(__file__).resolve().parent / "real_configs"
QWEN = CONFIGS / "qwen2_5_vl_7b_instruct"
WAN_VAE = CONFIGS / "wan2_1_vae" / "config.json"
UMT5 = CONFIGS / "umt5_xxl" / "config.json"
# the real LAION head: Linear sizes after the CLIP embedding (see curate.score.make_head)
AESTHETIC_HIDDEN = (1024, 128, 64, 16, 1)
VERSION = 1  # bump when a builder changes, so kept folders ($TUBELET_REAL_SHAPES_MODELS) are rebuilt
DIT_KEY = "B-real-shapes"  # model.PRESETS key the test registers: DiT-B widths, reduced depth
# Qwen2's added tokens, in id order from 151643 (= the size of its regular byte-level BPE vocabulary)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# The Qwen2-VL / Qwen2.5-VL chat template (system prompt, vision placeholders per content part).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text())


class _DefaultDtype:
    """Build modules directly in the dtype their real weights are stored in (no fp32 copy first)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __enter__(self) -> None:
        self.prev = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc: object) -> None:
        torch.set_default_dtype(self.prev)


# --- CLIP + aesthetic head ------------------------------------------------------------------


def build_clip(out: Path, layers: int = 1, seed: int = 0) -> Path:
    """The default CLIP (open_clip's own config of DEFAULT.clip_model, with what its pretrained tag
    asks for: QuickGELU, mean/std) with `layers` vision and text blocks, + a real-size random head."""
    import open_clip
    from safetensors.torch import save_file

    name, tag = score.DEFAULT.clip_model, score.DEFAULT.clip_pretrained
    model_cfg = copy.deepcopy(open_clip.get_model_config(name))
    pre = open_clip.get_pretrained_cfg(name, tag)
    model_cfg["quick_gelu"] = bool(pre.get("quick_gelu", False))
    model_cfg["vision_cfg"]["layers"] = layers
    model_cfg["text_cfg"]["layers"] = layers
    preprocess = {"size": model_cfg["vision_cfg"]["image_size"], "mean": list(pre["mean"]), "std": list(pre["std"]),
                  "interpolation": pre.get("interpolation", "bicubic"), "resize_mode": pre.get("resize_mode", "shortest")}
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "real-shape-clip.json"
        cfg_file.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(cfg_file)
        net = open_clip.create_model("real-shape-clip", pretrained=None)
    (out / score.OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    head = score.make_head((model_cfg["embed_dim"], *AESTHETIC_HIDDEN))
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(out / score.HEAD_FILE))
    return out


# --- Qwen2.5-VL-7B-Instruct -----------------------------------------------------------------


def qwen_tokenizer(config: dict):
    """A byte-level tokenizer with Qwen2's layout: 151643 regular tokens (the 256 byte symbols,
    then fillers that decode to words) and the added specials at their real ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    n_regular = int(config["bos_token_id"])  # <|endoftext|> is the first added token
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for i in range(len(vocab), n_regular):
        vocab[f"\u0120w{i}"] = i  # decodes to " w<i>": random ids still make printable words
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(QWEN_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=QWEN_SPECIALS[1:])
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    for key, token in (("bos_token_id", "<|endoftext|>"), ("eos_token_id", "<|im_end|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
                       ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>")):
        assert ids[token] == config[key], (key, ids[token], config[key])
    return tok


def build_vlm(out: Path, text_layers: int = 1, vision_depth: int = 2, seed: int = 0) -> Path:
    """Qwen2.5-VL-7B-Instruct's config.json with `text_layers` decoder layers and `vision_depth`
    vision blocks (the last one full-attention, the others windowed, as in the real tower)."""
    from transformers import AutoConfig, GenerationConfig, Qwen2_5_VLForConditionalGeneration

    raw = _load_json(QWEN / "config.json")
    raw.update(num_hidden_layers=text_layers, max_window_layers=text_layers)
    raw["vision_config"] = {**raw["vision_config"], "depth": vision_depth, "fullatt_block_indexes": [vision_depth - 1]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    (out / "preprocessor_config.json").write_text((QWEN / "preprocessor_config.json").read_text())
    (out / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_CHAT_TEMPLATE}))
    qwen_tokenizer(raw).save_pretrained(out)
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(seed)
    with _DefaultDtype(torch.bfloat16):  # the checkpoint's torch_dtype
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=raw["bos_token_id"], pad_token_id=raw["bos_token_id"],
                                               eos_token_id=[raw["eos_token_id"], raw["bos_token_id"]])
    model.save_pretrained(out)
    # the loader reads the Hub's own config text (transformers rewrote it in its current layout)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    del model
    gc.collect()
    return out


# --- Wan2.1 pipeline folder: vae/ + text_encoder/ + tokenizer/ -----------------------------


def umt5_tokenizer():
    """Byte-level stand-in for the UMT5 sentencepiece tokenizer with T5's ids: pad 0, eos 1, unk 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<pad>", "</s>", "<unk>", *sorted(pre_tokenizers.ByteLevel.alphabet())])}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_wan(out: Path, text_layers: int = 1, vae_base_dim: int | None = None, vae_res_blocks: int | None = None,
              seed: int = 0) -> Path:
    """A Wan2.1 Diffusers folder: the real VAE config and the UMT5-XXL encoder config with
    `text_layers` layers (saved bf16; the preset loads it in bf16).

    `vae_base_dim` / `vae_res_blocks` shrink the VAE's inner width / res blocks per stage: at
    848x480 the full-width Wan VAE takes minutes per frame chunk on 2 CPU cores. Neither changes
    what the rest of the project sees: 16 latent channels (z_dim), 8x/4x compression (dim_mult,
    temperal_downsample), the 4k+1 frame rule, latents_mean/std, tiling."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    vae_cfg = {k: v for k, v in _load_json(WAN_VAE).items() if not k.startswith("_")}
    if vae_base_dim is not None:
        vae_cfg["base_dim"] = vae_base_dim
    if vae_res_blocks is not None:
        vae_cfg["num_res_blocks"] = vae_res_blocks
    AutoencoderKLWan(**vae_cfg).save_pretrained(out / "vae")
    raw = {k: v for k, v in _load_json(UMT5).items() if k not in ("architectures", "torch_dtype")}
    raw.update(num_layers=text_layers, num_decoder_layers=text_layers)
    with _DefaultDtype(torch.bfloat16):
        text = UMT5EncoderModel(UMT5Config(**raw)).eval()
    text.save_pretrained(out / "text_encoder")
    (out / "text_encoder" / "config.json").write_text(json.dumps({**_load_json(UMT5), **raw}, indent=2))
    del text
    gc.collect()
    umt5_tokenizer().save_pretrained(out / "tokenizer")
    return out


# --- the preset --------------------------------------------------------------------------------


def build_all(root: Path, vae_base_dim: int | None = None, vae_res_blocks: int | None = None) -> dict[str, Path]:
    """All three folders under `root`; a folder already holding its marker file is reused."""
    marker = f"built-v{VERSION}-{vae_base_dim}-{vae_res_blocks}.json"
    dirs = {"clip": root / "clip", "vlm": root / "qwen2.5-vl-7b", "wan": root / "wan2.1"}
    builders = {"clip": lambda d: build_clip(d), "vlm": lambda d: build_vlm(d),
                "wan": lambda d: build_wan(d, vae_base_dim=vae_base_dim, vae_res_blocks=vae_res_blocks)}
    for name, d in dirs.items():
        if not (d / marker).is_file():
            shutil.rmtree(d, ignore_errors=True)
            builders[name](d)
            (d / marker).write_text(json.dumps({"random_weights": True}))
            gc.collect()
    return dirs


def real_shape_preset(dirs: dict[str, Path], *, max_frames: int, new_tokens: int = 24,
                      train_steps: int = 2) -> presets.Preset:
    """`presets.DEFAULT` loading the real-shape folders. Besides the sources, only values change:
    the clip length cap and VAE tile size (CPU time), generated tokens and caption QA (random text), steps."""
    d = presets.DEFAULT
    sampling = replace(d.caption.sampling, max_new_tokens=new_tokens)
    return replace(
        d,
        name="default-real-shapes",
        random_models=True,
        score=replace(d.score, clip_model=str(dirs["clip"]), clip_pretrained=None, aesthetic_head=None),
        caption=replace(d.caption, model=str(dirs["vlm"]), sampling=sampling,
                        clip_model=str(dirs["clip"]), clip_pretrained=None,  # caption_clip_score: the same CLIP
                        retry_sampling=replace(d.caption.retry_sampling, max_new_tokens=new_tokens),
                        short_max_new_tokens=new_tokens // 2, qa=caption_stage.SMOKE.qa),
        # 512 px tiles: 2 tiles per 848x480 frame instead of diffusers' 15 of 256 px (CPU time); still tiled
        encode=replace(d.encode, vae=replace(d.encode.vae, source=str(dirs["wan"]), tile_px=512),
                       text=replace(d.encode.text, source=str(dirs["wan"])), max_frames=max_frames),
        train=replace(d.train, model=DIT_KEY, steps=train_steps, batch_size=1, warmup=1, log_every=1,
                      ckpt_every=train_steps),
    )
