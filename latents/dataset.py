"""Torch IterableDataset over latent shards (latents/shard-*.parquet + manifest.json).

CONTRACT (shared with latents/dit, the trainer):

- `LatentDataset(root, batch_size=None | int, shuffle=True, seed=0, rank=None, world_size=None, ...)`.
- Each sample is a dict:
  {"clip_id": str, "caption": str,
   "latent": torch.Tensor [C, T, H, W] float32, ALREADY NORMALISED with the VAE's
             latents mean/std and scaling factor recorded in the manifest (see latents/vae.py),
   "text_embedding": torch.Tensor [L, D] float32 (zero past the caption's tokens),
   "text_mask": torch.BoolTensor [L]}   with L = manifest text_encoder.max_length.
- `batch_size=None`: variable-size samples (for packing, NaViT style).
  `batch_size=B`: bucket-homogeneous batches (all samples share one latent shape), stacked:
  "latent" [B, C, T, H, W], "text_embedding" [B, L, D], "text_mask" [B, L],
  "clip_id"/"caption" lists of str. Use with `DataLoader(ds, batch_size=None)`.
- Rows are split by rank (DDP; from torch.distributed when not given) and DataLoader worker;
  every row is read exactly once per epoch over all ranks and workers. `set_epoch(e)` reshuffles
  deterministically from (seed, epoch).
- Resumable: `state_dict()` / `load_state_dict(state)` save and restore (epoch, items consumed);
  see the class docstring for DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from curate import schema as S
from latents.shards import ShardError, binary_column_to_float32, read_manifest, verify_shards
from latents.text import pad_embedding

_COLUMNS = [S.CLIP_ID, S.CAPTION, S.LATENT, S.LATENT_SHAPE, S.LATENT_DTYPE, S.TEXT_EMBEDDING,
            S.TEXT_EMBEDDING_SHAPE, S.TEXT_EMBEDDING_DTYPE]
Verify = Literal["checksum", "size", "none"]
Item = list[tuple[int, int]]  # (unit index, row within the unit's row group)


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class LatentDataset(IterableDataset):
    """See the module docstring for the sample contract.

    Splitting: the epoch's row order (row groups in a seeded random order, rows shuffled inside
    each) is cut into `world_size * num_workers` contiguous spans of equal size (+-1 row), one
    per (rank, worker): every row exactly once, each reader touches only the row groups of its span.

    Resume: `state_dict()` counts the items (samples or batches) this dataset object yielded
    (exact with `num_workers=0`). With DataLoader workers, the trainer counts the items its rank
    consumed and restores with `load_state_dict({"epoch": e, "consumed": n, "seed": s})`; the
    DataLoader (default in_order=True, same num_workers) then continues the same stream exactly,
    as long as the workers' item counts differ by at most one (the plan balances rows to +-1;
    bucket batching can leave a few extra partial batches at the very end of an epoch).
    """

    def __init__(self, root: str | Path, batch_size: int | None = None, *, shuffle: bool = True, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, drop_last: bool = False,
                 verify: Verify = "size"):
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        if verify != "none":
            verify_shards(self.root, self.manifest, checksum=verify == "checksum")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        dr, dw = _dist_rank_world()
        self.rank = dr if rank is None else rank
        self.world_size = dw if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={self.rank}, world_size={self.world_size}")
        self.drop_last = drop_last
        self.text_length = int(self.manifest["text_encoder"]["max_length"])
        # one unit = one row group = one latent shape
        self.units: list[tuple[str, int, int, tuple[int, ...]]] = []
        for s in self.manifest["shards"]:
            for g, rg in enumerate(s["row_groups"]):
                self.units.append((s["file"], g, int(rg["rows"]), tuple(rg["latent_shape"])))
        self.epoch = 0
        self._consumed = 0

    # --- plan (metadata only) -----------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._consumed = 0

    def __len__(self) -> int:
        """Rows in the whole dataset (all ranks)."""
        return sum(u[2] for u in self.units)

    def plan(self, epoch: int, reader: int, readers: int) -> list[Item]:
        """The items (one row each, or bucket batches) reader `reader` of `readers` yields in `epoch`."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.units)) if self.shuffle else np.arange(len(self.units))
        total = sum(u[2] for u in self.units)
        lo, hi = reader * total // readers, (reader + 1) * total // readers
        rows: list[tuple[int, int]] = []
        pos = 0
        for u in order:
            n = self.units[u][2]
            a, b = max(lo, pos), min(hi, pos + n)
            if a < b:
                local = np.arange(a - pos, b - pos)
                if self.shuffle:
                    local = rng.permutation(local)
                rows.extend((int(u), int(r)) for r in local)
            pos += n
        if self.batch_size is None:
            return [[r] for r in rows]
        items: list[Item] = []
        pending: dict[tuple[int, ...], Item] = {}
        for r in rows:
            buf = pending.setdefault(self.units[r[0]][3], [])
            buf.append(r)
            if len(buf) == self.batch_size:
                items.append(list(buf))
                buf.clear()
        if not self.drop_last:
            items.extend(b for b in pending.values() if b)
        return items

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self._consumed, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this dataset has seed {self.seed}; "
                             "build the dataset with the same seed to resume")
        self.epoch = int(state["epoch"])
        self._consumed = int(state["consumed"])

    # --- reading ------------------------------------------------------------------------------
    def _load_unit(self, u: int, rows: list[int]) -> dict[int, dict[str, Any]]:
        file, g, _, shape = self.units[u]
        path = self.root / file
        try:
            pf = pq.ParquetFile(path, page_checksum_verification=True)
            t = pf.read_row_group(g, columns=_COLUMNS)
        except (OSError, pa.ArrowException) as e:
            raise ShardError(f"shard {path} row group {g} is unreadable ({e}); it is corrupt or truncated, "
                             "re-run the encode job") from e
        t = t.take(pa.array(rows))
        where = f"{path} row group {g}"
        lat = binary_column_to_float32(t.column(S.LATENT), t.column(S.LATENT_SHAPE).to_pylist(),
                                       t.column(S.LATENT_DTYPE).to_pylist(), f"{where} latent")
        txt = binary_column_to_float32(t.column(S.TEXT_EMBEDDING), t.column(S.TEXT_EMBEDDING_SHAPE).to_pylist(),
                                       t.column(S.TEXT_EMBEDDING_DTYPE).to_pylist(), f"{where} text_embedding")
        ids, caps = t.column(S.CLIP_ID).to_pylist(), t.column(S.CAPTION).to_pylist()
        out = {}
        for k, r in enumerate(rows):
            if tuple(lat[k].shape) != shape:
                raise ShardError(f"{where}: row {r} has latent shape {list(lat[k].shape)}, the manifest says "
                                 f"{list(shape)}; re-run the encode job")
            emb, mask = pad_embedding(txt[k], self.text_length)
            out[r] = {"clip_id": ids[k], "caption": caps[k], "latent": lat[k], "text_embedding": emb,
                      "text_mask": mask}
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        # important: a restarted DataLoader asks worker 0 first, but the next item in the saved
        # stream belongs to worker (consumed % nw); so new worker w plays the part of old worker
        # (w + consumed) % nw, and skips the items that worker already yielded.
        wid = (wid + self._consumed) % nw
        items = self.plan(self.epoch, self.rank * nw + wid, self.world_size * nw)
        skip = math.ceil((self._consumed - wid) / nw) if self._consumed > wid else 0
        items = items[skip:]
        need: dict[int, list[int]] = {}
        for it in items:
            for u, r in it:
                need.setdefault(u, []).append(r)
        remaining = {u: len(rs) for u, rs in need.items()}
        cache: dict[int, dict[int, dict[str, Any]]] = {}
        for it in items:
            samples = []
            for u, r in it:
                if u not in cache:
                    # load every row of this unit this reader still needs, once
                    cache[u] = self._load_unit(u, sorted(need[u]))
                samples.append(cache[u].pop(r))
                remaining[u] -= 1
                if remaining[u] == 0:
                    del cache[u]
            self._consumed += 1
            yield samples[0] if self.batch_size is None else collate(samples)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-shape samples: latent [B, C, T, H, W], text_embedding [B, L, D], text_mask [B, L]."""
    return {
        "clip_id": [s["clip_id"] for s in samples],
        "caption": [s["caption"] for s in samples],
        "latent": torch.stack([s["latent"] for s in samples]),
        "text_embedding": torch.stack([s["text_embedding"] for s in samples]),
        "text_mask": torch.stack([s["text_mask"] for s in samples]),
    }
