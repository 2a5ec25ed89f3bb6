"""Run directory I/O: JSON config, safetensors checkpoints (model, EMA, optimizer, RNG), resume.

RUN/
  config.json                   model + train config (+ data facts) needed to rebuild the model
  checkpoints/step-0000100/     model.safetensors, ema.safetensors, optim.safetensors, state.json
  loss.csv, val.csv, loss.png     training and validation losses (train.py)
  tb/                           TensorBoard event files
  previews/step-0005000/        EMA samples decoded through the shards' VAE (jobs.train)

A checkpoint is written to a temporary folder and renamed, and state.json is written last, so a
crash never leaves a half checkpoint that looks complete. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from latents.dit.model import DiT, DiTConfig

CKPT_DIR = "checkpoints"


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _optim_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state dict -> flat tensors for safetensors + JSON for the rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optim_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    run: Path, step: int, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer, state: dict
) -> Path:
    final = Path(run) / CKPT_DIR / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors"
    )
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, tmp / "ema.safetensors"
    )
    tensors, meta = _optim_to_flat(opt)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, tmp / "optim.safetensors")
    write_json(tmp / "state.json", {**state, "step": step, "optim": meta})
    # safetensors' writer creates its files 0600 whatever the umask; give them the mode a file
    # created here would get (mkdir applied the umask to the folder: rwx -> rw of its files)
    mode = tmp.stat().st_mode & 0o666
    for f in tmp.iterdir():
        f.chmod(mode)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def latest_checkpoint(run: Path) -> Path | None:
    """The highest-step complete checkpoint of a run, or None."""
    root = Path(run) / CKPT_DIR
    done = (
        sorted(p for p in root.glob("step-???????") if (p / "state.json").is_file()) if root.is_dir() else []
    )
    return done[-1] if done else None


def prune_checkpoints(run: Path, keep_last: int) -> list[Path]:
    """Remove all but the newest `keep_last` complete checkpoints (0: keep every one); returns the
    removed. The newest is never removed, and incomplete (.tmp) folders are left to the next save."""
    root = Path(run) / CKPT_DIR
    if keep_last < 1 or not root.is_dir():
        return []
    done = sorted(p for p in root.glob("step-???????") if (p / "state.json").is_file())
    gone = done[:-keep_last]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def load_checkpoint(
    ckpt: Path, model: nn.Module, ema: nn.Module | None, opt: torch.optim.Optimizer | None
) -> dict:
    """Restore weights, EMA, optimizer and torch RNG; returns state.json (step, data position ...)."""
    model.load_state_dict(load_file(ckpt / "model.safetensors"))
    if ema is not None:
        ema.load_state_dict(load_file(ckpt / "ema.safetensors"))
    state = json.loads((ckpt / "state.json").read_text())
    tensors = load_file(ckpt / "optim.safetensors")
    if opt is not None:
        _optim_from_flat(opt, tensors, state["optim"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


def load_model(run: str | Path, ema: bool = True, device: str | torch.device = "cpu") -> tuple[DiT, dict]:
    """A trained DiT (EMA weights by default) and the run's config.json."""
    run = Path(run)
    cfg_path = run / "config.json"
    ckpt = latest_checkpoint(run)
    if not cfg_path.is_file() or ckpt is None:
        raise FileNotFoundError(
            f"no trained run at {run}: need config.json and {CKPT_DIR}/step-*/ from "
            f"`python -m jobs.train --input OUT/latents --output {run}`"
        )
    config = json.loads(cfg_path.read_text())
    model = DiT(DiTConfig.from_dict(config["model"]))
    model.load_state_dict(load_file(ckpt / ("ema.safetensors" if ema else "model.safetensors")))
    config["checkpoint"] = str(ckpt)
    return model.to(device).eval(), config
