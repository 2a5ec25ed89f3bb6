"""The VLM wrapper: the only file in tubelet that imports transformers' vision-language models.

Two families of transformers image-text-to-text models that take several video frames:
- `qwen2_5_vl`: Qwen2.5-VL (and Qwen2-VL / Qwen3-VL, same processor contract),
  e.g. Qwen/Qwen2.5-VL-7B-Instruct (the default preset);
- `llava_onevision`: LLaVA-OneVision (SigLIP + Qwen2), e.g.
  llava-hf/llava-onevision-qwen2-7b-ov-hf.

One loader, `load_vlm(source)`, takes a hub id (resolved from the local HF cache when
offline), a local directory, or `smoke:<kind>` (qwen2_5_vl | qwen3_vl | llava_onevision): a
tiny random model built offline by `build_smoke_vlm` into a cache folder ($TUBELET_CACHE,
default ~/.cache/tubelet) and then loaded from it like any other directory.
bf16 on GPU, fp32 on CPU. Prompts use the processor's chat template, so real checkpoints
and smoke models go through the same code path. Batched generation pads on the left.

Frames are never allowed to exceed the model context: `fit_frames` counts the exact
prompt length the processor produces and subsamples frames uniformly until prompt plus
`max_new_tokens` fit, returning how many frames were dropped so the caller records it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from curate.errors import StageError, UsageError
from curate.weights import Weights, expand, local_repo

Family = Literal["qwen2_5_vl", "llava_onevision"]
FAMILIES: tuple[Family, ...] = ("qwen2_5_vl", "llava_onevision")
SmokeKind = Literal["qwen2_5_vl", "qwen3_vl", "llava_onevision"]  # architectures build_smoke_vlm can make
SMOKE_KINDS: tuple[SmokeKind, ...] = ("qwen2_5_vl", "qwen3_vl", "llava_onevision")
# model_type in config.json -> family; families share processor and chat-template behaviour.
_MODEL_TYPES: dict[str, Family] = {
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen2_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen2_5_vl",
    "llava_onevision": "llava_onevision",
}
# Qwen packs 2 frames per temporal patch: an odd count is padded by repeating the last frame.
_FRAME_MULTIPLE: dict[Family, int] = {"qwen2_5_vl": 2, "llava_onevision": 1}
# LLaVA-OneVision stacks a batch's videos into one tensor, so they need equal frame counts.
_SAME_FRAMES: dict[Family, bool] = {"qwen2_5_vl": False, "llava_onevision": True}
SMOKE_PREFIX = "smoke:"
SMOKE_MARKER = "tubelet_smoke.json"
_SMOKE_VERSION = 2  # bump when build_smoke_vlm changes, so cached smoke models are rebuilt


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0  # used by requests without a seed of their own


def derive_seed(*parts: object) -> int:
    """A 32-bit seed from parts (e.g. the config's seed, a clip id, the attempt): stable across
    runs, processes and batchings."""
    h = hashlib.blake2b("\x00".join(str(p) for p in parts).encode(), digest_size=4).digest()
    return int.from_bytes(h, "little")


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, Any]]  # chat messages; a {"type": "video"} part marks where frames go
    frames: np.ndarray | None = None  # (T, H, W, 3) uint8 RGB, or None for text-only
    fps: float | None = None  # frames per second of the sampled frames (timing for Qwen's M-RoPE)
    # the request's own sampling seed (e.g. derived from its clip id), so that what is sampled for it
    # does not depend on which other requests share its batch; None: Sampling.seed
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    finished: bool  # end-of-sequence before max_new_tokens (False: cut off at the limit)
    prompt_tokens: int | None = None  # prompt length (text + visual tokens) as the engine counted it


@dataclass(frozen=True)
class Failed:
    """A request an engine gave up on (e.g. after its last HTTP retry): its row becomes an error row."""

    reason: str  # one line


class RowSampler:
    """Top-p sampling with one torch.Generator per batch row (a transformers LogitsProcessor).

    important: `generate(do_sample=True)` draws every row from one global stream, so a row's
    tokens depend on its batch neighbours. This processor draws row b from its own generator,
    seeded by request b, and returns scores that are -inf except the drawn token, which greedy
    decoding then takes. The temperature and top-p are applied here for the same reason.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = max(float(temperature), 1e-5)
        self.top_p = float(top_p)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float().cpu() / self.temperature, dim=-1)  # (B, V)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.top_p  # keeps at least the top token
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        picks = [int(torch.multinomial(p, 1, generator=g)) for p, g in zip(probs, self.gens)]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(picks)), torch.tensor(picks)] = 0.0
        return out


class VLM:
    """A loaded model + processor. Use `load_vlm` to build one."""

    def __init__(
        self, model: Any, processor: Any, model_id: str, family: Family, max_context: int | None = None
    ):
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.family = family
        self.tokenizer = processor.tokenizer
        # important: decoder-only batched generation needs left padding, or the pad tokens
        # sit between the prompt and the first generated token.
        self.tokenizer.padding_side = "left"
        text_cfg = getattr(model.config, "text_config", model.config)
        limit = int(getattr(text_cfg, "max_position_embeddings", 0) or 1 << 30)
        self.context = min(limit, max_context) if max_context else limit
        gen_cfg = model.generation_config
        eos = gen_cfg.eos_token_id if gen_cfg.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])}
        self._token_cache: dict[tuple, int] = {}
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- prompt size -----------------------------------------------------------------------
    def _inputs(self, requests: list[Request]) -> Any:
        texts = [
            self.processor.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
            for r in requests
        ]
        step = _FRAME_MULTIPLE[self.family]
        # Qwen packs frames in pairs (Qwen3-VL refuses a single frame): repeat the last frame to fill a pair
        videos = [
            r.frames
            if len(r.frames) >= step
            else np.concatenate([r.frames] + [r.frames[-1:]] * (step - len(r.frames)))
            for r in requests
            if r.frames is not None
        ]
        if videos and len(videos) != len(requests):
            raise ValueError("a batch must be all video requests or all text requests")
        kwargs: dict[str, Any] = {}
        if videos:
            kwargs["videos"] = videos
            if self.family == "qwen2_5_vl":
                from transformers.video_utils import VideoMetadata

                # frames are already sampled: tell the processor their real rate, not to resample
                kwargs["video_metadata"] = [
                    VideoMetadata(
                        total_num_frames=len(r.frames),
                        fps=r.fps or 2.0,
                        frames_indices=list(range(len(r.frames))),
                    )
                    for r in requests
                ]
                kwargs["cap_pixels_per_frame"] = True  # qwen-vl-utils' total-pixels budget per frame
            # important: frames are already sampled (uniform over the clip, or fewer by fit_frames):
            # a processor that resamples (LLaVA-OneVision's video config may say do_sample_frames)
            # would drop or repeat some of them behind the caller's back
            kwargs["do_sample_frames"] = False
        return self.processor(text=texts, padding=True, return_tensors="pt", **kwargs)

    def prompt_tokens(self, request: Request) -> int:
        """Exact prompt length (text + visual tokens) the processor produces for one request.

        The length depends only on the messages, the frames' shape and their rate, so it is
        measured once per such key on blank frames: fitting costs nothing per clip after that.
        """
        shape = None if request.frames is None else tuple(request.frames.shape)
        key = (json.dumps(request.messages, sort_keys=True), shape, round(request.fps or 0.0, 3))
        if key not in self._token_cache:
            blank = None if shape is None else np.zeros(shape, np.uint8)
            n = self._inputs([Request(request.messages, blank, request.fps)])["input_ids"].shape[1]
            self._token_cache[key] = int(n)
        return self._token_cache[key]

    def fit_frames(self, request: Request, max_new_tokens: int) -> tuple[Request, int]:
        """Subsample frames uniformly until prompt + max_new_tokens fit the context.

        Returns (request, frames dropped). Raises StageError when even the fewest frames
        the model accepts do not fit.
        """
        if request.frames is None:
            return request, 0
        budget = self.context - max_new_tokens
        step = _FRAME_MULTIPLE[self.family]
        n0 = n = len(request.frames)
        cur = request
        for _ in range(16):
            tokens = self.prompt_tokens(cur)
            if tokens <= budget:
                return cur, n0 - n
            if n <= step:
                break
            # visual tokens grow linearly with frames: aim straight at the budget, then round down
            target = int(n * budget / tokens) // step * step
            n = max(step, min(n - step, target))
            idx = np.round(np.linspace(0, n0 - 1, n)).astype(np.int64)
            fps = request.fps * n / n0 if request.fps else None
            cur = Request(request.messages, request.frames[idx], fps)  # (n0,H,W,3) -> (n,H,W,3)
        raise StageError(
            "caption",
            f"context overflow: {tokens} prompt tokens + {max_new_tokens} new tokens "
            f"> context {self.context} even with {n} frame(s); lower max_side or max_new_tokens",
        )

    # --- generation ------------------------------------------------------------------------
    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]:
        """Batched `generate` over requests (all video or all text); outputs in request order."""
        if not _SAME_FRAMES[self.family]:
            return self._generate(requests, sampling)
        # this family stacks videos into one tensor: one sub-batch per frame count
        out: list[Generation | None] = [None] * len(requests)
        by_len: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            by_len.setdefault(-1 if r.frames is None else len(r.frames), []).append(i)
        for idx in by_len.values():
            for i, g in zip(idx, self._generate([requests[i] for i in idx], sampling)):
                out[i] = g
        return [g for g in out if g is not None]

    @torch.inference_mode()
    def _generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]:
        if not requests:
            return []
        inputs = self._inputs(requests).to(self.device)
        dtype = self.model.dtype
        for k in ("pixel_values_videos", "pixel_values"):
            if k in inputs:
                inputs[k] = inputs[k].to(dtype)
        kw: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "do_sample": False,
            "pad_token_id": self.pad_id,
            "repetition_penalty": sampling.repetition_penalty,
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
        if sampling.do_sample:
            # per-row generators: a request's sample depends on its own seed only, never on its batch
            seeds = [sampling.seed if r.seed is None else r.seed for r in requests]
            kw["logits_processor"] = [RowSampler(seeds, sampling.temperature, sampling.top_p)]
        out = self.model.generate(**inputs, **kw)
        new = out[:, inputs["input_ids"].shape[1] :].cpu()  # (B, prompt+new) -> (B, new)
        prompt_lens = inputs["attention_mask"].sum(dim=1).tolist()  # (B,): without the left padding
        gens = []
        for row, n_prompt in zip(new.tolist(), prompt_lens):
            end = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            toks = row if end is None else row[:end]
            toks = [t for t in toks if t != self.pad_id]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            gens.append(Generation(text.strip(), len(toks), end is not None, int(n_prompt)))
        return gens


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bf16 on GPU; CPU bf16 matmuls are slow and often unsupported, so fp32 there
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


def smoke_dir(family: SmokeKind) -> Path:
    base = Path(os.environ.get("TUBELET_CACHE", Path.home() / ".cache" / "tubelet"))
    return base / "smoke" / f"vlm-{family}-v{_SMOKE_VERSION}"


def resolve_source(source: str) -> str:
    """`smoke:<family>` -> its cache dir (built once, atomically); anything else unchanged."""
    if not source.startswith(SMOKE_PREFIX):
        return source
    family = source[len(SMOKE_PREFIX) :] or "qwen2_5_vl"
    if family not in SMOKE_KINDS:
        raise UsageError(
            f"smoke model family must be one of {list(SMOKE_KINDS)}, got {family!r}; "
            f"use e.g. 'smoke:qwen2_5_vl'"
        )
    d = smoke_dir(family)  # type: ignore[arg-type]
    if not (d / SMOKE_MARKER).is_file():
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}."))
        try:
            build_smoke_vlm(tmp, family)  # type: ignore[arg-type]
            try:
                os.replace(tmp, d)  # atomic: concurrent actors never see a half-built model
            except OSError:
                if not (d / SMOKE_MARKER).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(d)


def vlm_weights(source: str, weights_dir: str | None = None) -> list[Weights]:
    """The hub weights `load_vlm(source)` needs (none for smoke models and local folders)."""
    if (
        source.startswith(SMOKE_PREFIX) or Path(expand(source) or "").is_dir()
    ):  # a folder: the loader checks it
        return []
    return [
        Weights(
            f"VLM {source}",
            source,
            files=VLM_FILES,
            one_of=VLM_ONE_OF,
            any_of=(("model.safetensors.index.json",), ("model.safetensors",)),
        )
    ]


# Every file `load_vlm` opens (AutoConfig, AutoProcessor: image + video processor, tokenizer, chat
# template; the model and its generation config), as a Hugging Face VLM repo holds them.
# important: without generation_config.json, generate() stops only on the tokenizer's eos
# (<|im_end|>), not on the checkpoint's list of end tokens, and uses no repo sampling defaults.
VLM_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json")
VLM_ONE_OF = (
    ("preprocessor_config.json", "video_preprocessor_config.json"),
    ("chat_template.json", "chat_template.jinja"),
)


# qwen-vl-utils (vision_process.py) sizes VIDEO frames with its own limits, not the image ones:
# VIDEO_MIN_PIXELS = 128*28*28, VIDEO_MAX_PIXELS = 768*28*28 per frame, and a total budget
# (VIDEO_TOTAL_PIXELS = 128000*28*28*0.9) shared by the frames (`cap_pixels_per_frame`, the same
# formula). Qwen2-VL / Qwen2.5-VL repos ship only preprocessor_config.json (image limits:
# 4*28*28 .. 16384*28*28), which transformers then also gives the video processor.
_QWEN_VIDEO_LIMITS: dict[str, tuple[int, int]] = {
    "qwen2_5_vl": (128 * 28 * 28, 768 * 28 * 28),
    "qwen2_vl": (128 * 28 * 28, 768 * 28 * 28),
}


def _has_video_config(path: str) -> bool:
    """Whether the checkpoint states its own video processor config (then it wins)."""
    from huggingface_hub import try_to_load_from_cache

    def find(name: str) -> Path | None:
        if Path(path).is_dir():
            return Path(path) / name if (Path(path) / name).is_file() else None
        try:
            hit = try_to_load_from_cache(path, name)
        except Exception:  # a malformed id: nothing cached
            return None
        return Path(hit) if isinstance(hit, str) else None

    if find("video_preprocessor_config.json") is not None:
        return True
    proc = find("processor_config.json")
    try:
        return proc is not None and "video_processor" in json.loads(proc.read_text())
    except ValueError:
        return False


def _use_video_limits(video_processor: Any, min_pixels: int, max_pixels: int) -> None:
    from transformers.image_utils import SizeDict

    video_processor.size = SizeDict(shortest_edge=min_pixels, longest_edge=max_pixels)


def load_vlm(
    source: str,
    device: str = "auto",
    dtype: str = "auto",
    max_context: int | None = None,
    weights_dir: str | None = None,
) -> VLM:
    """Load a VLM from a hub id (local HF cache offline), a local directory (`~` expanded; or
    `<weights_dir>/<hub id>`), or `smoke:<family>`."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = local_repo(resolve_source(source), weights_dir)
    local = Path(path)
    fetch = Weights("", source).download_line(expand(weights_dir))
    if (path.startswith(("/", "./", "../", "~")) or local.exists()) and not (local / "config.json").is_file():
        raise UsageError(
            f"VLM source {source!r} must be a model folder with config.json, a hub id, or "
            f"'smoke:<family>'; no config.json in {local}; pass the folder you saved with "
            "save_pretrained / downloaded with `hf download <id> --local-dir DIR`"
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as e:
        raise UsageError(
            f"VLM weights {source!r} not found locally "
            f"(HF cache: {os.environ.get('HF_HOME', '~/.cache/huggingface')}, "
            f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}); "
            "get them on a machine with network with "
            f"`{fetch}` (then copy the cache or set HF_HOME to it), "
            f"or pass a local folder (--weights-dir), or use 'smoke:qwen2_5_vl' for a tiny random model"
        ) from e
    family = _MODEL_TYPES.get(config.model_type)
    if family is None:
        raise UsageError(
            f"VLM model_type must be one of {sorted(_MODEL_TYPES)}, got {config.model_type!r} "
            f"for {source!r}; pick a Qwen2.5-VL or LLaVA-OneVision checkpoint"
        )
    dev = _device(device)
    try:
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=_dtype(dtype, dev)).to(dev).eval()
    except OSError as e:
        raise UsageError(
            f"VLM weights {source!r} are incomplete in the local cache ({e.__class__.__name__}); "
            f"re-run `{fetch}`"
        ) from e
    if config.model_type in _QWEN_VIDEO_LIMITS and not _has_video_config(path):
        _use_video_limits(processor.video_processor, *_QWEN_VIDEO_LIMITS[config.model_type])
    model_id = source
    marker = local / SMOKE_MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        model_id = f"smoke-random:{info['family']}"  # never mistaken for a real captioner
    return VLM(model, processor, model_id, family, max_context)


def build_random_vlm_7b(device: str = "cuda", max_pixels: int = 448 * 448) -> VLM:
    """A Qwen2.5-VL-7B-sized model with random weights (no download), bf16, for throughput benchmarks.

    Architecture sizes follow Qwen/Qwen2.5-VL-7B-Instruct's config.json; the tokenizer is the
    smoke one (ids stay below its size), so only speed is meaningful, never the text.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = _smoke_tokenizer()
    ids = {s: tok.convert_tokens_to_ids(s) for s in _SPECIALS}
    _, processor = _smoke_qwen(tok, ids, {}, max_pixels=max_pixels, build_model=False)
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=128000,
            rope_parameters=rope,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):  # initialise in place: no 30 GB fp32 copy on the host
            model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    finally:
        torch.set_default_dtype(prev)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return VLM(model, processor, "random-init:Qwen2.5-VL-7B-size", "qwen2_5_vl", 32768)


# --- smoke models (tiny, random, offline) --------------------------------------------------

_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<image>",
    "<video>",
]

# A ChatML template that understands {"type": "video"|"image"|"text"} parts; the `video_token`
# variable is what each family's processor expands into visual tokens.
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}VIDEO{% elif c['type'] == 'image' %}IMAGE"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_of(ch: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256+."""
    o = ord(ch)
    if 33 <= o <= 126 or 161 <= o <= 172 or 174 <= o <= 255:
        return o
    rest = [b for b in range(256) if not (33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255)]
    return rest[o - 256]


def _smoke_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # byte-level BPE without merges over printable ASCII (+ newline): no training, no download,
    # and random generations decode to printable text rather than broken UTF-8
    to_unicode = dict(zip(range(256), sorted(pre_tokenizers.ByteLevel.alphabet(), key=_byte_of)))
    chars = [to_unicode[b] for b in [10, *range(32, 127)]]
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[], unk_token=to_unicode[63]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    return PreTrainedTokenizerFast(tokenizer_object=tk, additional_special_tokens=_SPECIALS[1:], **special)


def build_smoke_vlm(directory: str | Path, family: SmokeKind = "qwen2_5_vl", seed: int = 0) -> Path:
    """Build a tiny random VLM of `family` offline and save it (model, processor, marker) to `directory`.

    Its captions are random bytes: for plumbing only, and its model id says so.
    """
    directory = Path(directory)
    torch.manual_seed(seed)
    tok = _smoke_tokenizer()
    ids = {s: tok.convert_tokens_to_ids(s) for s in _SPECIALS}
    text = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if family == "qwen2_5_vl":
        model, processor = _smoke_qwen(tok, ids, text)
    elif family == "qwen3_vl":
        model, processor = _smoke_qwen3(tok, ids, text)
    elif family == "llava_onevision":
        model, processor = _smoke_llava_ov(tok, ids, text)
    else:
        raise UsageError(f"family must be one of {list(SMOKE_KINDS)}, got {family!r}")
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    (directory / SMOKE_MARKER).write_text(
        json.dumps({"family": family, "seed": seed, "version": _SMOKE_VERSION})
    )
    return directory


def _smoke_qwen(
    tok: Any,
    ids: dict[str, int],
    text: dict[str, Any],
    max_pixels: int = 28 * 28 * 16,
    build_model: bool = True,
) -> tuple[Any, Any]:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    px = {"min_pixels": 28 * 28 * 4, "max_pixels": max_pixels}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**px),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**px, fps=2),
        chat_template=_CHAT_TEMPLATE.replace("VIDEO", "<|vision_start|><|video_pad|><|vision_end|>").replace(
            "IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"
        ),
    )
    if not build_model:
        return None, processor
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    cfg = Qwen2_5_VLConfig(
        text_config={**text, "rope_parameters": rope},
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(cfg).eval(), processor


def _smoke_qwen3(tok: Any, ids: dict[str, int], text: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 16),
        video_processor=Qwen3VLVideoProcessor(
            size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 64}
        ),
        tokenizer=tok,
        chat_template=_CHAT_TEMPLATE.replace("VIDEO", "<|vision_start|><|video_pad|><|vision_end|>").replace(
            "IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"
        ),
    )
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    cfg = Qwen3VLConfig(
        text_config={**text, "head_dim": 16, "rope_parameters": rope},
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return Qwen3VLForConditionalGeneration(cfg).eval(), processor


def _smoke_llava_ov(tok: Any, ids: dict[str, int], text: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    size = {"height": 56, "width": 56}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size=size, crop_size=size, image_grid_pinpoints=[[56, 56]]
        ),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tok,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=_CHAT_TEMPLATE.replace("VIDEO", "<video>").replace("IMAGE", "<image>"),
    )
    cfg = LlavaOnevisionConfig(
        text_config={**text, "model_type": "qwen2"},
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
        ),
        image_token_id=ids["<image>"],
        video_token_id=ids["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[56, 56]],
    )
    return LlavaOnevisionForConditionalGeneration(cfg).eval(), processor
