"""Latent training shards: a rolling Parquet writer, the manifest, and a checking reader.

Layout (OUT/latents/):
  shard-<run>-00000.parquet ...   full CLIP_SCHEMA; every row group holds ONE latent shape
  .manifest.json                  schema version, VAE + text encoder ids and constants, buckets,
                                  counts, per-shard sha256 / bytes / rows, row groups (rows, latent
                                  shape, xxh3 digests of the latent and text columns), round-trip PSNR
important: the manifest's name starts with "." because folder readers read every other file
of a directory as Parquet: pyarrow (pandas.read_parquet) and ray.data.read_parquet skip names
starting with "." or "_", but Hugging Face `datasets` skips only "." (hidden) files and
"__" folders, so a "_manifest.json" would break `load_dataset("parquet")`.

Latents and text embeddings are raw little-endian bytes plus shape and dtype columns, so
fp16/bf16/fp32 round-trip exactly and any reader (pandas, Ray, `datasets`) can open them.
Patterns: webdataset `ShardWriter` (rolls over by count and size), video2dataset
`data_writer.py` (per-shard stats), nanoGPT `prepare.py` (an artifact says how to read it).
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import xxhash

from curate import schema as S
from curate.io import layout, storage
from curate.io.storage import write_json_atomic

MANIFEST_NAME = layout.MANIFEST
MANIFEST_FORMAT = "tubelet.latent-shards/1"
SHARD_PREFIX = layout.SHARD_PREFIX

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


class ShardError(RuntimeError):
    """A shard or its manifest is missing, corrupt, truncated or inconsistent."""


# --- bytes <-> tensor ----------------------------------------------------------------------


def dtype_name(dtype: torch.dtype) -> str:
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype}")


def tensor_to_bytes(t: torch.Tensor) -> tuple[bytes, list[int], str]:
    """A tensor -> (raw bytes, shape, dtype name); exact for float32/float16/bfloat16."""
    name = dtype_name(t.dtype)
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes(), [int(s) for s in t.shape], name


def _check_len(nbytes: int, shape: list[int], dtype: str, where: str) -> None:
    if dtype not in _ITEMSIZE:
        raise ShardError(f"{where}: dtype must be one of {list(_ITEMSIZE)}, got {dtype!r}")
    want = math.prod(shape) * _ITEMSIZE[dtype]
    if nbytes != want:
        raise ShardError(
            f"{where}: {nbytes} bytes do not match shape {shape} of {dtype} ({want} bytes): "
            "the shard is corrupt or truncated; re-run the encode job"
        )


def bytes_to_tensor(
    buf: bytes | memoryview, shape: list[int], dtype: str, where: str = "tensor"
) -> torch.Tensor:
    """Raw bytes -> tensor of exactly that dtype and shape (a copy; raises ShardError on a size mismatch)."""
    _check_len(len(buf), list(shape), dtype, where)
    return torch.frombuffer(bytearray(buf), dtype=DTYPES[dtype]).reshape(list(shape))


# --- row-group digests ----------------------------------------------------------------------

DIGEST = "xxh3_64"
DIGEST_COLUMNS = (S.LATENT, S.TEXT_EMBEDDING)


def value_digest(arr: pa.Array | pa.ChunkedArray) -> str:
    """xxh3-64 of a binary column's value lengths and value bytes, in row order.

    Recorded per row group by the writer and checked by the reader instead of Parquet page
    CRCs on the two big columns: xxh3 runs at memory speed (~10x Arrow's page CRC here), so
    every read is checked at a few percent of its cost. A flipped byte changes it; a changed
    length changes it. The manifest's per-shard sha256 stays the strong end-to-end check.
    """
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if not len(arr):
        return f"{DIGEST}:{xxhash.xxh3_64_hexdigest(b'')}"
    _, offsets_buf, data_buf = arr.buffers()
    width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(offsets_buf, width)[arr.offset : arr.offset + len(arr) + 1]
    h = xxhash.xxh3_64()
    h.update(np.diff(offsets).astype("<i8").tobytes())
    if data_buf is not None:
        h.update(memoryview(np.frombuffer(data_buf, np.uint8)[int(offsets[0]) : int(offsets[-1])]))
    return f"{DIGEST}:{h.hexdigest()}"


# --- writer ---------------------------------------------------------------------------------


def _sha256(path: str | Path) -> str:
    """sha256 of a local file or an object (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    fs, p = storage.filesystem(path)
    with fs.open_input_stream(p) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _shape_key(shape: Any) -> str:
    return "x".join(str(int(s)) for s in shape)


ShardCallback = Callable[[pa.Table], dict[str, Any]]


class ShardWriter:
    """Context manager writing CLIP_SCHEMA rows into shards: one latent shape per row group,
    a new shard after `max_rows` rows or `max_bytes` bytes, atomic shard files, and the
    manifest written last (so old shards + old manifest stay valid until the new set is complete).

    `write(table)` accepts the schema's columns plus extra per-row metric columns named in
    `metric_columns` (e.g. round-trip PSNR); those are summarised per shard in the manifest
    and not stored in the shard.
    """

    def __init__(
        self,
        root: str | Path,
        meta: dict[str, Any],
        *,
        schema: pa.Schema = S.CLIP_SCHEMA,
        max_rows: int = 10_000,
        max_bytes: int = 1 << 30,
        row_group_rows: int = 256,
        metric_columns: tuple[str, ...] = (),
        run_id: str | None = None,
        write_manifest: bool = True,
    ):
        if max_rows < 1 or max_bytes < 1 or row_group_rows < 1:
            raise ValueError(
                "max_rows, max_bytes, row_group_rows must be >= 1, "
                f"got {max_rows}, {max_bytes}, {row_group_rows}"
            )
        self.root = str(root)  # a local path or a URI (s3://...): see curate.io.storage
        self.meta = meta
        self.schema = schema
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.row_group_rows = min(row_group_rows, max_rows)
        self.metric_columns = metric_columns
        self.run_id = run_id or uuid.uuid4().hex[:8]
        # False: one of several writers (Ray tasks); close() returns the shard entries (a
        # manifest fragment) and `merge_manifest` writes the manifest from every fragment
        self.write_manifest = write_manifest
        self._buffers: dict[str, list[pa.Table]] = {}
        self._writer: pq.ParquetWriter | None = None
        self._tmp: str | None = None  # local file being written; published whole when finished
        self._cur: dict[str, Any] = {}
        self._metrics: dict[str, list[float]] = {}
        self.shards: list[dict[str, Any]] = []
        self._closed = False

    def __enter__(self) -> ShardWriter:
        if not storage.is_remote(self.root):
            os.makedirs(self.root, exist_ok=True)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        shapes = table.column(S.LATENT_SHAPE).to_pylist()
        if any(s is None for s in shapes) or table.column(S.LATENT).null_count:
            raise ShardError(
                "every row written to a shard must have a latent and latent_shape; "
                "filter to encoded (status ok) rows first"
            )
        keys = np.array([_shape_key(s) for s in shapes])
        for key in dict.fromkeys(keys.tolist()):
            idx = np.flatnonzero(keys == key)
            buf = self._buffers.setdefault(key, [])
            buf.append(table.take(pa.array(idx)))
            while sum(t.num_rows for t in buf) >= self.row_group_rows:
                whole = pa.concat_tables(buf)
                self._write_group(whole.slice(0, self.row_group_rows))
                rest = whole.slice(self.row_group_rows)
                buf[:] = [rest] if rest.num_rows else []

    def _write_group(self, group: pa.Table) -> None:
        n = group.num_rows
        if self._writer is not None and (
            self._cur["rows"] + n > self.max_rows or self._cur["bytes"] >= self.max_bytes
        ):
            self._finish_shard()
        if self._writer is None:
            self._open_shard()
        for name in self.metric_columns:
            if name in group.column_names:
                self._metrics.setdefault(name, []).extend(
                    float(v) for v in group.column(name).to_pylist() if v is not None
                )
        data = group.select(self.schema.names).cast(self.schema)
        self._writer.write_table(data, row_group_size=n)
        shape = group.column(S.LATENT_SHAPE)[0].as_py()
        self._cur["rows"] += n
        self._cur["bytes"] += data.nbytes
        digests = {c: value_digest(data.column(c)) for c in DIGEST_COLUMNS}
        self._cur["row_groups"].append({"rows": n, "latent_shape": shape, "digests": digests})

    def _open_shard(self) -> None:
        name = layout.shard_name(self.run_id, len(self.shards))
        tmp = storage.temp_output(storage.join(self.root, name))
        self._tmp = tmp
        # raw tensor bytes do not compress; everything else does
        compression = {
            n: ("none" if n in (S.LATENT, S.TEXT_EMBEDDING) else "zstd") for n in self.schema.names
        }
        self._writer = pq.ParquetWriter(tmp, self.schema, compression=compression, write_page_checksum=True)
        self._cur = {"file": name, "rows": 0, "bytes": 0, "row_groups": []}
        self._metrics = {}

    def _finish_shard(self) -> None:
        assert self._writer is not None and self._tmp is not None
        self._writer.close()
        entry = dict(self._cur)
        entry["bytes"] = os.stat(self._tmp).st_size
        entry["sha256"] = _sha256(self._tmp)
        entry["metrics"] = {
            k.lstrip("_"): {"n": len(v), "mean": float(np.mean(v)), "values": [round(x, 3) for x in v]}
            for k, v in self._metrics.items()
            if v
        }
        # pyarrow created the temp file with the umask's mode; publish renames (local) or uploads it whole
        storage.publish(self._tmp, storage.join(self.root, entry["file"]))
        self.shards.append(entry)
        self._writer, self._tmp = None, None

    def close(self) -> dict[str, Any]:
        """Flush partial row groups, finalize the last shard, write the manifest, drop stale shards."""
        if self._closed:
            return self.manifest()
        for key in list(self._buffers):
            buf = self._buffers.pop(key)
            if buf:
                self._write_group(pa.concat_tables(buf))
        if self._writer is not None:
            self._finish_shard()
        manifest = self.manifest()
        if self.write_manifest:
            merge_manifest(self.root, self.meta, self.shards, self.schema)
        self._closed = True
        return manifest

    def abort(self) -> None:
        """Leave the previous manifest and its shards as they were; remove this run's files."""
        if self._writer is not None:
            self._writer.close()
        storage.discard(self._tmp)
        for s in self.shards:
            storage.delete(storage.join(self.root, s["file"]))
        self._closed = True

    def manifest(self) -> dict[str, Any]:
        return build_manifest(self.meta, self.shards, self.schema)


def build_manifest(
    meta: dict[str, Any], shards: list[dict[str, Any]], schema: pa.Schema = S.CLIP_SCHEMA
) -> dict[str, Any]:
    """The manifest of a set of finished shards (their entries: file, sha256, rows, row groups)."""
    by_shape: dict[str, int] = {}
    for s in shards:
        for g in s["row_groups"]:
            k = _shape_key(g["latent_shape"])
            by_shape[k] = by_shape.get(k, 0) + g["rows"]
    return {
        "format": MANIFEST_FORMAT,
        "schema_version": S.SCHEMA_VERSION,
        "columns": schema.names,
        **meta,
        "counts": {
            "rows": sum(s["rows"] for s in shards),
            "shards": len(shards),
            "by_latent_shape": by_shape,
            **meta.get("counts", {}),
        },
        "shards": shards,
    }


def merge_manifest(
    root: str | Path, meta: dict[str, Any], shards: list[dict[str, Any]], schema: pa.Schema = S.CLIP_SCHEMA
) -> dict[str, Any]:
    """Write the manifest of `shards` (entries from one or many writers), then drop shards not in it.

    Metadata only: the shards themselves were written (and checksummed) by their writers.
    """
    root = str(root)
    shards = sorted(shards, key=lambda s: s["file"])
    manifest = build_manifest(meta, shards, schema)
    write_json_atomic(manifest, manifest_path(root))
    keep = {s["file"] for s in shards}
    # safe: the job's lease on this folder (jobs/runtime/lease.py) means no other run writes shards here
    for old in storage.list_files(root, ".parquet"):
        if layout.is_shard(old) and storage.basename(old) not in keep:
            storage.delete(old)
    return manifest


# --- reader ---------------------------------------------------------------------------------


def metric_summary(manifest: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """A metric the shard writer recorded (a `metric_columns` name without its "_", e.g.
    "roundtrip_psnr") over every shard of `manifest`: mean (2 places), min, max and the clips it
    was measured on; None where no clip was."""
    values = [
        float(v)
        for s in manifest.get("shards", [])
        for v in (s.get("metrics") or {}).get(metric, {}).get("values", [])
    ]
    if not values:
        return None
    return {
        "mean": round(sum(values) / len(values), 2),
        "min": min(values),
        "max": max(values),
        "clips": len(values),
    }


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The one validating manifest reader (train, sample, report and the dataset use it):
    present, JSON, this format, a schema major version this tubelet reads; else ShardError."""
    path = manifest_path(root)
    try:
        manifest = storage.read_json(path)
    except FileNotFoundError as e:
        raise ShardError(
            f"no {MANIFEST_NAME} in {root}: not a finished latent shard folder; "
            "run `python -m jobs.encode` to completion first"
        ) from e
    except ValueError as e:
        raise ShardError(f"{path} is not valid JSON ({e}); re-run `python -m jobs.encode`") from e
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{path}: format must be {MANIFEST_FORMAT!r}, got {manifest.get('format')!r}")
    major = str(manifest.get("schema_version", "")).split(".")[0]
    if major != S.SCHEMA_VERSION.split(".")[0]:
        raise ShardError(
            f"{path}: schema version {manifest.get('schema_version')!r} is not readable by this "
            f"tubelet (schema {S.SCHEMA_VERSION}); re-encode or use a matching tubelet"
        )
    return manifest


def verify_shards(
    root: str | Path, manifest: dict[str, Any] | None = None, checksum: bool = True
) -> dict[str, Any]:
    """Check every shard of the manifest: present, same size, sha256 (if `checksum`), Parquet footer rows."""
    manifest = manifest or read_manifest(root)
    fs, _ = storage.filesystem(root)
    for s in manifest["shards"]:
        path = storage.join(root, s["file"])
        try:
            size = storage.file_size(path)
        except FileNotFoundError:
            raise ShardError(
                f"shard {path} listed in the manifest is missing; re-run the encode job"
            ) from None
        if size != s["bytes"]:
            raise ShardError(
                f"shard {path} has {size} bytes, the manifest says {s['bytes']}: truncated or "
                "replaced; re-run the encode job"
            )
        if checksum:
            digest = _sha256(path)
            if digest != s["sha256"]:
                raise ShardError(
                    f"shard {path} failed its sha256 checksum (manifest {s['sha256'][:16]}..., "
                    f"file {digest[:16]}...): the file is corrupt; re-run the encode job"
                )
        try:
            footer = pq.read_metadata(storage.filesystem(path)[1], filesystem=fs)
        except (OSError, pa.ArrowInvalid) as e:
            raise ShardError(f"shard {path} is not readable Parquet ({e}); re-run the encode job") from e
        _check_footer(path, footer, s)
    return manifest


def _check_footer(path: str, footer: pq.FileMetaData, s: dict[str, Any]) -> None:
    """The shard's Parquet footer against its manifest entry: total rows and every row group's
    rows (readers plan by the manifest's row groups, so a lowered count would drop rows unseen)."""
    if footer.num_rows != s["rows"]:
        raise ShardError(
            f"shard {path} has {footer.num_rows} rows, the manifest says {s['rows']}; re-run the encode job"
        )
    want = [int(rg["rows"]) for rg in s["row_groups"]]
    got = [footer.row_group(g).num_rows for g in range(footer.num_row_groups)]
    if got != want or sum(want) != s["rows"]:
        raise ShardError(
            f"shard {path}: its row groups hold {got} rows, the manifest's row_groups say {want} "
            f"(total {s['rows']}); the manifest or the shard was altered, re-run the encode job"
        )


def shard_files(root: str | Path, manifest: dict[str, Any] | None = None) -> list[str]:
    """The shard paths/URIs of a finished folder, in manifest order."""
    manifest = manifest or read_manifest(root)
    return [storage.join(root, s["file"]) for s in manifest["shards"]]


def manifest_path(root: str | Path) -> str:
    return layout.manifest_path(root)


_RAW_NP = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}  # bf16 travels as uint16 bits


def binary_column_stacked(
    arr: pa.Array,
    shape: tuple[int, ...],
    shapes: list[list[int] | None],
    dtypes: list[str | None],
    where: str,
    as_float32: bool = True,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """A binary column whose rows all hold `shape` -> one array (n, *shape), in one pass: float32,
    or (as_float32=False) the stored values as they are (bfloat16 as its uint16 bit patterns).

    `rows`: which rows, in which order; the gather and the widening to float32 happen in the
    same pass. Stored values with `rows=None` are a view of the Arrow buffer (no copy; it keeps
    the buffer alive). A null, a wrong shape or byte count raises
    ShardError: a reader never invents zeros.
    important: returns numpy (wrap with torch.from_numpy, zero-copy): numpy's large allocations
    use huge pages, while fresh torch CPU tensors page-fault every 4 KiB, which on the VMs we
    measured made allocating output tensors cost more than reading the Parquet file.
    """
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if len(set(dtypes)) > 1 or any(list(s or []) != list(shape) for s in shapes):
        bad = next(i for i, s in enumerate(shapes) if list(s or []) != list(shape)) if shapes else 0
        raise ShardError(
            f"{where}: row {bad} has shape {shapes[bad]}/dtype {dtypes[bad]}, the manifest says "
            f"{list(shape)} for every row of this row group; re-run the encode job"
        )
    idx = np.arange(len(arr)) if rows is None else np.asarray(rows, np.int64)
    if not len(arr) or not len(idx):
        return np.zeros((len(idx), *shape), np.float32)
    if arr.null_count:
        first = arr.is_null().to_pylist().index(True)
        raise ShardError(f"{where}: row {first} has no value; the shard is incomplete, re-run the encode job")
    _, offsets_buf, data_buf = arr.buffers()
    width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(offsets_buf, width)[arr.offset : arr.offset + len(arr) + 1]
    dtype = str(dtypes[0])
    per = math.prod(shape) * _ITEMSIZE.get(dtype, 0)
    sizes = np.diff(offsets)
    if not per or np.any(sizes != per):
        i = int(np.flatnonzero(sizes != per)[0]) if per else 0
        _check_len(int(sizes[i]), list(shape), dtype, f"{where} row {i}")
    data = np.frombuffer(data_buf, np.uint8)[int(offsets[0]) : int(offsets[-1])]
    src = data.view(_RAW_NP[dtype]).reshape(len(arr), -1)  # (N, prod(shape)) stored values
    if not as_float32:
        if rows is None:
            return src.reshape(len(arr), *shape)
        return np.take(src, idx, axis=0).reshape(len(idx), *shape)
    out = np.empty((len(idx), src.shape[1]), np.float32)
    for k, r in enumerate(idx):  # row by row: source and result rows stay in cache
        widen_into(src[r], out[k], dtype)
    return out.reshape(len(idx), *shape)


def widen_into(src: np.ndarray, out: np.ndarray, dtype: str) -> None:
    """Stored values (bf16 as uint16 bits, fp16, fp32) -> float32 `out` of the same length, one pass."""
    if dtype == "bfloat16":  # bf16 is the high half of a float32
        bits = out.view(np.uint32)
        bits[...] = src  # zero-extend, then shift in place: 2x faster than a casting left_shift
        bits <<= 16
    else:
        out[...] = src


def binary_column_padded(
    arr: pa.Array,
    shapes: list[list[int] | None],
    dtypes: list[str | None],
    where: str,
    rows: np.ndarray,
    length: int,
    as_float32: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A binary column of (L_i, D) matrices -> rows `rows` as (n, length, D), zero past each row's
    L_i (cut at `length`), and the (n, length) bool mask of real tokens.

    float32, or (as_float32=False and one dtype in the column) the stored values (bf16 as uint16
    bits). Nulls, missing shapes and wrong byte counts raise ShardError.
    """
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    if arr.null_count:
        first = arr.is_null().to_pylist().index(True)
        raise ShardError(f"{where}: row {first} has no value; the shard is incomplete, re-run the encode job")
    for i, (shape, dtype) in enumerate(zip(shapes, dtypes)):
        if shape is None or dtype is None or len(shape) != 2:
            raise ShardError(
                f"{where}: row {i} has shape {shape}/dtype {dtype}, want an (L, D) matrix; "
                "the shard is incomplete, re-run the encode job"
            )
    dim = shapes[0][1] if shapes else 0
    stored = not as_float32 and len(set(dtypes)) == 1
    out = np.zeros((len(rows), length, dim), _RAW_NP[str(dtypes[0])] if stored else np.float32)
    mask = np.zeros((len(rows), length), np.bool_)
    if not len(arr):
        return out, mask
    _, offsets_buf, data_buf = arr.buffers()
    width = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    offsets = np.frombuffer(offsets_buf, width)[arr.offset : arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    for k, r in enumerate(rows):
        shape, dtype = shapes[r], str(dtypes[r])
        a, b = int(offsets[r]), int(offsets[r + 1])
        _check_len(b - a, list(shape), dtype, f"{where} row {r}")
        if shape[1] != dim:
            raise ShardError(f"{where}: row {r} has width {shape[1]}, row 0 has {dim}; re-run the encode job")
        n = min(int(shape[0]), length)
        src = data[a:b].view(_RAW_NP[dtype]).reshape(shape)[:n]  # (L_i, D) -> first n tokens
        if stored:
            out[k, :n] = src
        else:
            widen_into(src.reshape(-1), out[k, :n].reshape(-1), dtype)
        mask[k, :n] = True
    return out, mask
