"""Where model weights are, without loading them: a local weights folder or the HF cache.

Every real model of a preset names its weights as a `Weights` (hub repo, revision, the files
that must be present). `locate` looks for them, cheaply (file existence only, nothing is
read but small index files, nothing downloads):

1. `<weights_dir>/<repo>`: the folder `hf download REPO --local-dir <weights_dir>/REPO` fills
   (`weights_dir` is `--weights-dir` of every job, default $TUBELET_WEIGHTS);
2. the Hugging Face cache (`huggingface_hub.try_to_load_from_cache`, honours HF_HOME).

`require(weights)` raises one UsageError listing every missing model with the exact
`hf download ...` line that fetches it; the jobs call it on the driver before Ray starts
(`python -m jobs.check --preset default` prints the same report without running anything).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from curate.errors import UsageError

WEIGHTS_ENV = "TUBELET_WEIGHTS"


def expand(path: str | None) -> str | None:
    """`~` and `$VARS` expanded (a path typed by a user); None stays None."""
    return os.path.expandvars(os.path.expanduser(path)) if path else path


def default_weights_dir() -> str | None:
    """--weights-dir default: $TUBELET_WEIGHTS, if set."""
    return expand(os.environ.get(WEIGHTS_ENV)) or None


@dataclass(frozen=True)
class Weights:
    """One model's weights: hub `repo` (or a plain file for `url` weights) and what must be there.

    `files`: paths inside the repo that must all exist. `any_of`: groups of paths; one whole group
    must exist (weights in safetensors or .bin). A `*.index.json` entry also requires every shard
    it names. `include`: the --include patterns of the download line (empty: the whole repo).
    For `url` weights (not on the hub), `repo` is the file name looked up in the weights folders.
    """

    what: str  # "CLIP ViT-L-14/openai", "VAE", ...
    repo: str
    revision: str | None = None
    files: tuple[str, ...] = ()
    any_of: tuple[tuple[str, ...], ...] = ()
    include: tuple[str, ...] = ()
    url: str | None = None  # a file outside the hub: fetched with curl into the weights folder

    def download_line(self, weights_dir: str | None = None) -> str:
        """The exact command that puts these weights where `locate` finds them."""
        if self.url:
            d = weights_dir or "~/.cache/tubelet/weights"
            return f"mkdir -p {d} && curl -L -o {d}/{self.repo} {self.url}"
        parts = ["hf", "download", self.repo]
        if self.revision:
            parts += ["--revision", self.revision]
        if self.include:
            parts += ["--include", *(f"'{p}'" for p in self.include)]
        if weights_dir:
            parts += ["--local-dir", str(Path(weights_dir) / self.repo)]
        return " ".join(parts)


def _local_dirs(w: Weights, weights_dir: str | None) -> list[Path]:
    roots = [weights_dir] if weights_dir else []
    if w.url:  # a bare file: also the historical places of the aesthetic head
        roots += [default_weights_dir(), "~/.cache/tubelet/weights"]
    return [Path(expand(r)) for r in roots if r]


def _exists_local(root: Path, rel: str) -> Path | None:
    p = root / rel
    return p if p.is_file() else None


def _exists_cache(w: Weights, rel: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(w.repo, rel, revision=w.revision)
    except Exception:  # a malformed repo id or revision: not present
        return None
    return Path(hit) if isinstance(hit, str) else None


def _complete(w: Weights, find) -> bool:
    """All of `files` and one whole group of `any_of` present (shards of an index included)."""

    def ok(rel: str) -> bool:
        p = find(rel)
        if p is None:
            return False
        if rel.endswith(".index.json"):
            base = rel.rpartition("/")[0]
            try:
                shards = set(json.loads(p.read_text()).get("weight_map", {}).values())
            except (ValueError, AttributeError):  # a truncated download: not usable
                return False
            return all(find(f"{base}/{s}" if base else s) is not None for s in shards)
        return True

    return all(ok(f) for f in w.files) and (not w.any_of or any(all(ok(f) for f in g) for g in w.any_of))


def locate(w: Weights, weights_dir: str | None = None) -> Path | None:
    """The folder holding `w` (weights folder first, then the HF cache), or None when incomplete."""
    for root in _local_dirs(w, weights_dir):
        base = root if w.url else root / w.repo
        if _complete(w, lambda rel, b=base: _exists_local(b, rel)):
            return base
    if w.url:
        return None
    if _complete(w, lambda rel: _exists_cache(w, rel)):
        for rel in (*w.files, *(f for g in w.any_of for f in g)):
            hit = _exists_cache(w, rel)
            if hit is not None:  # .../snapshots/<commit>/<rel> -> .../snapshots/<commit>
                return hit.parents[len(Path(rel).parts) - 1]
    return None


def local_repo(repo: str, weights_dir: str | None) -> str:
    """A local folder (`~` expanded) as is; else `<weights_dir>/<repo>` when it exists; else the hub id."""
    p = expand(repo) or repo
    if Path(p).is_dir():
        return p
    if weights_dir and (Path(expand(weights_dir) or "") / repo).is_dir():
        return str(Path(expand(weights_dir) or "") / repo)
    return repo


def missing(weights: Iterable[Weights], weights_dir: str | None = None) -> list[Weights]:
    return [w for w in weights if locate(w, weights_dir) is None]


def report(weights: Iterable[Weights], weights_dir: str | None = None) -> tuple[list[str], list[Weights]]:
    """(one line per model: found where / MISSING + fetch line, the missing ones)."""
    lines, absent = [], []
    for w in weights:
        where = locate(w, weights_dir)
        if where is None:
            absent.append(w)
            lines.append(f"MISSING {w.what}: {w.repo}  ->  {w.download_line(weights_dir)}")
        else:
            lines.append(f"ok      {w.what}: {w.repo}  ({where})")
    return lines, absent


def require(weights: Iterable[Weights], weights_dir: str | None = None) -> None:
    """Raise UsageError naming every missing model and the exact line that fetches it."""
    absent = missing(list(weights), weights_dir)
    if not absent:
        return
    where = f"--weights-dir {weights_dir} or the HF cache" if weights_dir else "the HF cache (HF_HOME)"
    fetch = "; ".join(f"{w.what}: `{w.download_line(weights_dir)}`" for w in absent)
    raise UsageError(
        f"model weights must be present locally before the job starts, {len(absent)} missing from {where}: "
        f"{fetch}; fetch them on a connected machine (`python -m jobs.check --preset NAME` lists them), "
        "or pass a local directory with --weights-dir DIR (DIR/<repo id> as `hf download REPO --local-dir` "
        "writes it), or use --preset smoke"
    )
