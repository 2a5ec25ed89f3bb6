"""Real-shape copies of the `default` preset's models: real widths, reduced depth, random weights.

Each model is built from its real configuration (tests/real_configs/, or the config open_clip
ships for the default CLIP), with only its depth cut (not the CLIP's: open_clip builds
`ViT-L-14` from its own config, so its weights file must be the full model), random weights,
and saved into ONE weights folder laid out as `hf download <repo> --local-dir DIR/<repo>` lays
out the real repos (every file the loaders open: configs, tokenizer files, chat template,
preprocessor and generation configs, safetensors index + shards), plus the aesthetic head file
as the README's curl line saves it. `jobs.check --preset default --weights-dir DIR` passes on it
and every job loads from it, exactly as with real weights.

Two deliberate departures from "random", so that the default preset's own rules let a clip through
(its outputs stay meaningless): the aesthetic head's last bias is 6.0 (the default keeps >= 4.5),
and the VLM's decoder writes nothing into the residual stream (attention and MLP output
projections are zero) while its embeddings and LM head form a successor table: greedy decoding
after the prompt writes a fixed sentence of CHAIN_WORDS distinct words, a full stop and
<|im_end|>, which the default caption QA (>= 25 words, finished, no loops) accepts. The vision
tower, the text encoder, the VAE and the CLIP are plainly random.
`real_shape_preset(dirs)` is `jobs.runtime.presets.DEFAULT` with `--weights-dir` at that folder; widths,
buckets, frame rules, dtypes and normalisation constants stay those of the real preset.
"""

from __future__ import annotations

import gc
import itertools
import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from captioner import stage as caption_stage
from curate.scores import clip_models, score_config
from jobs.runtime import presets
from latents.weights import with_weights_dir

CONFIGS = Path(__file__).resolve().parent / "real_configs"
QWEN = CONFIGS / "qwen2_5_vl_7b_instruct"
WAN_VAE = CONFIGS / "wan2_1_vae" / "config.json"
UMT5 = CONFIGS / "umt5_xxl" / "config.json"
# the real LAION head: Linear sizes after the CLIP embedding (see curate.scores.clip_models.make_head)
AESTHETIC_HIDDEN = (1024, 128, 64, 16, 1)
VERSION = 2  # bump when a builder changes, so kept folders ($TUBELET_REAL_SHAPES_MODELS) are rebuilt
DIT_KEY = "B-real-shapes"  # model.PRESETS key the test registers: DiT-B widths, reduced depth
CHAIN_WORDS = 30  # words of the VLM's fixed caption (the default QA needs 25-300)
VAE_BASE_DIM, VAE_RES_BLOCKS = 16, 1  # the VAE's inner width and depth (real: 96, 2), see build_wan
SHARD = "1GB"  # safetensors shard size: the big models are saved as index + shards, as on the hub
# Qwen2's added tokens, in id order from 151643 (= the size of its regular byte-level BPE vocabulary)
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# The Qwen2-VL / Qwen2.5-VL chat template (system prompt, vision placeholders per content part).
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
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


def build_clip(out: Path, head_file: Path, seed: int = 0) -> Path:
    """The default CLIP as its hub repo holds it for open_clip (`open_clip_model.safetensors`, fp16,
    + `open_clip_config.json`), full depth, random; and the real-size aesthetic head at `head_file`."""
    import open_clip
    from safetensors.torch import save_file

    name, tag = score_config.DEFAULT.clip_model, score_config.DEFAULT.clip_pretrained
    arch = clip_models.clip_architecture(name, tag)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = open_clip.create_model(name, pretrained=None, force_quick_gelu=arch.quick_gelu)
    save_file(
        {k: v.half().contiguous() for k, v in net.state_dict().items()},
        str(out / "open_clip_model.safetensors"),
    )
    model_cfg = {**open_clip.get_model_config(name), "quick_gelu": arch.quick_gelu}
    (out / clip_models.OPEN_CLIP_CONFIG).write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": arch.preprocess})
    )
    embed_dim = model_cfg["embed_dim"]
    del net
    head = clip_models.make_head((embed_dim, *AESTHETIC_HIDDEN))
    with torch.no_grad():
        head.layers[7].bias.fill_(6.0)  # a score the default rule (>= 4.5) keeps; see the module docstring
    head_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), head_file)  # a .pth state dict, as the published head
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
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIALS[1:],
    )
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    for key, token in (
        ("bos_token_id", "<|endoftext|>"),
        ("eos_token_id", "<|im_end|>"),
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
    ):
        assert ids[token] == config[key], (key, ids[token], config[key])
    return tok


def build_vlm(out: Path, text_layers: int = 1, vision_depth: int = 2, seed: int = 0) -> Path:
    """Qwen2.5-VL-7B-Instruct's config.json with `text_layers` decoder layers and `vision_depth`
    vision blocks (the last one full-attention, the others windowed, as in the real tower)."""
    from transformers import AutoConfig, GenerationConfig, Qwen2_5_VLForConditionalGeneration

    raw = _load_json(QWEN / "config.json")
    raw.update(num_hidden_layers=text_layers, max_window_layers=text_layers)
    raw["vision_config"] = {
        **raw["vision_config"],
        "depth": vision_depth,
        "fullatt_block_indexes": [vision_depth - 1],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    (out / "preprocessor_config.json").write_text((QWEN / "preprocessor_config.json").read_text())
    (out / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_CHAT_TEMPLATE}))
    qwen_tokenizer(raw).save_pretrained(out)
    (out / "chat_template.jinja").unlink(missing_ok=True)  # the hub repo has chat_template.json only
    tok = qwen_tokenizer(raw)
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(seed)
    with _DefaultDtype(torch.bfloat16):  # the checkpoint's torch_dtype
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    _successor_chain(model, tok)
    # generation_config.json with the checkpoint's two end tokens (<|im_end|>, <|endoftext|>)
    model.generation_config = GenerationConfig(
        bos_token_id=raw["bos_token_id"],
        pad_token_id=raw["bos_token_id"],
        eos_token_id=[raw["eos_token_id"], raw["bos_token_id"]],
    )
    model.save_pretrained(out, max_shard_size=SHARD)
    # the loader reads the Hub's own config text (transformers rewrote it in its current layout)
    (out / "config.json").write_text(json.dumps(raw, indent=2))
    del model
    gc.collect()
    return out


def _successor_chain(model, tok) -> None:
    """Greedy decoding after "...assistant\n" writes " w1000 ... w<1000+CHAIN_WORDS-1>." then <|im_end|>.

    With the decoder's output projections zero, the last hidden state is the current token's
    embedding, so the next token is argmax_j lm_head[j] . norm(E[current]): setting
    lm_head[next] = E[current] (random rows of E are near-orthogonal at width 3584) makes a
    successor table. The vision tower still runs at full width; its output does not steer the text.
    """
    lm = model.language_model if hasattr(model, "language_model") else model.model.language_model
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        newline, stop, end = (tok.convert_tokens_to_ids(t) for t in ("\u010a", ".", "<|im_end|>"))
        chain = [newline, *range(1000, 1000 + CHAIN_WORDS), stop, end]
        for cur, nxt in itertools.pairwise(chain):
            head[nxt] = emb[cur] * 4.0  # a margin far above any random row's dot product


# --- Wan2.1 pipeline folder: vae/ + text_encoder/ + tokenizer/ -----------------------------


def umt5_tokenizer():
    """Byte-level stand-in for the UMT5 sentencepiece tokenizer with T5's ids: pad 0, eos 1, unk 2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {
        c: i for i, c in enumerate(["<pad>", "</s>", "<unk>", *sorted(pre_tokenizers.ByteLevel.alphabet())])
    }
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_wan(
    out: Path,
    text_layers: int = 1,
    vae_base_dim: int | None = None,
    vae_res_blocks: int | None = None,
    seed: int = 0,
) -> Path:
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
    text.save_pretrained(out / "text_encoder", max_shard_size=SHARD)
    (out / "text_encoder" / "config.json").write_text(json.dumps({**_load_json(UMT5), **raw}, indent=2))
    del text
    gc.collect()
    umt5_tokenizer().save_pretrained(out / "tokenizer")
    return out


# --- the preset --------------------------------------------------------------------------------


def build_all(
    root: Path, vae_base_dim: int | None = VAE_BASE_DIM, vae_res_blocks: int | None = VAE_RES_BLOCKS
) -> dict[str, Path]:
    """The weights folder `root/weights` (hub layout, see the module docstring); reused when its
    marker file says it was built by this version with these VAE sizes."""
    d = presets.DEFAULT
    weights = root / "weights"
    clip_repo = clip_models.clip_tag_weights(d.score.clip_model, d.score.clip_pretrained)[0].repo
    dirs = {
        "weights": weights,
        "clip": weights / clip_repo,
        "head": weights / Path(d.score.aesthetic_head).name,
        "vlm": weights / d.caption.model,
        "wan": weights / d.encode.vae.source,
    }
    assert (
        d.encode.text.source == d.encode.vae.source
    )  # one Wan pipeline repo: vae/, text_encoder/, tokenizer/
    marker = weights / f"built-v{VERSION}-{vae_base_dim}-{vae_res_blocks}.json"
    if not marker.is_file():
        shutil.rmtree(weights, ignore_errors=True)
        for build in (
            lambda: build_clip(dirs["clip"], dirs["head"]),
            lambda: build_vlm(dirs["vlm"]),
            lambda: build_wan(dirs["wan"], vae_base_dim=vae_base_dim, vae_res_blocks=vae_res_blocks),
        ):
            build()
            gc.collect()
        marker.write_text(json.dumps({"random_weights": True}))
    return dirs


def real_shape_preset(
    dirs: dict[str, Path], *, max_frames: int, new_tokens: int = 24, train_steps: int = 2
) -> presets.Preset:
    """`presets.DEFAULT` reading the weights folder. Besides --weights-dir, only values change:
    the clip length cap (CPU time), generated tokens and caption QA, train steps."""
    d = with_weights_dir(presets.DEFAULT, str(dirs["weights"]))
    sampling = replace(d.caption.sampling, max_new_tokens=new_tokens)
    return replace(
        d,
        name="default-real-shapes",
        random_models=True,
        caption=replace(
            d.caption,
            sampling=sampling,
            retry_sampling=replace(d.caption.retry_sampling, max_new_tokens=new_tokens),
            short_max_new_tokens=new_tokens // 2,
            qa=caption_stage.SMOKE.qa,
        ),
        encode=replace(d.encode, max_frames=max_frames),
        train=replace(
            d.train,
            model=DIT_KEY,
            steps=train_steps,
            batch_size=1,
            warmup=1,
            log_every=1,
            ckpt_every=train_steps,
        ),
    )
