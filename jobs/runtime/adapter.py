"""The one generic Ray adapter: stages stay plain Python; this file maps them onto Ray Data.

A stage is `Stage(cfg)` (cheap, picklable), `stage.load()` (weights, once per actor) and
`stage(batch: pyarrow.Table) -> pyarrow.Table`. CPU-only pure steps run as Ray Data tasks;
model stages run in an actor pool (`concurrency`, `num_gpus` per actor).

Reference: NVIDIA NeMo Curator `backends/ray_data/adapter.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

# Ray must be importable only from jobs/.
import ray

from jobs.runtime import local_ray
from jobs.runtime.flags import Need, check_cluster, quiet_logs

REPO_ROOT = Path(__file__).resolve().parents[2]  # jobs/runtime/adapter.py -> the checkout


class Stage(Protocol):
    def load(self) -> None: ...

    def __call__(self, batch: pa.Table) -> pa.Table: ...


@dataclass(frozen=True)
class Resources:
    """How one stage runs on the cluster."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int = 1  # actors in the pool (model stages) or max parallel tasks (0 = Ray decides)
    batch_size: int | None = None
    # custom Ray resources per actor/task, e.g. {"model_node": 0.01}: runs only on nodes started
    # with that resource (`ray start --resources '{"model_node": 1}'`)
    resources: tuple[tuple[str, float], ...] = ()


def init_ray(
    address: str | None = None, num_cpus: int | None = None, quiet: bool = True, need: Need | None = None
) -> None:
    """Connect to `address` / RAY_ADDRESS / a `ray job submit` driver, or start a local instance;
    then fail at once (UsageError) when the cluster has fewer GPUs/CPUs than `need`.

    important: every socket of the local instance is on 127.0.0.1 (`jobs.runtime.local_ray`), its
    processes die with this driver, and its dashboard is off;
    workers get this checkout on PYTHONPATH so `python -m jobs.x` works without installing.
    """
    if ray.is_initialized():
        if need is not None:
            check_cluster(need)
        return
    quiet_logs(not quiet)  # before Ray starts too: its workers inherit the environment
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runtime_env = {
        "env_vars": {"PYTHONPATH": _pythonpath(), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    }
    source = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # A cluster (or `ray job submit`) brings its own runtime env (working_dir, env vars);
        # adding ours would conflict with the job's, which Ray refuses to merge.
        # Its RAY_AUTH_MODE is the user's to set (README "Ray authentication"), never switched off here.
        # Ray's own settings stand for a cluster: a `ray start` head on this machine may itself run
        # loopback-only (its job drivers inherit the switch), and the driver must match it
        local_ray.check_reachable(address, source)
        ray.init(address=address, log_to_driver=not quiet)
    else:
        # important: the instance this job starts for itself listens on 127.0.0.1 only and dies
        # with this driver, so turning token auth off for it opens nothing to other machines
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        local_ray.loopback_only(True)
        local_ray.start_reaper()
        # important: address="local" always starts a fresh instance; a bare ray.init() would
        # join whatever `ray start` cluster /tmp/ray/ray_current_cluster names, even a dead one.
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            runtime_env=runtime_env,
            log_to_driver=not quiet,
            configure_logging=True,
            logging_level="ERROR" if quiet else "INFO",
        )
    ctx = ray.data.DataContext.get_current()
    # quiet: the job's own progress line (jobs/runtime/progress.py), not a bar per Ray operator
    ctx.enable_progress_bars = not quiet
    ctx.verbose_stats_logs = False
    quiet_logs(not quiet)
    if need is not None:
        check_cluster(need)


def _pythonpath() -> str:
    parts = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


class _StageActor:
    """Ray Data callable class around a stage: constructed once per actor, loads once."""

    def __init__(self, stage_cls: type, cfg: Any):
        self.stage = stage_cls(cfg)
        self.stage.load()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage(batch)


def map_stage(ds: ray.data.Dataset, stage_cls: type, cfg: Any, res: Resources) -> ray.data.Dataset:
    """Run a model stage in an actor pool of `res.concurrency` actors."""
    return ds.map_batches(
        _StageActor,
        fn_constructor_kwargs={"stage_cls": stage_cls, "cfg": cfg},
        batch_format="pyarrow",
        batch_size=res.batch_size,
        compute=ray.data.ActorPoolStrategy(size=max(1, res.concurrency)),
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus or None,
        zero_copy_batch=True,
        **({"resources": dict(res.resources)} if res.resources else {}),
    )


def map_task(ds: ray.data.Dataset, fn: Callable[[pa.Table], pa.Table], res: Resources) -> ray.data.Dataset:
    """Run a pure CPU step as Ray Data tasks."""
    kwargs: dict[str, Any] = {}
    if res.concurrency:  # `concurrency=` is deprecated in Ray Data: strategies say it
        kwargs["compute"] = ray.data.TaskPoolStrategy(size=res.concurrency)
    return ds.map_batches(
        fn, batch_format="pyarrow", batch_size=res.batch_size, num_cpus=res.num_cpus, **kwargs
    )


def table_dataset(table: pa.Table, rows_per_block: int = 1) -> ray.data.Dataset:
    """A Dataset from an in-memory table, split so each block holds `rows_per_block` rows."""
    blocks = [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)]
    if not blocks:
        return ray.data.from_arrow(table)
    return ray.data.from_arrow(blocks)


def run_tasks(fn: Callable[..., Any], items: list[Any], *args: Any, num_cpus: float = 0.5) -> list[Any]:
    """`fn(item, *args)` as one Ray task per item; the results come back to the driver, so
    keep them small (counts, not rows). An ObjectRef among `args` reaches `fn` resolved."""
    remote = ray.remote(num_cpus=num_cpus)(fn)
    return ray.get([remote.remote(item, *args) for item in items])


def read_parts_dataset(
    paths: list[str], columns: list[str] | None = None, schema: pa.Schema | None = None
) -> ray.data.Dataset:
    """A Dataset over Parquet parts that the workers read (local or object storage).

    The driver passes file names only, never rows: its memory stays O(files). `schema`
    (default: the clip schema, restricted to `columns`) conforms parts written by older versions.
    """
    from curate.io import storage
    from curate.schema import CLIP_SCHEMA

    schema = schema or CLIP_SCHEMA
    columns = columns or [n for n in schema.names]
    fs = storage.filesystem(paths[0])[0]
    # select_columns is pushed into the read (only these columns leave the files); a column
    # missing from an older part comes back null
    return ray.data.read_parquet(
        [storage.filesystem(p)[1] for p in paths],
        filesystem=fs,
        schema=pa.schema([schema.field(c) for c in columns]),
    ).select_columns(columns)


def _footer_rows(paths: list[str]) -> list[int]:
    from jobs.runtime.parts import footer

    return [footer(p).num_rows for p in paths]


def row_counts(paths: list[str], chunk: int = 256) -> list[int]:
    """Rows of each part from its footer, read by Ray tasks in chunks (on object storage a
    footer is a request: the driver would wait on them one by one)."""
    got = run_tasks(
        _footer_rows, [list(paths[i : i + chunk]) for i in range(0, len(paths), chunk)], num_cpus=0.25
    )
    return [n for g in got for n in g]


def _clip_ids_of(paths: list[str]) -> frozenset[str]:
    from curate.decisions.decide import read_columns
    from curate.schema import CLIP_ID

    ids: set[str] = set()
    for p in paths:
        ids.update(read_columns(p, [CLIP_ID]).column(CLIP_ID).to_pylist())
    return frozenset(ids)


def clip_ids_ref(paths: list[str]) -> Any:
    """The clip ids in finished parts, read by a Ray task and handed to the workers by reference.

    The set lives in the object store (one copy per node), never on the driver; `resolve`
    turns the reference back into the set inside a worker.
    """
    return ray.remote(_clip_ids_of).remote(list(paths))


def resolve(ref: Any) -> frozenset[str]:
    return ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
