"""Torch IterableDataset over latent shards (latents/shard-*.parquet + .manifest.json).

CONTRACT (shared with latents/dit, the trainer):

- `LatentDataset(root, batch_size=None | int, shuffle=True, seed=0, rank=None, world_size=None, ...)`.
- Each sample is a dict:
  {"clip_id": str, "caption": str,
   "latent": torch.Tensor [C, T, H, W] in its stored dtype (bf16/fp16/fp32: manifest and
             `latent_dtype` column), ALREADY NORMALISED with the VAE's latents mean/std and
             scaling factor recorded in the manifest (see latents/vae.py),
   "text_embedding": torch.Tensor [L, D] in its stored dtype (zero past the caption's tokens),
   "text_mask": torch.BoolTensor [L]}   with L = the longest caption of the sample's row group
                                        (<= manifest text_encoder.max_length).
  Widen with `.float()` where you compute (on the GPU it is free): the host then moves half the
  bytes. Options: `latent_dtype="float32"` widens latents and text embeddings on the host;
  `pad_text="max_length"` pads every caption to the text encoder's max_length (a fixed L, e.g.
  for compiled models).
  Samples of one row group share memory: treat them as read-only (or .clone()).
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
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from curate import schema as S
from curate.io import storage
from latents.shards import (
    ShardError,
    binary_column_padded,
    binary_column_stacked,
    read_manifest,
    value_digest,
    verify_shards,
)

_BIG = [S.LATENT, S.TEXT_EMBEDDING]
_SMALL = [
    S.CLIP_ID,
    S.CAPTION,
    S.LATENT_SHAPE,
    S.LATENT_DTYPE,
    S.TEXT_EMBEDDING_SHAPE,
    S.TEXT_EMBEDDING_DTYPE,
]
_COLUMNS = _BIG + _SMALL
Verify = Literal["checksum", "size", "none"]
PadText = Literal["max_length", "longest"]
LatentOut = Literal["float32", "stored"]
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

    def __init__(
        self,
        root: str | Path,
        batch_size: int | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        verify: Verify = "size",
        pad_text: PadText = "longest",
        prefetch: int = 2,
        latent_dtype: LatentOut = "stored",
        threads: int = 2,
    ):
        self.root = str(root)  # a local folder or a URI (s3://bucket/out/latents)
        self.manifest = read_manifest(self.root)
        # "checksum": sha256 of every shard file up front; "size": sizes + footers up front, and
        # each row group checked the first time this object reads it (xxh3 digests of the latent
        # and text columns from the manifest, Parquet page CRCs for the rest): a flipped byte
        # raises; "none": no checks. Either way a bad shard raises, it never reads as zeros.
        self.verify = verify
        if verify != "none":
            verify_shards(self.root, self.manifest, checksum=verify == "checksum")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        dr, dw = _dist_rank_world()
        self.rank = dr if rank is None else rank
        self.world_size = dw if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(
                f"rank must be in [0, world_size), got rank={self.rank}, world_size={self.world_size}"
            )
        self.drop_last = drop_last
        self.pad_text = pad_text
        self.latent_dtype = latent_dtype
        self.prefetch = max(0, prefetch)
        if threads < 1:
            raise ValueError(f"threads must be >= 1 (row groups decoded at once), got {threads}")
        self.threads = threads
        self.text_length = int(self.manifest["text_encoder"]["max_length"])
        # one unit = one row group = one latent shape
        self.units: list[tuple[str, int, int, tuple[int, ...]]] = []
        self.digests: list[dict[str, str] | None] = []  # per unit; None: shards written before digests
        for s in self.manifest["shards"]:
            for g, rg in enumerate(s["row_groups"]):
                self.units.append((s["file"], g, int(rg["rows"]), tuple(rg["latent_shape"])))
                self.digests.append(rg.get("digests"))
        self.epoch = 0
        self._consumed = 0
        self._verified: set[int] = set()  # units checked by this object: later epochs skip the checks
        self._footers: dict[str, pq.FileMetaData] = {}

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
            raise ValueError(
                f"state was saved with seed {state['seed']}, this dataset has seed {self.seed}; "
                "build the dataset with the same seed to resume"
            )
        self.epoch = int(state["epoch"])
        self._consumed = int(state["consumed"])

    # --- reading ------------------------------------------------------------------------------
    def _read(self, path: str, g: int, columns: list[str], page_crc: bool) -> pa.Table:
        try:
            meta = self._footers.get(path)  # parse each footer once (46 columns of CLIP_SCHEMA)
            # no memory_map: it measured no faster here, and a shard truncated while mapped
            # would kill the process (SIGBUS) instead of raising ShardError
            # a remote shard is read through pyarrow's filesystem (ranged GETs of this row group)
            source = storage.open_input(path) if storage.is_remote(path) else path
            pf = pq.ParquetFile(source, page_checksum_verification=page_crc, metadata=meta)
            self._footers[path] = pf.metadata
            # use_threads=False: row groups are already decoded `threads` at a time
            return pf.read_row_group(g, columns=columns, use_threads=False)
        except (OSError, pa.ArrowException) as e:
            raise ShardError(
                f"shard {path} row group {g} is unreadable ({e}); it is corrupt or truncated, "
                "re-run the encode job"
            ) from e

    def _read_checked(self, u: int) -> pa.Table:
        """Unit `u`'s columns; checked the first time this dataset reads it (see `verify`)."""
        file, g, rows, _ = self.units[u]
        path = storage.join(self.root, file)
        digests = self.digests[u]
        if self.verify == "none" or u in self._verified:
            return self._read(path, g, _COLUMNS, page_crc=False)
        if not digests:  # shards written before digests: Parquet page CRCs on every column
            t = self._read(path, g, _COLUMNS, page_crc=True)
        else:
            # small columns keep Parquet's page CRCs; the two big ones are checked against the
            # manifest's xxh3 digests instead (same protection, a fraction of the cost)
            small = self._read(path, g, _SMALL, page_crc=True)
            t = self._read(path, g, _BIG, page_crc=False)
            for name, want in digests.items():
                got = value_digest(t.column(name))
                if got != want:
                    raise ShardError(
                        f"{path} row group {g}: column {name} failed its checksum (manifest {want}, "
                        f"read {got}): the shard is corrupt; re-run the encode job"
                    )
            for name in _SMALL:
                t = t.append_column(small.schema.field(name), small.column(name))
        if t.num_rows != rows:  # the plan counts rows by the manifest: a mismatch would drop or misplace rows
            raise ShardError(
                f"{path} row group {g} holds {t.num_rows} rows, the manifest says {rows}; "
                "re-run the encode job"
            )
        self._verified.add(u)
        return t

    def _load_unit(self, u: int, rows: list[int]) -> _Unit:
        """Rows `rows` (in the order they will be consumed) of unit `u`, decoded into whole arrays."""
        file, g, _, shape = self.units[u]
        where = f"{storage.join(self.root, file)} row group {g}"
        t = self._read_checked(u)
        idx = np.asarray(rows, np.int64)  # consumption order: a batch is then usually a contiguous slice
        stored = self.latent_dtype == "stored"
        # (n, C, T, H, W) in consumption order, gathered (and widened to float32) in one pass here,
        # in the loader threads, so that batches are slices; or, for stored values that need no
        # gather (single samples, or rows in storage order), (N, C, T, H, W) views of the
        # reader's buffer in storage order: nothing copied at all
        by_row = stored and (self.batch_size is None or rows == sorted(rows))
        dtypes = t.column(S.LATENT_DTYPE).to_pylist()
        lat = binary_column_stacked(
            t.column(S.LATENT),
            shape,
            t.column(S.LATENT_SHAPE).to_pylist(),
            dtypes,
            f"{where} latent",
            as_float32=not stored,
            rows=None if by_row else idx,
        )
        lat_t = torch.from_numpy(lat)
        if lat.dtype == np.uint16:
            lat_t = lat_t.view(torch.bfloat16)  # uint16 bit patterns -> bf16, no copy
        t_shapes = t.column(S.TEXT_EMBEDDING_SHAPE).to_pylist()
        length = self.text_length
        if self.pad_text == "longest":  # the unit's longest caption: far fewer zeros to write and move
            length = min(length, max((int(t_shapes[r][0]) for r in rows if t_shapes[r]), default=1))
        emb, mask = binary_column_padded(
            t.column(S.TEXT_EMBEDDING),
            t_shapes,
            t.column(S.TEXT_EMBEDDING_DTYPE).to_pylist(),
            f"{where} text_embedding",
            idx,
            length,
            as_float32=not stored,
        )  # (N, L, D), (N, L)
        emb_t = torch.from_numpy(emb)
        if emb.dtype == np.uint16:
            emb_t = emb_t.view(torch.bfloat16)
        ids, caps = t.column(S.CLIP_ID).to_pylist(), t.column(S.CAPTION).to_pylist()
        return _Unit(
            [ids[r] for r in rows],
            [caps[r] for r in rows],
            lat_t,
            emb_t,
            torch.from_numpy(mask),
            {r: k for k, r in enumerate(rows)},
            lat_by_row=by_row,
        )

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
        need: dict[int, list[int]] = {}  # unit -> its rows this reader needs, in consumption order
        for it in items:
            for u, r in it:
                need.setdefault(u, []).append(r)
        remaining = {u: len(rs) for u, rs in need.items()}
        order = list(need)  # units in the order they are first needed
        # Row groups are read and decoded `prefetch` ahead in up to `threads` threads (pyarrow and
        # numpy release the GIL), so reading overlaps with the consumer (the training step) and
        # with itself, as pyarrow.parquet.read_table decodes columns on all cores.
        pool = ThreadPoolExecutor(max_workers=min(self.threads, self.prefetch)) if self.prefetch else None
        pending: dict[int, Future] = {}
        cache: dict[int, _Unit] = {}
        first_needed = 0
        try:
            for it in items:
                for u, _ in it:
                    if u in cache:
                        continue
                    if pool is None:
                        cache[u] = self._load_unit(u, need[u])
                    else:
                        for v in order[first_needed : first_needed + 1 + self.prefetch]:
                            if v not in pending and v not in cache:
                                pending[v] = pool.submit(self._load_unit, v, need[v])
                        cache[u] = pending.pop(u).result()
                    first_needed += 1
                if self.batch_size is None:
                    ((u, r),) = it
                    out = cache[u].sample(r)
                elif len({u for u, _ in it}) == 1:
                    out = cache[it[0][0]].batch([r for _, r in it])
                else:
                    out = collate([cache[u].sample(r) for u, r in it])
                for u, _ in it:
                    remaining[u] -= 1
                    if remaining[u] == 0:
                        del cache[u]
                self._consumed += 1
                yield out
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


class _Unit:
    """One row group's rows as whole tensors; samples and contiguous batches are views.

    Text rows (and ids, captions) are in consumption order: row r is at `pos[r]`. Latents are
    too, unless `lat_by_row`: then they are the row group's stored values in storage order
    (row r at r, a view of the Parquet reader's buffer: nothing copied for samples).
    """

    def __init__(
        self,
        ids: list[str],
        caps: list[str],
        lat: torch.Tensor,
        emb: torch.Tensor,
        mask: torch.Tensor,
        pos: dict[int, int],
        lat_by_row: bool = False,
    ):
        self.ids, self.caps, self.lat, self.emb, self.mask, self.pos = ids, caps, lat, emb, mask, pos
        self.lat_by_row = lat_by_row

    def sample(self, r: int) -> dict[str, Any]:
        k = self.pos[r]
        return {
            "clip_id": self.ids[k],
            "caption": self.caps[k],
            "latent": self.lat[r if self.lat_by_row else k],
            "text_embedding": self.emb[k],
            "text_mask": self.mask[k],
        }

    def batch(self, rows: list[int]) -> dict[str, Any]:
        ks = [self.pos[r] for r in rows]
        if ks != list(range(ks[0], ks[0] + len(ks))):
            return collate([self.sample(r) for r in rows])
        sl = slice(ks[0], ks[0] + len(ks))  # the usual case: views, no copy
        if not self.lat_by_row:
            lat = self.lat[sl]
        elif rows == list(range(rows[0], rows[0] + len(rows))):
            lat = self.lat[rows[0] : rows[0] + len(rows)]  # unshuffled: storage order is batch order
        else:
            lat = _stack([self.lat[r] for r in rows])  # (B, C, T, H, W): the one copy of a shuffled batch
        return {
            "clip_id": self.ids[sl],
            "caption": self.caps[sl],
            "latent": lat,
            "text_embedding": self.emb[sl],
            "text_mask": self.mask[sl],
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-shape samples: latent [B, C, T, H, W], text_embedding [B, L, D], text_mask [B, L]."""
    return {
        "clip_id": [s["clip_id"] for s in samples],
        "caption": [s["caption"] for s in samples],
        # np.stack, not torch.stack: see latents.shards.binary_column_stacked on allocation cost
        "latent": _stack([s["latent"] for s in samples]),
        "text_embedding": _stack([s["text_embedding"] for s in samples]),
        "text_mask": torch.from_numpy(np.stack([s["text_mask"].numpy() for s in samples])),
    }


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    if ts[0].dtype == torch.bfloat16:  # numpy has no bf16: stack the bit patterns
        return torch.from_numpy(np.stack([t.view(torch.int16).numpy() for t in ts])).view(torch.bfloat16)
    return torch.from_numpy(np.stack([t.numpy() for t in ts]))
