"""Where model weights are, without loading them: ONE rule for the check and every loader.

Every real model of a preset names its weights as a `Weights` (hub repo, revision, every file
its loader opens). `model_root` is the rule both the check (`locate`, `report`, `require`) and
the loaders (`local_repo`) follow, so the same folder always gives the same answer:

1. a local folder given as the model itself (`~` expanded): that folder;
2. else `<weights_dir>/<repo>` when that folder exists, complete or not (the folder
   `hf download REPO --local-dir <weights_dir>/REPO` fills; `weights_dir` is `--weights-dir` of
   every job, default $TUBELET_WEIGHTS): the check then names each file it lacks, and never
   falls back to the cache for a model whose folder is there (the loaders would not either);
3. else the Hugging Face cache (`huggingface_hub.try_to_load_from_cache`, honours HF_HOME).

The check looks at files only (nothing is read but small index files, nothing downloads).
`require(weights)` raises one UsageError listing every missing model, the files it lacks and
the exact `hf download ...` line that fetches it; the jobs call it on the driver before Ray
starts (`python -m jobs.check --preset default` prints the same report without running anything).
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

    `files`: paths inside the repo that must all exist. `one_of`: for each entry, one of its paths
    must exist (a chat template as .json or .jinja). `any_of`: groups of paths; one whole group
    must exist (weights in safetensors or .bin). A `*.index.json` entry also requires every shard
    it names. `include`: the --include patterns of the download line (empty: the whole repo).
    For `url` weights (not on the hub), `repo` is the file name looked up in the weights folders.
    """

    what: str  # "CLIP ViT-L-14/openai", "VAE", ...
    repo: str
    revision: str | None = None
    files: tuple[str, ...] = ()
    one_of: tuple[tuple[str, ...], ...] = ()
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


def model_root(repo: str, weights_dir: str | None) -> Path | None:
    """THE rule (check and loaders): a local folder given as `repo`; else `<weights_dir>/<repo>`
    when that folder exists (complete or not); else None, meaning the HF cache."""
    p = Path(expand(repo) or repo)
    if p.is_dir():
        return p
    if weights_dir:
        d = Path(expand(weights_dir) or weights_dir) / repo
        if d.is_dir():
            return d
    return None


def local_repo(repo: str, weights_dir: str | None) -> str:
    """What a loader passes to `from_pretrained`: `model_root` as a path, else the hub id (HF cache)."""
    root = model_root(repo, weights_dir)
    return str(root) if root is not None else repo


def subfolder_kwargs(source: str, repo: str, sub: str) -> dict[str, str]:
    """`from_pretrained` kwargs for a model inside a repo's `sub` folder (a pipeline's `vae/`).

    A hub layout (`<weights_dir>/<repo>` or the cache) always has `sub`; only a folder the user
    gave as the model itself (`repo` is a directory) may be the sub-model's own folder.
    """
    if not sub:
        return {}
    own = Path(expand(repo) or repo)
    if own.is_dir() and not (own / sub).is_dir():
        return {}
    return {"subfolder": sub}


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


def _lacking(w: Weights, find) -> list[str]:
    """The files of `w` that `find` does not see ("a or b" for alternatives; shards of an index
    included; for weight groups, those of the group closest to complete). Empty: complete."""

    def gaps(rel: str) -> list[str]:
        p = find(rel)
        if p is None:
            return [rel]
        if rel.endswith(".index.json"):
            base = rel.rpartition("/")[0]
            try:
                shards = sorted(set(json.loads(p.read_text()).get("weight_map", {}).values()))
            except (ValueError, AttributeError):  # a truncated download: not usable
                return [f"{rel} (unreadable)"]
            full = [f"{base}/{s}" if base else s for s in shards]
            return [f for f in full if find(f) is None]
        return []

    out = [g for f in w.files for g in gaps(f)]
    for alts in w.one_of:
        if all(gaps(a) for a in alts):
            out.append(" or ".join(alts))
    if w.any_of:
        per_group = [[g for f in grp for g in gaps(f)] for grp in w.any_of]
        if all(per_group):
            if all(g == list(grp) and len(grp) == 1 for g, grp in zip(per_group, w.any_of)):
                # one file each way and none of them here: name every way (any one serves)
                out.append(" or ".join(grp[0] for grp in w.any_of))
            else:
                # the group the download started on (fewest gaps; ties: the first, the preferred format)
                out += min(per_group, key=len)
    return out


def missing_files(w: Weights, weights_dir: str | None = None) -> list[str]:
    """What the loaders would not find, where `model_root` says they look (empty: all there)."""
    if w.url:
        roots = _local_dirs(w, weights_dir)
        return [] if any(_exists_local(r, w.repo) for r in roots) else [w.repo]
    root = model_root(w.repo, weights_dir)
    if root is not None:
        return _lacking(w, lambda rel: _exists_local(root, rel))
    return _lacking(w, lambda rel: _exists_cache(w, rel))


def locate(w: Weights, weights_dir: str | None = None) -> Path | None:
    """The folder holding all of `w` (by `model_root`: local folder, else the HF cache snapshot),
    or None when anything is missing there."""
    if w.url:
        for root in _local_dirs(w, weights_dir):
            if _exists_local(root, w.repo):
                return root
        return None
    root = model_root(w.repo, weights_dir)
    if root is not None:
        return root if not _lacking(w, lambda rel: _exists_local(root, rel)) else None
    if _lacking(w, lambda rel: _exists_cache(w, rel)):
        return None
    for rel in (*w.files, *(f for g in w.one_of for f in g), *(f for g in w.any_of for f in g)):
        hit = _exists_cache(w, rel)
        if hit is not None:  # .../snapshots/<commit>/<rel> -> .../snapshots/<commit>
            return hit.parents[len(Path(rel).parts) - 1]
    return None


def missing(weights: Iterable[Weights], weights_dir: str | None = None) -> list[Weights]:
    return [w for w in weights if locate(w, weights_dir) is None]


def report(weights: Iterable[Weights], weights_dir: str | None = None) -> tuple[list[str], list[Weights]]:
    """(one line per model: found where / MISSING + fetch line, the missing ones)."""
    lines, absent = [], []
    for w in weights:
        where = locate(w, weights_dir)
        if where is None:
            absent.append(w)
            lacks = ", ".join(missing_files(w, weights_dir))
            lines.append(f"MISSING {w.what}: {w.repo} lacks {lacks}  ->  {w.download_line(weights_dir)}")
        else:
            lines.append(f"ok      {w.what}: {w.repo}  ({where})")
    return lines, absent


def require(weights: Iterable[Weights], weights_dir: str | None = None) -> None:
    """Raise UsageError naming every missing model and the exact line that fetches it."""
    absent = missing(list(weights), weights_dir)
    if not absent:
        return
    where = f"--weights-dir {weights_dir} or the HF cache" if weights_dir else "the HF cache (HF_HOME)"
    fetch = "; ".join(
        f"{w.what} (lacks {', '.join(missing_files(w, weights_dir))}): `{w.download_line(weights_dir)}`"
        for w in absent
    )
    raise UsageError(
        f"model weights must be present locally before the job starts, {len(absent)} missing from {where}: "
        f"{fetch}; fetch them on a connected machine (`python -m jobs.check --preset NAME` lists them), "
        "or pass a local directory with --weights-dir DIR (DIR/<repo id> as `hf download REPO --local-dir` "
        "writes it), or use --preset smoke"
    )
