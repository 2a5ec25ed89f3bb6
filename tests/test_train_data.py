"""The trainer's data path: row groups on demand, memory flat in the number of shards."""

from __future__ import annotations

import pytest
import torch

from jobs.bench.shards import make_shards
from latents.dataset import LatentDataset
from latents.dit.train import batch_positions, epoch_permutation
from latents.samples import ShardSamples

SHAPES = [(4, 2, 4, 4), (4, 1, 4, 6)]


def _peak_resident(data: ShardSamples, steps: int, batch: int) -> tuple[int, int]:
    """Visit `steps` batches in the trainer's order; peak decoded rows held and peak cached row groups."""
    rows, units = 0, 0
    for step in range(steps):
        for i in batch_positions(0, step, batch, len(data)):
            s = data[i]
            assert s["latent"].shape[0] == 4
            rows = max(rows, sum(len(u.ids) for u in data._cache.values()))
            units = max(units, data.resident_units)
    return rows, units


@pytest.mark.parametrize("verify", ["size"])
def test_samples_equal_the_dataset_and_memory_is_flat_in_shards(tmp_path, verify):
    small, big = tmp_path / "x1", tmp_path / "x8"
    make_shards(small, 256, SHAPES, text_tokens=8, text_dim=16, rows_per_shard=128)
    make_shards(big, 8 * 256, SHAPES, text_tokens=8, text_dim=16, rows_per_shard=128)
    data = ShardSamples(small, cache_units=3, verify=verify)
    ref = list(LatentDataset(small, batch_size=None, shuffle=False, rank=0, world_size=1))
    assert len(data) == len(ref) == 256
    for i in (0, 63, 64, 200, 255, -1):
        a, b = data[i], ref[i]
        assert a["clip_id"] == b["clip_id"] and torch.equal(a["latent"], b["latent"])
        assert torch.equal(a["text_embedding"], b["text_embedding"]) and torch.equal(a["text_mask"], b["text_mask"])
    with pytest.raises(IndexError):
        data[256]
    peak1, units1 = _peak_resident(ShardSamples(small, cache_units=3, verify=verify), steps=24, batch=8)
    big_data = ShardSamples(big, cache_units=3, verify=verify)
    peak8, units8 = _peak_resident(big_data, steps=24, batch=8)
    assert units1 <= 3 and units8 <= 3
    assert big_data.loads > 3  # it did read more row groups than it holds
    assert peak8 <= 1.5 * peak1, (peak1, peak8)  # flat: 8x the shards, not 8x the memory
    assert sum(big_data.latent_shapes().values()) == 8 * 256


def test_epoch_permutation_is_computed_once_per_epoch():
    epoch_permutation.cache_clear()
    pos = [batch_positions(3, step, 4, 10) for step in range(5)]  # 20 positions: two epochs
    assert epoch_permutation.cache_info().misses == 2
    flat = [p for b in pos for p in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    ref = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 1_000_003 + 1))  # the old per-sample rule
    assert flat[10:] == ref.tolist()
