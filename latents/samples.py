"""Random access to the samples of a latent shard folder, reading row groups on demand.

The trainer visits samples in a seeded order that must not depend on the worker count (so a
run resumes exactly and DDP ranks agree); it needs `data[i]`, not a stream. `ShardSamples`
is that map-style view: an index of row groups from the manifest (metadata only), and an
LRU cache of at most `cache_units` decoded row groups. Memory is bounded by the cache,
whatever the number of shards; a sample is what `LatentDataset(shuffle=False,
batch_size=None)` yields for that row (same checks, same stored dtype and text padding).

Cost: a sample whose row group is not cached decodes the whole row group (64-256 rows);
a uniformly random order over a set much larger than the cache reads each row group about
once per sample it holds. Give the cache room for one batch's row groups at least.
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
        self._ds = LatentDataset(root, batch_size=None, shuffle=False, rank=0, world_size=1,
                                 latent_dtype="stored", pad_text="longest", verify=verify)  # type: ignore[arg-type]
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
