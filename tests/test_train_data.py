"""The trainer's data path: row groups on demand, memory flat in the number of shards; the
streaming order (seeded, seekable) and the step plan (token budget -> ranks -> micro-batches)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from jobs.bench.shards import make_shards
from latents.dataset import LatentDataset
from latents.dit.loader import StepLoader, assign_ranks, micro_batches, step_end
from latents.samples import ShardSamples, StreamOrder

SHAPES = [(4, 2, 4, 4), (4, 1, 4, 6)]


def _peak_resident(data: ShardSamples, steps: int, batch: int) -> tuple[int, int]:
    """Visit `steps` batches in the trainer's order; peak decoded rows held and peak cached row groups."""
    rows, units = 0, 0
    for step in range(steps):
        for i in torch.randperm(len(data), generator=torch.Generator().manual_seed(step))[:batch].tolist():
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
        assert torch.equal(a["text_embedding"], b["text_embedding"]) and torch.equal(
            a["text_mask"], b["text_mask"]
        )
    with pytest.raises(IndexError):
        data[256]
    peak1, units1 = _peak_resident(ShardSamples(small, cache_units=3, verify=verify), steps=24, batch=8)
    big_data = ShardSamples(big, cache_units=3, verify=verify)
    peak8, units8 = _peak_resident(big_data, steps=24, batch=8)
    assert units1 <= 3 and units8 <= 3
    assert big_data.loads > 3  # it did read more row groups than it holds
    assert peak8 <= 1.5 * peak1, (peak1, peak8)  # flat: 8x the shards, not 8x the memory
    assert sum(big_data.latent_shapes().values()) == 8 * 256


UNITS = [(n, (4, 1, 4, 4)) for n in (5, 3, 7, 4, 6, 2, 8, 5)]  # (rows, latent shape) per row group


def _visits(order: StreamOrder, start: int, stop: int) -> list[tuple[int, int]]:
    return [order.locate(p) for p in range(start, stop)]


def test_stream_order_is_seeded_seekable_and_windowed():
    ids = list(range(len(UNITS)))
    n = sum(r for r, _ in UNITS)
    a = StreamOrder(UNITS, ids, seed=3, window=2)
    epoch0 = _visits(a, 0, n)
    assert sorted(epoch0) == sorted((u, r) for u in ids for r in range(UNITS[u][0]))  # every row once
    assert (
        _visits(StreamOrder(UNITS, ids, seed=3, window=2), 0, n) == epoch0
    )  # same (seed, epoch): same order
    assert _visits(a, n, 2 * n) != epoch0  # the next epoch is reshuffled
    assert _visits(StreamOrder(UNITS, ids, seed=4, window=2), 0, n) != epoch0
    resumed = StreamOrder(UNITS, ids, seed=3, window=2)  # a fresh reader seeking to position 17
    assert _visits(resumed, 17, 2 * n) == _visits(a, 17, 2 * n)
    for e in (0, 1):  # each window of 2 units is visited contiguously: a reader holds ~one window
        for w in range(len(UNITS) // 2):
            units = set(a.window_units(e, w))
            assert len(units) == 2
            at = [k for k, (u, _) in enumerate(_visits(a, e * n, (e + 1) * n)) if u in units]
            assert at == list(range(at[0], at[0] + len(at)))


def test_step_plan_respects_the_token_budget_and_partitions_ranks():
    lengths = np.random.default_rng(0).integers(10, 200, 400).tolist()
    start, steps = 0, []
    while start < 300:
        end = step_end(lambda p: lengths[p], start, batch_size=8, step_tokens=1000)
        assert end > start and (end - start == 1 or sum(lengths[start:end]) <= 1000)
        assert (
            sum(lengths[start : end + 1]) > 1000
        )  # a step takes samples until the next would pass the budget
        steps.append((start, end))
        start = end
    assert step_end(lambda p: 5000, 0, batch_size=8, step_tokens=1000) == 1  # at least one sample
    assert step_end(lambda p: 1, 4, batch_size=8, step_tokens=None) == 12
    for a, b in steps:
        share = assign_ranks(lengths[a:b], 4)
        flat = sorted(i for r in share for i in r)
        assert flat == list(range(b - a))  # ranks partition the step, no overlap
        for r in share:
            for mb in micro_batches([lengths[a + i] for i in r], max_tokens=256, micro_tokens=512):
                rows = micro_batches([lengths[a + r[i]] for i in mb], max_tokens=256, micro_tokens=None)
                assert len(rows) == 1 and sum(lengths[a + r[i]] for i in mb) <= 512  # budget per micro-batch


def test_micro_batch_accumulation_equals_one_big_batch():
    from latents.dit.model import DiT
    from latents.dit.synthetic import synthetic_samples
    from latents.dit.train import TrainConfig, micro_loss

    data = [{**s, "position": p} for p, s in enumerate(synthetic_samples(6, shapes=[(2, 4, 4), (1, 4, 6)]))]
    cfg = TrainConfig(model="tiny", max_tokens=64)
    torch.manual_seed(0)
    model = DiT(cfg.model_config(data[0]["latent"].shape[0], data[0]["text_embedding"].shape[-1]))
    device = torch.device("cpu")

    def grads(groups: list[list[int]]) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for g in groups:  # scale = 1 / samples in the step: the sum over micro-batches is the step's mean
            micro_loss(model, [data[i] for i in g], cfg, device, scale=1 / len(data))[0].backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    one, three = grads([list(range(6))]), grads([[0, 3], [1, 4], [2, 5]])
    assert len(one) == len(three) and any(g.abs().sum() > 0 for g in one)
    for a, b in zip(one, three):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_train_start_up_reads_no_latent_row(tmp_path, monkeypatch):
    """jobs.train on a shard folder: the source, the token budget, the split, the order, the
    loader and the first step's plan come from the manifest and footers; the first row group is
    read once the loader's stream starts. Counted at `LatentDataset._read`, the one function
    that reads row groups (every checked and unchecked read goes through it)."""
    from jobs.train import TRAIN_PRESETS, main

    shards = tmp_path / "latents"
    make_shards(shards, 128, SHAPES, text_tokens=8, text_dim=16, rows_per_shard=64)
    rows_read: list[int] = []
    read = LatentDataset._read

    def counting_read(self, *args, **kwargs):
        table = read(self, *args, **kwargs)
        rows_read.append(table.num_rows)
        return table

    at_first_step: list[int] = []
    iterate = StepLoader.__iter__

    def first_step(self):  # the loader is built; plan its first step, then count, then stream
        end, micro = self.plan(self.start_step, self.start_pos)
        assert end == self.start_pos + 4 and sum(map(len, micro)) == 4
        at_first_step.append(sum(rows_read))
        yield from iterate(self)

    monkeypatch.setattr(LatentDataset, "_read", counting_read)
    monkeypatch.setattr(StepLoader, "__iter__", first_step)
    cfg = dataclasses.replace(TRAIN_PRESETS["smoke"], steps=1, batch_size=4, ckpt_every=1, tensorboard=False)
    summary = main(cfg, str(shards), str(tmp_path / "run"), gpu=False)
    assert summary["step"] == 1
    assert at_first_step == [0]  # start-up read no latent row
    assert sum(rows_read) >= 64  # the step itself did read through the counted function (a whole row group)
