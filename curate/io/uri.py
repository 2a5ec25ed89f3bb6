"""Paths and URIs: one place that knows whether an output lives on local disk or in a bucket.

Every location is a `str`: a local path (`/data/out`, `out/clips`) or a URI that pyarrow.fs
or fsspec resolves (`s3://bucket/prefix`, `gs://...`, `file:///...`). Code elsewhere joins
with `join()` and opens through `filesystem()`; it never does `Path(out) / ...` on a URI.

S3 credentials, region and endpoint come only from the standard AWS environment variables and
config files (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_PROFILE`,
`AWS_REGION`, `AWS_ENDPOINT_URL`): nothing here reads, stores or prints a key; the filesystem
objects are built without explicit keys, so pickling one (to a Ray worker) carries none.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.fs as pafs

from curate.errors import UsageError
from curate.io.retry import retrying

PathLike = str | os.PathLike
T = TypeVar("T")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme(uri: PathLike) -> str:
    """'s3' for s3://..., 'file' for file://... and for plain local paths."""
    m = _SCHEME.match(str(uri))
    return m.group(1).lower() if m else "file"


def is_remote(uri: PathLike) -> bool:
    """True for anything that is not on a local (or locally mounted) filesystem."""
    return scheme(uri) != "file"


def remote_io(uri_arg: int = 0) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: retry the function when its location argument (positional `uri_arg`) is remote;
    a local path goes straight through. Decorate the leaf calls only (retries would multiply)."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> T:
            uri = args[uri_arg] if len(args) > uri_arg else kwargs.get("uri", kwargs.get("path"))
            if uri is None or not is_remote(uri):
                return fn(*args, **kwargs)
            return retrying(
                fn, *args, what=f"{getattr(fn, '__name__', 'storage call')}({str(uri)!r})", **kwargs
            )

        return call

    return wrap


# read through pyarrow's own filesystems; any other scheme needs an fsspec implementation
GCS_RETRY_S = 5.0  # how long pyarrow's GCS client retries one request (TUBELET_GCS_RETRY_S)
PYARROW_SCHEMES = frozenset({"file", "s3", "s3a", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"})


def check_scheme(uri: PathLike, flag: str) -> None:
    """A UsageError naming the scheme when neither pyarrow nor an installed fsspec filesystem
    reads it (before any listing: an unknown scheme otherwise reads as a bucket problem)."""
    sch = scheme(uri)
    if sch in PYARROW_SCHEMES:
        return
    import fsspec

    try:
        fsspec.get_filesystem_class(sch)
    except ImportError as e:
        raise UsageError(
            f"{flag} scheme {sch}:// needs its filesystem package, got {str(uri)!r} ({e}); "
            "install it, or use a local path or s3://"
        ) from None
    except ValueError:
        raise UsageError(
            f"{flag} scheme must be one pyarrow or fsspec reads (a local path, s3://, gs://, hdfs://, "
            f"an installed fsspec protocol), got {sch}:// in {str(uri)!r}; "
            "check the spelling or copy the data to a supported store"
        ) from None


def _local(uri: PathLike) -> str:
    s = str(uri)
    return s[len("file://") :] if s.startswith("file://") else s


def join(base: PathLike, *parts: str) -> str:
    """`base / part / ...` for local paths and URIs alike (a URI keeps its scheme and bucket)."""
    if not is_remote(base):
        return str(Path(_local(base), *parts))
    s = str(base).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            s = f"{s}/{p}"
    if "/." in s:  # "../raw/x.mp4" from a list file: resolve dots inside the bucket
        head, _, key = s.partition("://")
        bucket, _, path = key.partition("/")
        path = posixpath.normpath(path).lstrip("/") if path else ""
        s = f"{head}://{bucket}/{path}".rstrip("/") if path not in ("", ".") else f"{head}://{bucket}"
    return s


def basename(uri: PathLike) -> str:
    return posixpath.basename(str(uri).rstrip("/")) if is_remote(uri) else Path(_local(uri)).name


def parent(uri: PathLike) -> str:
    if not is_remote(uri):
        return str(Path(_local(uri)).parent)
    head, _, _ = str(uri).rstrip("/").rpartition("/")
    return head


def _env(*names: str) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


@functools.lru_cache(maxsize=16)
def _s3(endpoint: str | None, region: str | None, _creds_id: str) -> pafs.FileSystem:
    # important: no access_key/secret_key arguments: the AWS SDK's default chain reads them
    # from the environment / ~/.aws, and a pickled filesystem then carries no secret.
    kwargs: dict = {"region": region or "us-east-1"}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            kwargs["scheme"] = "http"
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=16)
def _fsspec(proto: str) -> pafs.FileSystem:
    import fsspec

    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(proto)))


@functools.lru_cache(maxsize=16)
def _s3fs(endpoint: str | None, region: str | None, _creds_id: str):
    import s3fs

    opts: dict = {"endpoint_url": endpoint} if endpoint else {}
    if region:
        opts["client_kwargs"] = {"region_name": region}
    # no keys here either (botocore's chain reads them); a new client when they change (_creds_id)
    return s3fs.S3FileSystem(skip_instance_cache=True, **opts)


def s3_filesystem(uri: PathLike):
    """(s3fs filesystem, bucket/key) for an s3:// URI: the writes pyarrow cannot do, an aborted
    multipart upload (storage._upload_stream) and a conditional PUT (jobs/runtime/lease.py)."""
    s = str(uri)
    return (
        _s3fs(
            _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            _env("AWS_REGION", "AWS_DEFAULT_REGION"),
            _creds_id(),
        ),
        s[len(scheme(s)) + 3 :],
    )


def _creds_id() -> str:
    """A digest of the credential variables: a changed key gets a new client (the key is not kept)."""
    blob = "\0".join(
        os.environ.get(n, "")
        for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    )
    return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


def filesystem(uri: PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or URI."""
    s = str(uri)
    sch = scheme(s)
    if sch == "file":
        return pafs.LocalFileSystem(), os.path.abspath(_local(s))
    path = s[len(sch) + 3 :]
    if sch in ("s3", "s3a"):
        # AWS_ENDPOINT_URL is the SDK-wide variable (S3-compatible servers, MinIO, moto);
        # pyarrow does not read it itself, so it is passed on here.
        return _s3(
            _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            _env("AWS_REGION", "AWS_DEFAULT_REGION"),
            _creds_id(),
        ), path
    if sch in ("gs", "gcs"):
        return _gcs(_env("TUBELET_GCS_RETRY_S") or str(GCS_RETRY_S)), path
    try:
        fs, p = pafs.FileSystem.from_uri(s)
        return fs, p
    except (ValueError, OSError):  # a scheme pyarrow does not know natively (ArrowInvalid is a ValueError)
        return _fsspec(sch), path


@functools.lru_cache(maxsize=4)
def _gcs(retry_s: str) -> pafs.FileSystem:
    # important: pyarrow's GCS client retries for 15 minutes by default, so a bucket without
    # credentials (no OAuth2 token) or out of reach hung a job that long; bounded, the error
    # comes back in seconds and curate.io.retry decides what to do with it
    import datetime
    import math

    try:
        seconds = float(retry_s)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(
            f"TUBELET_GCS_RETRY_S must be a number of seconds > 0, got {retry_s!r}; "
            f"set it to {GCS_RETRY_S:g} (or unset it)"
        )
    return pafs.GcsFileSystem(retry_time_limit=datetime.timedelta(seconds=seconds))


def storage_options(uri: PathLike) -> dict:
    """fsspec `storage_options` for pandas/fsspec readers of `uri` (no credentials: botocore reads them).

    pandas.read_parquet("s3://bucket/out/latents", storage_options=storage_options("s3://bucket"))
    """
    if scheme(uri) not in ("s3", "s3a"):
        return {}
    opts: dict = {}
    endpoint = _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    region = _env("AWS_REGION", "AWS_DEFAULT_REGION")
    if region:
        opts["client_kwargs"] = {"region_name": region}
    return opts


def _to_uri(uri: PathLike, path: str) -> str:
    """Map a path inside `filesystem(uri)` back to the caller's spelling (URI or local path)."""
    if not is_remote(uri):
        return path
    return f"{scheme(uri)}://{path}"


@remote_io()
def exists(uri: PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@remote_io()
def is_file(uri: PathLike) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


@remote_io()
def is_dir(uri: PathLike) -> bool:
    """A local directory, or a remote prefix with at least one object under it."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        return True
    if not is_remote(uri):
        return False
    sel = pafs.FileSelector(path.rstrip("/"), allow_not_found=True, recursive=False)
    return bool(fs.get_file_info(sel))


@remote_io()
def list_files(
    uri: PathLike, suffix: str = "", *, recursive: bool = False, hidden: bool = False
) -> list[str]:
    """Sorted files directly under `uri` (or all below it) whose name ends with `suffix`.

    Names starting with "." (temporary files of an atomic write) are skipped unless `hidden`;
    a missing directory or prefix is an empty list.
    """
    fs, path = filesystem(uri)
    sel = pafs.FileSelector(path.rstrip("/") or "/", allow_not_found=True, recursive=recursive)
    out = []
    for info in fs.get_file_info(sel):
        if info.type != pafs.FileType.File or not info.base_name.endswith(suffix):
            continue
        if not hidden and info.base_name.startswith("."):
            continue
        out.append(_to_uri(uri, info.path))
    return sorted(out)


@remote_io()
def file_size(uri: PathLike) -> int:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{uri} does not exist")
    return int(info.size)


@remote_io()
def mtime_ns(uri: PathLike) -> int:
    """Last modification time in ns (S3: the upload time, second resolution); 0 when unknown."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{uri} does not exist")
    return int(info.mtime_ns or 0)


@remote_io()
def read_bytes(uri: PathLike) -> bytes:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    with fs.open_input_stream(path) as f:
        return f.read()


@remote_io()
def open_input(uri: PathLike):
    """A seekable binary file object (pyarrow NativeFile) for reading `uri`."""
    fs, path = filesystem(uri)
    return fs.open_input_file(path)


@remote_io()
def delete(uri: PathLike, missing_ok: bool = True) -> None:
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


@contextlib.contextmanager
def local_copy(uri: PathLike, suffix: str | None = None) -> Iterator[str]:
    """A local path with the content of `uri`: the path itself for local files; for a remote
    object a temporary copy in this worker's temp dir (same suffix, for decoders that sniff
    it) that is removed on exit, whatever happens."""
    if not is_remote(uri):
        yield _local(uri)
        return
    fs, path = filesystem(uri)
    sfx = suffix if suffix is not None else Path(path).suffix
    fd, tmp = tempfile.mkstemp(prefix="tubelet-", suffix=sfx)
    os.close(fd)
    try:
        retrying(_download, fs, path, tmp, what=f"download({str(uri)!r})")
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _download(fs: pafs.FileSystem, path: str, local: str) -> None:
    """The whole object into `local`, from its first byte (a retry rewrites the file)."""
    with open(local, "wb") as dst, fs.open_input_stream(path) as src:
        shutil.copyfileobj(src, dst, 1 << 22)


def temp_name(name: str) -> str:
    """A unique hidden temporary name next to `name` (skipped by every folder reader)."""
    return f".{name}.{uuid.uuid4().hex[:12]}.tmp"


_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # what temp_name makes


def sweep_temporaries(folder: PathLike) -> list[str]:
    """Remove the temporaries (`temp_name`) a killed run left anywhere under a local `folder`;
    the removed paths. Only for a folder this run holds (its lease): another run's temporaries
    would be files it is still writing. Object storage has none (every object is one whole PUT)."""
    if is_remote(folder) or not os.path.isdir(_local(folder)):
        return []
    gone = []
    for root, _dirs, files in os.walk(_local(folder)):
        for f in files:
            if _TEMP_NAME.match(f):
                path = os.path.join(root, f)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    gone.append(path)
    return sorted(gone)
