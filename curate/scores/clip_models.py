"""open_clip CLIP and the LAION aesthetic head: architecture, weights lookup, loading, smoke build.

Used by the score stage (curate/scores/score.py, which documents the weights). The CLIP
architecture follows the pretrained tag's config (`clip_architecture`): OpenAI's weights need
QuickGELU and the tag's mean/std, which a plain `ViT-L-14` lacks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import UsageError
from curate.weights import Weights, expand, locate

HEAD_FILE = "aesthetic_head.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
DEFAULT_HEAD = "sac+logos+ava1-l14-linearMSE.pth"


# --- the aesthetic head ------------------------------------------------------------------


def make_head(dims: tuple[int, ...]) -> Any:
    """The improved-aesthetic-predictor MLP: Linear layers at `layers` indices 0, 2, 4, 6, 7.

    `dims` = (in, h1, h2, h3, h4, 1); the real head is (768, 1024, 128, 64, 16, 1). No
    activations, as in the published model; the dropouts only keep the state-dict keys.
    """
    from torch import nn

    class AestheticHead(nn.Module):
        def __init__(self, d: tuple[int, ...]):
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(d[0], d[1]),
                nn.Dropout(0.2),
                nn.Linear(d[1], d[2]),
                nn.Dropout(0.2),
                nn.Linear(d[2], d[3]),
                nn.Dropout(0.1),
                nn.Linear(d[3], d[4]),
                nn.Linear(d[4], d[5]),
            )

        def forward(self, x: Any) -> Any:
            return self.layers(x)

    return AestheticHead(dims)


HEAD_URL = f"https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/{DEFAULT_HEAD}"


def resolve_head(source: str, weights_dir: str | None = None) -> Path:
    p = Path(source).expanduser()
    if p.is_dir() and (p / HEAD_FILE).is_file():
        return p / HEAD_FILE
    if p.is_file():
        return p
    if source.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        repo, _, name = source[len("hf-hub:") :].rpartition("/")
        try:
            return Path(hf_hub_download(repo, name))
        except Exception as e:  # offline, missing, gated: all mean "not here"
            raise UsageError(_missing_head(source, f"hub download failed: {e}")) from e
    # the one weights rule (curate.weights.locate), as the check applies it to the same Weights
    where = locate(head_weights(p.name), weights_dir)
    if where is not None:
        return where / p.name
    raise UsageError(_missing_head(source, "not found"))


def head_weights(name: str = DEFAULT_HEAD) -> Weights:
    """The aesthetic head as a bare file (not on the hub): --weights-dir, $TUBELET_WEIGHTS,
    ~/.cache/tubelet/weights."""
    return Weights("aesthetic head", name, files=(name,), url=HEAD_URL)


def _missing_head(source: str, why: str) -> str:
    return (
        f"aesthetic head weights {source!r} must be available locally ({why}); get them with "
        "`mkdir -p ~/.cache/tubelet/weights && "
        f"curl -L -o ~/.cache/tubelet/weights/{DEFAULT_HEAD} {HEAD_URL}` "
        "(or put the file in --weights-dir / $TUBELET_WEIGHTS, or pass --aesthetic-head PATH), "
        "or use --preset smoke"
    )


def load_aesthetic_head(source: str, weights_dir: str | None = None) -> Any:
    """Load the head from a file/dir/cache name/hub id; layer sizes come from the weights."""
    import torch

    path = resolve_head(source, weights_dir)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if k.startswith("layers.")}
    idx = (0, 2, 4, 6, 7)
    try:
        dims = (state["layers.0.weight"].shape[1], *(state[f"layers.{i}.weight"].shape[0] for i in idx))
    except KeyError as e:
        raise UsageError(
            f"aesthetic head {str(path)!r} must hold layers.{{0,2,4,6,7}} weights "
            f"(improved-aesthetic-predictor layout), missing {e}; pass the right file"
        ) from e
    head = make_head(dims)
    head.load_state_dict(state)
    return head.eval()


# --- CLIP --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipArchitecture:
    """How to build an open_clip model so that the weights of its tag fit it."""

    name: str  # open_clip model name ("ViT-L-14") or "local-dir:/path"
    tag: str | None  # pretrained tag of `name` ("openai"), None for files / directories / random
    quick_gelu: bool  # the tag's activation: OpenAI's weights were trained with QuickGELU
    preprocess: dict[str, Any]  # mean/std/interpolation/resize_mode of the tag (empty: the model's own)
    hub: tuple[str, str] | None  # (repo, file) of the tag's weights on the HF hub


def clip_architecture(model: str, pretrained: str | None) -> ClipArchitecture:
    """The architecture a (model, pretrained) pair asks for: the tag's pretrained config wins.

    important: open_clip builds `ViT-L-14` with GELU even for the `openai` tag (QuickGELU-trained;
    it only warns), which shifts every embedding; force_quick_gelu follows the tag here.
    """
    import open_clip

    d = Path(model).expanduser()
    if d.is_dir():
        if not (d / OPEN_CLIP_CONFIG).is_file():
            raise UsageError(
                f"CLIP directory {str(d)!r} must contain {OPEN_CLIP_CONFIG} and weights, "
                "found neither; build one with curate.scores.clip_models.build_smoke_clip(dir)"
            )
        return ClipArchitecture(f"local-dir:{d}", None, False, {}, None)
    if model.startswith("hf-hub:") or not pretrained:
        return ClipArchitecture(model, None, False, {}, None)
    if model not in open_clip.list_models():
        raise UsageError(
            f"clip_model must be an open_clip model name, hf-hub:org/repo or a directory, got "
            f"{model!r}; see open_clip.list_models()"
        )
    pcfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not pcfg:
        if Path(expand(pretrained) or pretrained).is_file():
            return ClipArchitecture(model, None, False, {}, None)  # a weights file: the model config decides
        raise UsageError(
            f"clip_pretrained must be an open_clip tag of {model} or a weights file, got "
            f"{pretrained!r}; tags: {open_clip.list_pretrained_tags_by_model(model)}"
        )
    pre = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg}
    # hf_hub is "org/name/" (default file name) or "org/name/file.bin"
    repo, _, fname = pcfg.get("hf_hub", "").rpartition("/")
    hub = (repo, fname or "open_clip_pytorch_model.bin") if repo else None
    return ClipArchitecture(model, pretrained, bool(pcfg.get("quick_gelu", False)), pre, hub)


def clip_tag_weights(model: str, pretrained: str) -> list[Weights]:
    """The hub weights of an open_clip (model, tag) pair; none for files, directories, hf-hub: ids."""
    arch = clip_architecture(model, pretrained)
    if not arch.hub:
        return []
    repo, fname = arch.hub
    # open_clip prefers the safetensors twin of a .bin file when the repo has one
    safe = fname.replace("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
    groups = ((safe,), (fname,)) if safe != fname else ((fname,),)
    return [Weights(f"CLIP {model}/{pretrained}", repo, any_of=groups, include=(fname,))]


def _clip_checkpoint(arch: ClipArchitecture, pretrained: str | None, weights_dir: str | None) -> str | None:
    """A weights file for the architecture: a file path as given, the tag's file in the weights
    folder or HF cache. None: random init / the directory's own weights."""
    if arch.tag is None:
        p = expand(pretrained) if pretrained else None
        return p if p and Path(p).is_file() and not arch.name.startswith(("local-dir:", "hf-hub:")) else None
    if arch.hub is None:
        raise UsageError(
            f"CLIP tag {arch.name}/{arch.tag} has no hub weights open_clip can fetch; "
            "pass a weights file as clip_pretrained"
        )
    w = clip_tag_weights(arch.name, arch.tag)[0]
    where = locate(w, weights_dir)
    if where is None:
        raise UsageError(
            _missing_clip(arch.name, arch.tag, FileNotFoundError("not in the HF cache"), w, weights_dir)
        )
    for group in w.any_of:
        if (where / group[0]).is_file():
            return str(where / group[0])
    return None


def load_clip(
    model: str,
    pretrained: str | None = None,
    device: str = "cpu",
    weights_dir: str | None = None,
    load_weights: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """An open_clip model from an architecture + tag/file, "hf-hub:org/repo", or a local dir.

    The architecture (activation, preprocessing) follows the tag's pretrained config
    (`clip_architecture`); `load_weights=False` builds that architecture with random weights
    (tests, offline). Returns (model in eval mode, preprocess cfg with size/mean/std). Raises
    UsageError naming the weights and how to get them when they are not available offline.
    """
    import open_clip

    arch = clip_architecture(model, pretrained)
    ckpt = _clip_checkpoint(arch, pretrained, weights_dir) if load_weights else None
    kwargs: dict[str, Any] = {"force_quick_gelu": arch.quick_gelu, "device": device}
    if arch.preprocess:
        kwargs["force_preprocess_cfg"] = arch.preprocess
    try:
        net = open_clip.create_model(
            arch.name, pretrained=ckpt if load_weights else None, load_weights=load_weights, **kwargs
        )
    except (RuntimeError, OSError, ValueError) as e:
        raise UsageError(_missing_clip(model, pretrained, e, None, weights_dir)) from e
    pre = dict(open_clip.get_model_preprocess_cfg(net))
    size = pre.get("size", 224)
    pre["size"] = size[0] if isinstance(size, tuple | list) else int(size)
    return net.eval(), pre


def _missing_clip(
    model: str, pretrained: str | None, e: BaseException, w: Weights | None, weights_dir: str | None
) -> str:
    if w is None and pretrained and not Path(expand(pretrained) or pretrained).exists():
        try:
            w = (clip_tag_weights(model, pretrained) or [None])[0]
        except UsageError:  # not a tag of this model: no download line to give
            w = None
    fetch = f"`{w.download_line(weights_dir)}`" if w else "the weights file (clip_pretrained=PATH)"
    return (
        f"CLIP weights {model}/{pretrained} must be available offline, got: {str(e).splitlines()[0]}; "
        f"on a connected machine run {fetch} (fills the HF cache; set HF_HOME to share it), "
        "or pass a local directory with --weights-dir, or use --preset smoke"
    )


SMOKE_CLIP_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def build_smoke_clip(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random open_clip model + aesthetic head to `directory` (atomic, offline).

    The result loads with `load_clip(directory)` and `load_aesthetic_head(directory)`, the
    same loaders real weights use. Deterministic for a seed.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(directory).expanduser()
    if (out / OPEN_CLIP_CONFIG).is_file() and (out / HEAD_FILE).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        torch.manual_seed(seed)
        cfg_file = tmp / "smoke-tiny-clip.json"
        cfg_file.write_text(json.dumps(SMOKE_CLIP_CFG))
        open_clip.add_model_config(cfg_file)
        net = open_clip.create_model("smoke-tiny-clip", pretrained=None)
        cfg_file.unlink()
        (tmp / OPEN_CLIP_CONFIG).write_text(
            json.dumps(
                {"model_cfg": SMOKE_CLIP_CFG, "preprocess_cfg": {}, "tubelet": "smoke: random weights"}
            )
        )
        save_file(
            {k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "open_clip_model.safetensors")
        )
        head = make_head((SMOKE_CLIP_CFG["embed_dim"], 32, 16, 8, 4, 1))
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / HEAD_FILE))
        try:
            os.replace(tmp, out)
        except OSError:  # another process built it first (or `out` exists and is not empty)
            if not (out / OPEN_CLIP_CONFIG).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
