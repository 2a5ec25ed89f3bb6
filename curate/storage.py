"""Atomic Parquet parts, completion markers and config hashes: what makes a rerun resume.

A part is written under a temporary name and renamed into place; its `_done/<stage>/<key>`
marker is written (atomically) after the part. A rerun skips keys whose marker exists
and whose config hash matches, so a run killed at any point loses at most the work in
flight and never leaves a half-written part behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UsageError

DONE_DIR = "_done"


_LOCATION_KEYS = ("weights_dir",)  # where weights are stored, not what they compute: moving them re-runs nothing


def _drop_locations(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_locations(v) for k, v in data.items() if k not in _LOCATION_KEYS}
    if isinstance(data, list | tuple):
        return [_drop_locations(v) for v in data]
    return data


def config_hash(cfg: Any) -> str:
    """Stable hash of a (dataclass) config: a changed config re-runs its stage."""
    data = _drop_locations(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet_atomic(table: pa.Table, path: str | Path) -> Path:
    """Write `table` to `path` via a temporary file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())
    return path


def marker_path(out: str | Path, stage: str, key: str) -> Path:
    return Path(out) / DONE_DIR / stage / key


def is_done(out: str | Path, stage: str, key: str, cfg_hash: str) -> bool:
    p = marker_path(out, stage, key)
    try:
        return json.loads(p.read_text()).get("config_hash") == cfg_hash
    except (OSError, ValueError):
        return False


def mark_done(out: str | Path, stage: str, key: str, cfg_hash: str, **info: Any) -> None:
    write_json_atomic({"config_hash": cfg_hash, **info}, marker_path(out, stage, key))


def read_parts(directory: str | Path, schema: pa.Schema | None = None) -> pa.Table:
    """All `*.parquet` parts of a directory as one table (hidden temporary files ignored)."""
    directory = Path(directory)
    parts = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))
    if not parts:
        if schema is not None:
            return schema.empty_table()
        raise UsageError(f"no Parquet parts in {directory}; run the previous stage first (or check --input)")
    tables = [pq.read_table(p) for p in parts]
    if schema is not None:
        tables = [t.select(schema.names).cast(schema) for t in tables]
    return pa.concat_tables(tables)


def check_writable(out: str | Path, min_free_bytes: int = 64 << 20) -> None:
    """Fail fast on an unwritable output or a (nearly) full disk, before any work starts."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"output directory {str(out)!r} must be writable, got {e.strerror}; "
                         "pass a writable --output") from e
    free = os.statvfs(out).f_bavail * os.statvfs(out).f_frsize
    if free < min_free_bytes:
        raise UsageError(f"output disk must have at least {min_free_bytes >> 20} MiB free, got {free >> 20} MiB "
                         f"at {str(out)!r}; free space or pass another --output")
