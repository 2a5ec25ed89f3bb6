"""Steps from the sample stream: the step plan (global budget -> ranks -> micro-batches) and a
background thread that reads ahead.

A step takes consecutive global positions of the training order (`latents.samples.StreamOrder`):
`batch_size` samples, or, with `step_tokens`, samples until the next one would pass the global
token budget (at least one). Its samples are split over the ranks by token count (largest first,
to the rank with the fewest tokens); each rank packs its share into rows of `max_tokens` and
groups the rows into micro-batches of at most `micro_tokens` token slots. Token counts come
from the units' latent shapes (metadata), so planning reads no data, and every rank plans
every step alike. Which rank or micro-batch a sample lands in changes only the order of float
sums: the loss is a sum of per-sample terms (`latents.dit.train.micro_loss`).

The reader holds the units (row groups) of the window it is in and the next one (read ahead
in `threads` threads while the model trains), plus `prefetch` finished steps: host memory
follows the window size, not the dataset. Every rank decodes every unit of the stream (a step's
samples are spread over the window's row groups); that is one epoch of the dataset per rank per
epoch, the rate at which the whole job consumes it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from latents.dit.packing import Patch, num_tokens, plan_rows
from latents.samples import StreamOrder


class Source(Protocol):
    units: list[tuple[int, tuple[int, ...]]]  # per unit: (rows, latent shape [C, T, H, W])
    in_channels: int
    text_dim: int

    def load_unit(self, u: int) -> list[dict[str, Any]]: ...


@dataclass
class Step:
    index: int
    start: int  # global position of the step's first sample
    end: int  # one past its last
    micro: list[list[dict[str, Any]]]  # this rank's micro-batches: samples, each with its "position"

    @property
    def total(self) -> int:
        """Samples in the global step (all ranks)."""
        return self.end - self.start


def step_end(length_at: Callable[[int], int], start: int, batch_size: int, step_tokens: int | None) -> int:
    """One past the last global position of the step starting at `start`."""
    if step_tokens is None:
        return start + batch_size
    end, used = start, 0
    while end == start or used + length_at(end) <= step_tokens:
        used += length_at(end)
        end += 1
    return end


def assign_ranks(lengths: Sequence[int], world: int) -> list[list[int]]:
    """Indices of `lengths` per rank, balanced by tokens: largest first to the least-loaded rank
    (ties: fewer samples, then lower rank). Each rank's list is in index order."""
    load = [(0, 0, r) for r in range(world)]
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        r = min(range(world), key=lambda k: load[k])
        out[r].append(i)
        load[r] = (load[r][0] + lengths[i], load[r][1] + 1, r)
    return [sorted(x) for x in out]


def micro_batches(
    lengths: Sequence[int], max_tokens: int | None, micro_tokens: int | None
) -> list[list[int]]:
    """Indices per micro-batch: rows of `max_tokens` slots (None: one sample per row, padded to the
    longest), then consecutive rows while the micro-batch stays within `micro_tokens` slots
    (None: one micro-batch). Each list is in index order."""
    if not lengths:
        return []
    rows = [[i] for i in range(len(lengths))] if max_tokens is None else plan_rows(list(lengths), max_tokens)
    if micro_tokens is None:
        return [sorted(i for row in rows for i in row)]
    width = max_tokens if max_tokens is not None else max(lengths)
    per = max(1, micro_tokens // width)  # rows of one micro-batch: at most micro_tokens slots
    return [sorted(i for row in rows[k : k + per] for i in row) for k in range(0, len(rows), per)]


class StepLoader:
    """Iterate this rank's steps `start_step`.. `end_step` - 1, the first one starting at global
    position `start_pos`, built in a background thread (`prefetch` steps ahead)."""

    def __init__(
        self,
        source: Source,
        order: StreamOrder,
        patch: Patch,
        *,
        batch_size: int,
        step_tokens: int | None,
        max_tokens: int | None,
        micro_tokens: int | None,
        rank: int,
        world: int,
        start_step: int,
        start_pos: int,
        end_step: int,
        prefetch: int = 2,
        threads: int = 2,
    ):
        self.source, self.order, self.patch = source, order, patch
        self.batch_size, self.step_tokens = batch_size, step_tokens
        self.max_tokens, self.micro_tokens = max_tokens, micro_tokens
        self.rank, self.world = rank, world
        self.start_step, self.start_pos, self.end_step = start_step, start_pos, end_step
        self.prefetch, self.threads = max(1, prefetch), max(1, threads)
        self._tokens = [num_tokens(shape, patch) for _, shape in source.units]
        self._windows: dict[tuple[int, int], dict[int, Future]] = {}  # resident and read-ahead windows
        self.peak_units = 0  # most units held at once (tests and benchmarks)
        self._queue: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def length_at(self, p: int) -> int:
        return self._tokens[self.order.locate(p)[0]]

    def plan(self, index: int, start: int) -> tuple[int, list[list[int]]]:
        """(end, this rank's micro-batches as global positions) of step `index`: metadata only."""
        end = step_end(self.length_at, start, self.batch_size, self.step_tokens)
        positions = list(range(start, end))
        lengths = [self.length_at(p) for p in positions]
        mine = assign_ranks(lengths, self.world)[self.rank]
        micro = micro_batches([lengths[i] for i in mine], self.max_tokens, self.micro_tokens)
        return end, [[positions[mine[j]] for j in mb] for mb in micro]

    # --- reading ------------------------------------------------------------------------------
    def _next_window(self, key: tuple[int, int]) -> tuple[int, int]:
        e, w = key
        n_windows = -(-len(self.order.ids) // self.order.window)
        return (e, w + 1) if w + 1 < n_windows else (e + 1, 0)

    def _ensure(self, pool: ThreadPoolExecutor, key: tuple[int, int]) -> None:
        if key not in self._windows:
            self._windows[key] = {
                u: pool.submit(self.source.load_unit, u) for u in self.order.window_units(*key)
            }

    def _sample(self, pool: ThreadPoolExecutor, p: int) -> dict[str, Any]:
        key = self.order.window_of(p)
        self._ensure(pool, key)
        self._ensure(pool, self._next_window(key))  # read ahead while this window is consumed
        self.peak_units = max(self.peak_units, sum(len(v) for v in self._windows.values()))
        u, r = self.order.locate(p)
        s = self._windows[key][u].result()[r]
        # a copy: a sample of a row group is a view of the whole row group's buffer
        return {
            **s,
            "latent": s["latent"].clone(),
            "text_embedding": s["text_embedding"].clone(),
            "text_mask": s["text_mask"].clone(),
            "position": p,
        }

    def _produce(self) -> None:
        pool = ThreadPoolExecutor(max_workers=self.threads)
        try:
            pos = self.start_pos
            for index in range(self.start_step, self.end_step):
                end, micro = self.plan(index, pos)
                step = Step(index, pos, end, [[self._sample(pool, p) for p in mb] for mb in micro])
                keep = self.order.window_of(end)  # windows before the next step's first are done
                for key in [k for k in self._windows if k < keep]:
                    for f in self._windows.pop(key).values():
                        f.cancel()
                if not self._put(step):
                    return
                pos = end
        except BaseException as e:  # handed to the consumer, which re-raises it in the training loop
            self._put(e)
        finally:
            self._windows.clear()
            pool.shutdown(wait=True, cancel_futures=True)

    def _put(self, item: Step | BaseException) -> bool:
        """Queue `item` unless the consumer has stopped; False when it has."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Step]:
        self._thread = threading.Thread(target=self._produce, name="tubelet-step-loader", daemon=True)
        self._thread.start()
        try:
            for _ in range(self.start_step, self.end_step):
                item = self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.05)
            self._thread = None
