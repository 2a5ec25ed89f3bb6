"""Atomic Parquet parts, completion markers and config hashes: what makes a rerun resume.

Every function takes a local path or a URI (`s3://bucket/out`, see `curate.io.uri`).
On local disk a part is written under a hidden temporary name in its directory and renamed
into place; on object storage, where there is no rename, the object is written whole (one
upload that becomes visible only when complete). Either way its `_done/<stage>/<key>` marker
is written after the part. A rerun skips keys whose marker exists and whose config hash
matches, so a run killed at any point loses at most the work in flight and never leaves a
half-written part behind.

New files follow the process umask (like `cp` or `pandas.to_parquet`), so other users'
jobs on a shared cluster can read them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UsageError, io_line
from curate.io import layout
from curate.io.retry import retrying

# re-exported (see __all__): callers import the whole storage layer from here
from curate.io.uri import (
    PathLike,
    basename,
    check_scheme,
    delete,
    exists,
    file_size,
    filesystem,
    is_dir,
    is_file,
    is_remote,
    join,
    list_files,
    local_copy,
    mtime_ns,
    open_input,
    parent,
    read_bytes,
    remote_io,
    s3_filesystem,
    scheme,
    storage_options,
    sweep_temporaries,
    temp_name,
)

DONE_DIR = layout.DONE


# The resume rule (README "Output layout and resume"): a stage's resume key hashes what decides
# its output (models, prompt, frame policy, thresholds, dtype), never how or where it runs.
# These config fields are resources: changing one re-runs nothing.
RESOURCE_KEYS = frozenset(
    {
        "device",  # where a model runs
        "batch_size",
        "vae_batch",  # clips per model call
        "slicing",  # one clip of a VAE batch at a time (memory only)
        "threads",  # CPU threads of an ONNX scorer (NSFW, OCR)
        "weights_dir",  # where weights are stored, not what they compute
        "on_error",  # error policy: a recorded error row and a raised one are the same failure
        "psnr_every",  # how often the round trip is measured: a report figure, not the latents
    }
)


def _drop_resources(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_resources(v) for k, v in data.items() if k not in RESOURCE_KEYS}
    if isinstance(data, list | tuple):
        return [_drop_resources(v) for v in data]
    return data


def config_hash(cfg: Any) -> str:
    """A stage's resume key: the stable hash of its (dataclass) config without `RESOURCE_KEYS`,
    so a changed model or threshold re-runs the stage and a changed device or batch size does not.
    Actor counts, GPUs and CPUs live in the job configs, never in a stage config."""
    data = _drop_resources(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg)
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


# --- atomic writes -------------------------------------------------------------------------


def temp_output(uri: PathLike) -> str:
    """A local path to write the future content of `uri` to, then `publish(tmp, uri)`.

    Local: a hidden temporary name in the target directory (same filesystem, so the rename
    is atomic). Remote: a file in this worker's temp dir, uploaded whole by `publish`.
    """
    name = basename(uri)
    if is_remote(uri):
        fd, tmp = tempfile.mkstemp(prefix=f"tubelet-{name}.", suffix=".tmp")
        os.close(fd)
        return tmp
    d = parent(uri)
    os.makedirs(d, exist_ok=True)
    return os.path.join(d, temp_name(name))


UPLOAD_CHUNK = 1 << 24  # bytes per read and per multipart part (S3 parts are 5 MiB at least)
SINGLE_PUT_BYTES = 5 << 20  # pyarrow's S3 stream starts a multipart upload only above 10 MiB


def _upload(local: str, uri: PathLike) -> None:
    """One object upload of a local file: whole, or nothing at `uri`."""
    with open(local, "rb") as src:
        _upload_stream(src, uri)


def _upload_stream(src: BinaryIO, uri: PathLike) -> None:
    """One object from the stream `src`. On S3 an error anywhere (a read, a part, the completion,
    Ctrl-C) aborts the multipart upload, so no truncated object appears at `uri`: pyarrow's
    stream has no abort and completes the upload when its `with` block is left by an exception.
    Other object stores: pyarrow's stream, which may leave a truncated object on an error."""
    if scheme(uri) in ("s3", "s3a"):
        fs, path = s3_filesystem(uri)
        dst = fs.open(path, "wb", block_size=UPLOAD_CHUNK)
        try:
            while chunk := src.read(UPLOAD_CHUNK):
                dst.write(chunk)
            dst.close()  # completes the multipart upload (one PUT when small)
        except BaseException:
            dst.discard()  # abort_multipart_upload: the parts sent so far are dropped
            dst.closed = True  # never completed later by the file object's __del__
            raise
        return
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as out:
        while chunk := src.read(UPLOAD_CHUNK):
            out.write(chunk)


def publish(tmp: str, uri: PathLike) -> None:
    """Make the finished local file `tmp` appear at `uri` in one step, then drop `tmp`."""
    try:
        if is_remote(uri):
            retrying(_upload, tmp, uri, what=f"upload({uri!r})")  # each try uploads the whole file
        else:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, str(uri))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def publish_copy(src: str, uri: PathLike) -> str:
    """Copy the local file `src` to `uri` atomically (`src` is kept)."""
    if is_remote(uri):
        retrying(_upload, src, uri, what=f"upload({uri!r})")
    else:
        with atomic_output(uri) as tmp:
            shutil.copyfile(src, tmp)
    return str(uri)


def download_tree(uri: PathLike, local_dir: str, *, hidden: bool = True) -> list[str]:
    """Copy every file below `uri` into `local_dir` (same relative paths); returns the local paths."""
    base = str(uri).rstrip("/")
    got = []
    for src in list_files(base, recursive=True, hidden=hidden):
        dest = os.path.join(local_dir, *src[len(base) :].strip("/").split("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with local_copy(src) as tmp:
            shutil.copyfile(tmp, dest)
        got.append(dest)
    return got


def upload_tree(local_dir: str, uri: PathLike) -> list[str]:
    """Copy every file below the local folder `local_dir` to `uri` (same relative paths)."""
    sent = []
    for root, _, files in os.walk(local_dir):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), local_dir).split(os.sep)
            sent.append(publish_copy(os.path.join(root, name), join(uri, *rel)))
    return sent


def discard(tmp: str | None) -> None:
    if tmp:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_output(uri: PathLike) -> Iterator[str]:
    """`with atomic_output(uri) as tmp: write(tmp)`: `uri` appears whole on success, never partly."""
    tmp = temp_output(uri)
    try:
        yield tmp
    except BaseException:
        discard(tmp)
        raise
    publish(tmp, uri)


def _create_new(path: str) -> int:
    # O_EXCL with mode 0666: the umask applies (mkstemp's fixed 0600 would survive the rename)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


@remote_io(1)  # a retry PUTs the whole object again
def write_bytes_atomic(data: bytes, uri: PathLike) -> str:
    """Write `data` to `uri`: temp + fsync + rename locally, one whole PUT remotely."""
    uri = str(uri)
    if is_remote(uri):
        if len(data) > SINGLE_PUT_BYTES:
            _upload_stream(io.BytesIO(data), uri)
            return uri
        # below its part size pyarrow sends one PUT at close: nothing partial can appear (and its
        # error messages are the ones check_writable's probe shows)
        fs, path = filesystem(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return uri
    tmp = temp_output(uri)
    try:
        with os.fdopen(_create_new(tmp), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, uri)
    except BaseException:
        discard(tmp)
        raise
    return uri


def write_parquet_atomic(table: pa.Table, path: PathLike) -> str:
    """Write `table` (zstd) to `path` atomically; returns the path/URI as a str."""
    uri = str(path)
    if is_remote(uri):
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return write_bytes_atomic(buf.getvalue(), uri)
    with atomic_output(uri) as tmp:
        pq.write_table(table, tmp, compression="zstd")  # pyarrow creates the file with the umask's mode
    return uri


def write_json_atomic(obj: Any, path: PathLike) -> str:
    return write_bytes_atomic((json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), path)


def read_json(uri: PathLike) -> Any:
    return json.loads(read_bytes(uri))


# --- markers and parts ---------------------------------------------------------------------


def marker_path(out: PathLike, stage: str, key: str) -> str:
    return layout.marker(out, stage, key)


def is_done(out: PathLike, stage: str, key: str, cfg_hash: str) -> bool:
    try:
        return read_json(marker_path(out, stage, key)).get("config_hash") == cfg_hash
    except (OSError, ValueError, AttributeError):
        return False


def mark_done(out: PathLike, stage: str, key: str, cfg_hash: str, **info: Any) -> None:
    write_json_atomic({"config_hash": cfg_hash, **info}, marker_path(out, stage, key))


@remote_io()
def read_table(uri: PathLike, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file (local or remote) as a table."""
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def list_parts(directory: PathLike) -> list[str]:
    """The part-*.parquet files directly in a folder or prefix, sorted (names only: O(files))."""
    return sorted(p for p in list_files(directory, layout.SUFFIX) if layout.is_part(p))


def read_parts(directory: PathLike, schema: pa.Schema | None = None) -> pa.Table:
    """All `*.parquet` parts of a directory or prefix as one table (hidden temporary files ignored)."""
    parts = list_files(directory, ".parquet")
    if not parts:
        if schema is not None:
            return schema.empty_table()
        raise UsageError(f"no Parquet parts in {directory}; run the previous stage first (or check --input)")
    tables = [read_table(p) for p in parts]
    if schema is not None:
        tables = [t.select(schema.names).cast(schema) for t in tables]
    return pa.concat_tables(tables)


_CREDENTIALS = {  # what a writable bucket needs, by scheme
    "s3": "bucket exists, AWS_* credentials allow writing, AWS_ENDPOINT_URL points at the server",
    "gs": "bucket exists, GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login` "
    "credentials allow writing",
}
_CREDENTIALS["gcs"] = _CREDENTIALS["gs"]


def check_writable(out: PathLike, min_free_bytes: int = 64 << 20) -> None:
    """Fail fast on an unwritable output or a (nearly) full disk, before any work starts."""
    out = str(out)
    if is_remote(out):
        check_scheme(out, "--output")
        probe = join(out, f".write-test-{os.getpid()}")
        try:
            write_bytes_atomic(b"x", probe)
            delete(probe)
        except (OSError, ValueError) as e:
            raise UsageError(
                f"output {out!r} must be writable ({_CREDENTIALS.get(scheme(out), _CREDENTIALS['s3'])}), "
                f"got: {io_line(e)}; create the bucket, fix the credentials or pass another --output"
            ) from e
        return
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"x")
        os.unlink(probe)
    except OSError as e:
        raise UsageError(
            f"output directory {out!r} must be writable, got {e.strerror}; pass a writable --output"
        ) from e
    st = os.statvfs(out)
    free = st.f_bavail * st.f_frsize
    if free < min_free_bytes:
        raise UsageError(
            f"output disk must have at least {min_free_bytes >> 20} MiB free, got {free >> 20} MiB "
            f"at {out!r}; free space or pass another --output"
        )


def check_readable(uri: PathLike, what: str = "--input") -> None:
    """Fail fast (UsageError, one line) when an input location cannot be listed."""
    try:
        fs, path = filesystem(uri)
        fs.get_file_info(path)
    except (OSError, ValueError) as e:
        raise UsageError(
            f"{what} {str(uri)!r} must be readable, got: {io_line(e)}; "
            "check the path, the bucket and the AWS_* credentials"
        ) from e


__all__ = [
    "DONE_DIR",
    "RESOURCE_KEYS",
    "PathLike",
    "atomic_output",
    "basename",
    "check_readable",
    "check_scheme",
    "check_writable",
    "config_hash",
    "delete",
    "discard",
    "download_tree",
    "exists",
    "file_size",
    "filesystem",
    "is_dir",
    "is_done",
    "is_file",
    "is_remote",
    "join",
    "list_files",
    "list_parts",
    "local_copy",
    "mark_done",
    "marker_path",
    "mtime_ns",
    "open_input",
    "parent",
    "publish",
    "publish_copy",
    "read_bytes",
    "read_json",
    "read_parts",
    "read_table",
    "s3_filesystem",
    "scheme",
    "storage_options",
    "sweep_temporaries",
    "temp_output",
    "upload_tree",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_parquet_atomic",
]
