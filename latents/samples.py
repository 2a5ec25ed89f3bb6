"""The trainer's view of latent shards: sample sources, the seekable training order, random access.

- `ShardSource` / `ListSource`: units (row groups, or single in-memory samples) listed from
  metadata alone, each decoded on demand (`load_unit`).
- `StreamOrder`: the training order, a pure function of (seed, epoch, global position): row
  groups shuffled, then rows within a bounded window of row groups (`latents.dit.loader` reads
  it with a background thread, holding about two windows).
- `ShardSamples`: random access (`data[i]`) through an LRU of row groups, for inspection.

`ShardSamples` is an index of row groups from the manifest (metadata only) and an LRU cache
of at most `cache_units` decoded row groups; a sample is what `LatentDataset(shuffle=False,
batch_size=None)` yields for that row (same checks, same stored dtype and text padding).
Cost: a sample whose row group is not cached decodes the whole row group (64-256 rows), so a
uniformly random order over a set much larger than the cache reads each row group about once
per sample it holds: the trainer streams with `StreamOrder` instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latents.dataset import LatentDataset


class ShardSamples(Sequence):
    def __init__(self, root: str | Path, cache_units: int = 64, verify: str = "size"):
        if cache_units < 1:
            raise ValueError(f"cache_units must be >= 1 (row groups kept decoded), got {cache_units}")
        self._ds = LatentDataset(
            root,
            batch_size=None,
            shuffle=False,
            rank=0,
            world_size=1,
            latent_dtype="stored",
            pad_text="longest",
            verify=verify,
        )  # type: ignore[arg-type]
        self.manifest = self._ds.manifest
        self.cache_units = cache_units
        self._starts = np.cumsum([0] + [u[2] for u in self._ds.units])  # (units + 1,) first row of each unit
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self.loads = 0  # row groups decoded so far (for tests and benchmarks)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def resident_units(self) -> int:
        return len(self._cache)

    def latent_shapes(self) -> dict[tuple[int, ...], int]:
        """Rows per latent shape, from the manifest (no data read)."""
        out: dict[tuple[int, ...], int] = {}
        for _, _, rows, shape in self._ds.units:
            out[shape] = out.get(shape, 0) + rows
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample index must be in [0, {n}), got {i}")
        i %= n
        u = int(np.searchsorted(self._starts, i, side="right") - 1)
        unit = self._cache.get(u)
        if unit is None:
            unit = self._ds._load_unit(u, list(range(self._ds.units[u][2])))
            self.loads += 1
            self._cache[u] = unit
            if len(self._cache) > self.cache_units:
                self._cache.popitem(last=False)  # least recently used
        else:
            self._cache.move_to_end(u)
        return unit.sample(i - int(self._starts[u]))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]


# --- the trainer's sample stream --------------------------------------------------------------

Shape = tuple[int, ...]


class ListSource:
    """Samples already in memory (tests, `synthetic:N`) as a source: each sample is one unit."""

    def __init__(self, samples: Sequence[dict[str, Any]]):
        if not len(samples):
            raise ValueError("no training samples: the dataset is empty; check --input")
        self._samples = samples
        self.units: list[tuple[int, Shape]] = [(1, tuple(int(x) for x in s["latent"].shape)) for s in samples]
        self.in_channels = int(samples[0]["latent"].shape[0])
        self.text_dim = int(samples[0]["text_embedding"].shape[-1])
        self.loads = 0

    def load_unit(self, u: int) -> list[dict[str, Any]]:
        self.loads += 1
        return [self._samples[u]]

    def latent_shapes(self) -> dict[Shape, int]:
        return _shape_counts(self.units)


class ShardSource:
    """A latent shard folder as a source: units are row groups, listed from the manifest.

    Building it reads the manifest and (verify="size") the shard sizes and footers: no latent row.
    `load_unit(u)` decodes row group u (with LatentDataset's checks, stored dtype, text padded to
    the row group's longest caption).
    """

    def __init__(self, root: str | Path, verify: str = "size"):
        self._ds = LatentDataset(
            root,
            batch_size=None,
            shuffle=False,
            rank=0,
            world_size=1,
            latent_dtype="stored",
            pad_text="longest",
            verify=verify,
        )  # type: ignore[arg-type]
        self.manifest = self._ds.manifest
        self.units = [(rows, shape) for _, _, rows, shape in self._ds.units]
        if not self.units:
            raise ValueError(
                f"no training samples: the manifest of {root} lists no row groups; check --input"
            )
        self.in_channels = int(self.units[0][1][0])
        self.text_dim = int(self.manifest["text_encoder"]["dim"])
        self.loads = 0  # row groups decoded so far (for tests and benchmarks)

    def load_unit(self, u: int) -> list[dict[str, Any]]:
        self.loads += 1
        rows = self.units[u][0]
        unit = self._ds._load_unit(u, list(range(rows)))
        return [unit.sample(r) for r in range(rows)]

    def latent_shapes(self) -> dict[Shape, int]:
        return _shape_counts(self.units)


def _shape_counts(units: Sequence[tuple[int, Shape]]) -> dict[Shape, int]:
    out: dict[Shape, int] = {}
    for rows, shape in units:
        out[shape] = out.get(shape, 0) + rows
    return out


class StreamOrder:
    """The training order: a pure function of (seed, epoch, global position).

    Epoch e visits the units (row groups) `ids` in a seeded random order; consecutive runs of
    `window` units form a window, and the rows of a window are visited in a seeded random order.
    Global position p is row `p mod N` of epoch `p // N` (N rows in all), so any reader (every
    DDP rank, a resumed run) finds the same sample at the same position without reading data,
    and a reader only ever needs the units of the window it is in (plus the next, prefetched):
    host memory follows `window`, not the dataset.

    Cost: O(units) per epoch (one permutation and a cumulative sum, computed once per epoch and
    kept for two epochs), O(window rows) per window; fine to ~10^7 row groups.
    Reference: the shuffle buffer of webdataset / tf.data, made seekable.
    """

    def __init__(self, units: Sequence[tuple[int, Shape]], ids: Sequence[int], seed: int, window: int):
        if window < 1:
            raise ValueError(f"window must be >= 1 (row groups shuffled together), got {window}")
        if not ids:
            raise ValueError(
                "no training samples: every row group is held out for validation; lower --val-rows"
            )
        self.rows = np.asarray([units[u][0] for u in ids], np.int64)
        self.ids = np.asarray(ids, np.int64)
        self.seed, self.window = seed, window
        self.n = int(self.rows.sum())
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(units in visiting order, first global-in-epoch row of each window + the end)."""
        if e not in self._epochs:
            perm = np.random.default_rng([self.seed, e]).permutation(len(self.ids))
            per_window = np.add.reduceat(self.rows[perm], np.arange(0, len(perm), self.window))
            self._epochs[e] = (perm, np.concatenate([[0], np.cumsum(per_window)]))
            if len(self._epochs) > 2:  # the current epoch and the next
                self._epochs.popitem(last=False)
        return self._epochs[e]

    def _window(self, e: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(unit, row) of each position of window w of epoch e, in visiting order."""
        key = (e, w)
        if key not in self._windows:
            perm, _ = self._epoch(e)
            members = perm[w * self.window : (w + 1) * self.window]
            unit = np.repeat(self.ids[members], self.rows[members])
            row = np.concatenate([np.arange(r) for r in self.rows[members]])
            shuffle = np.random.default_rng([self.seed, e, w]).permutation(len(unit))
            self._windows[key] = (unit[shuffle], row[shuffle])
            if len(self._windows) > 4:
                self._windows.popitem(last=False)
        return self._windows[key]

    def window_of(self, p: int) -> tuple[int, int]:
        """(epoch, window) holding global position p."""
        e, k = divmod(p, self.n)
        _, starts = self._epoch(e)
        return e, int(np.searchsorted(starts, k, side="right") - 1)

    def window_units(self, e: int, w: int) -> list[int]:
        perm, _ = self._epoch(e)
        return [int(u) for u in self.ids[perm[w * self.window : (w + 1) * self.window]]]

    def locate(self, p: int) -> tuple[int, int]:
        """(unit, row within the unit) at global position p."""
        e, k = divmod(p, self.n)
        _, starts = self._epoch(e)
        w = int(np.searchsorted(starts, k, side="right") - 1)
        unit, row = self._window(e, w)
        i = k - int(starts[w])
        return int(unit[i]), int(row[i])
