"""curate.io.retry: which storage errors are retried, the backoff, the env vars, the storage calls that
use it (on a real S3 API server, moto), and run_cli's one line for infrastructure failures."""

from __future__ import annotations

import errno
import os
import socket
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from curate.errors import UsageError
from curate.io import retry
from curate.io import storage as st
from curate.io import uri as U
from jobs.runtime import parts
from jobs.runtime.flags import run_cli

PYARROW_STALL = (
    "When reading information for key 'out/a' in bucket 'b': AWS Error NETWORK_CONNECTION during "
    "GetObject operation: curlCode: 28, Timeout was reached"
)


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The waits `retrying` asks for, instead of sleeping them."""
    got: list[float] = []
    monkeypatch.setattr(retry, "_sleep", got.append)
    monkeypatch.delenv(retry.ATTEMPTS_ENV, raising=False)
    monkeypatch.delenv(retry.BASE_DELAY_ENV, raising=False)
    return got


class Flaky:
    """A call that raises `errors` one by one, then returns "ok"."""

    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def _s3fs_style(exc: OSError, cause: BaseException) -> OSError:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    "exc, transient",
    [
        (OSError(PYARROW_STALL), True),
        (OSError("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate."), True),
        (OSError("AWS Error UNKNOWN (HTTP status 503) during GetObject operation"), True),
        (OSError("AWS Error ACCESS_DENIED during HeadObject operation: No response body."), False),
        (
            OSError(
                "AWS Error NO_SUCH_BUCKET during ListObjectsV2 operation: The specified bucket does not exist"
            ),
            False,
        ),
        (OSError("AWS Error UNKNOWN (HTTP status 404) during HeadObject operation"), False),
        (TimeoutError("read timed out"), True),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (OSError(errno.EBUSY, "SlowDown"), True),  # s3fs's translation of SlowDown / 503
        (
            _s3fs_style(
                OSError(errno.EIO, "We encountered an internal error"), _client_error("InternalError", 500)
            ),
            True,
        ),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
        (_client_error("SlowDown", 503), True),
        (_client_error("ThrottlingException", 400), True),
        (_client_error("AccessDenied", 403), False),
        (_client_error("NoSuchKey", 404), False),
        (FileNotFoundError("s3://b/k does not exist"), False),
        (PermissionError(errno.EACCES, "Permission denied"), False),
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (ValueError("bad argument"), False),
        (pa.ArrowInvalid("Parquet magic bytes not found"), False),
        # what pyarrow's GCS client raises for a bucket without credentials: UNAVAILABLE, yet final
        (
            OSError(
                "google::cloud::Status(UNAVAILABLE: Retry policy exhausted, with a last message of "
                "Could not create a OAuth2 access token to authenticate the request."
            ),
            False,
        ),
        (OSError("google::cloud::Status(UNAVAILABLE: Retry policy exhausted: connection reset)"), True),
    ],
)
def test_transient_errors_are_told_from_permanent_ones(exc, transient):
    assert retry.is_transient(exc) is transient


def test_gcs_requests_retry_for_seconds_not_pyarrows_15_minutes(monkeypatch):
    """pyarrow's GCS client retries one request for 15 minutes by default: a gs:// output without
    credentials hung a job that long before its exit-2 message. The limit is ours, and settable."""
    fs, path = U.filesystem("gs://bucket/out/part-1.parquet")
    assert isinstance(fs, pafs.GcsFileSystem) and path == "bucket/out/part-1.parquet"
    assert fs.__reduce__()[1][0]["retry_time_limit"].total_seconds() == U.GCS_RETRY_S < 60
    monkeypatch.setenv("TUBELET_GCS_RETRY_S", "2")
    assert U.filesystem("gs://bucket/k")[0].__reduce__()[1][0]["retry_time_limit"].total_seconds() == 2
    for bad in ("nan", "0", "soon"):
        monkeypatch.setenv("TUBELET_GCS_RETRY_S", bad)
        with pytest.raises(
            UsageError, match=f"TUBELET_GCS_RETRY_S must be a number of seconds > 0, got '{bad}'"
        ):
            U.filesystem("gs://bucket/k")


def test_two_transient_failures_are_retried_with_growing_bounded_waits(waits):
    fn = Flaky(OSError(PYARROW_STALL), TimeoutError("stalled"))
    assert retry.retrying(fn, "s3://b/k") == "ok" and fn.calls == 3
    assert len(waits) == 2 and 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0  # [d/2, d], d doubling

    p = retry.Policy(attempts=12, base_delay=1.0)
    delays = list(p.delays())
    # each wait lies in [d/2, d], d doubling from the base delay up to the cap
    bounds = [min(retry.MAX_DELAY, 2.0**i) for i in range(11)]
    assert len(delays) == 11 and all(d / 2 <= w <= d for w, d in zip(delays, bounds, strict=True)), delays
    assert max(delays) <= retry.MAX_DELAY and delays[-1] >= retry.MAX_DELAY / 2  # capped, not still doubling


@pytest.mark.parametrize(
    "exc",
    [
        FileNotFoundError("s3://b/k does not exist"),
        PermissionError(errno.EACCES, "denied"),
        OSError(errno.ENOSPC, "No space left on device"),
        ValueError("bad"),
    ],
)
def test_a_permanent_error_is_raised_at_once(waits, exc):
    fn = Flaky(exc)
    with pytest.raises(type(exc)) as got:
        retry.retrying(fn)
    assert got.value is exc and fn.calls == 1 and waits == []


def test_spent_attempts_raise_the_last_error(waits):
    errors = [TimeoutError(f"stall {i}") for i in range(5)]
    fn = Flaky(*errors, TimeoutError("never reached"))
    with pytest.raises(TimeoutError) as got:
        retry.retrying(fn)
    assert got.value is errors[-1] and fn.calls == 5 and len(waits) == 4
    assert got.value.tubelet_io_attempts == 5


def test_the_env_vars_are_honoured_and_bad_values_named(waits, monkeypatch):
    monkeypatch.setenv(retry.ATTEMPTS_ENV, "2")
    monkeypatch.setenv(retry.BASE_DELAY_ENV, "0.1")
    fn = Flaky(TimeoutError("a"), TimeoutError("b"), TimeoutError("c"))
    with pytest.raises(TimeoutError, match="b"):
        retry.retrying(fn)
    assert fn.calls == 2 and len(waits) == 1 and 0.05 <= waits[0] <= 0.1
    monkeypatch.setenv(retry.ATTEMPTS_ENV, "1")
    fn = Flaky(TimeoutError("a"))
    with pytest.raises(TimeoutError):
        retry.retrying(fn)
    assert fn.calls == 1

    for name, bad in (
        (retry.ATTEMPTS_ENV, "0"),
        (retry.ATTEMPTS_ENV, "three"),
        (retry.BASE_DELAY_ENV, "-1"),
        (retry.BASE_DELAY_ENV, "nan"),
        (retry.BASE_DELAY_ENV, "soon"),
    ):
        monkeypatch.setenv(retry.ATTEMPTS_ENV, "5")
        monkeypatch.setenv(retry.BASE_DELAY_ENV, "0.5")
        monkeypatch.setenv(name, bad)
        with pytest.raises(UsageError, match=rf"^{name} must be .*, got {bad!r}; set it to"):
            retry.policy()


def test_local_paths_are_never_retried(waits, tmp_path):
    fn = Flaky(ConnectionResetError(errno.ECONNRESET, "reset"))
    wrapped = U.remote_io()(fn)
    with pytest.raises(ConnectionResetError):
        wrapped(str(tmp_path / "x"))
    assert fn.calls == 1 and waits == []
    fn = Flaky(ConnectionResetError(errno.ECONNRESET, "reset"))
    assert U.remote_io()(fn)("s3://b/x") == "ok" and fn.calls == 2


class Stalling(pafs.FileSystemHandler):
    """A pyarrow filesystem (through `pafs.PyFileSystem`) whose calls of `method` fail as a stalled
    S3 request does, the first two for each path: each storage call needs its retries to get
    through. Every other call goes to the real S3 filesystem."""

    def __init__(self, fs: pafs.FileSystem, method: str, calls: list[str]):
        self.fs, self.method, self.calls = fs, method, calls

    def _call(self, name: str, *args):
        if name == self.method:
            key = repr(args[0])
            if self.calls.count(key) < 2:  # the first two requests for each path stall
                self.calls.append(key)
                raise OSError(PYARROW_STALL)
        return getattr(self.fs, name)(*args)

    def get_type_name(self):
        return "stalling-" + self.fs.type_name

    def equals(self, other):
        return self is other

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self._call("get_file_info", paths)

    def get_file_info_selector(self, selector):
        return self._call("get_file_info", selector)

    def create_dir(self, path, recursive):
        return self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        return self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        return self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        return self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        return self.fs.delete_file(path)

    def move(self, src, dest):
        return self.fs.move(src, dest)

    def copy_file(self, src, dest):
        return self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self._call("open_input_stream", path)

    def open_input_file(self, path):
        return self._call("open_input_file", path)

    def open_output_stream(self, path, metadata):
        return self._call("open_output_stream", path, metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)


@pytest.mark.parametrize(
    "method", ["open_input_stream", "open_input_file", "open_output_stream", "get_file_info"]
)
def test_storage_calls_on_s3_survive_failing_requests(s3, waits, monkeypatch, method):
    bucket = s3.make_bucket(f"retry-{method.replace('_', '-')}")
    table = pa.table({"x": [1, 2, 3]})
    real = U.filesystem
    calls: list[str] = []  # one entry per injected failure

    def filesystem(u):
        fs, path = real(u)
        return (pafs.PyFileSystem(Stalling(fs, method, calls)), path) if U.is_remote(u) else (fs, path)

    monkeypatch.setattr(U, "filesystem", filesystem)
    monkeypatch.setattr(st, "filesystem", filesystem)
    part = st.write_parquet_atomic(table, f"{bucket}/out/part-a.parquet")  # open_output_stream
    assert st.read_table(part).equals(table)  # open_input_file
    st.write_json_atomic({"k": 1}, f"{bucket}/out/m.json")
    assert st.read_json(f"{bucket}/out/m.json") == {"k": 1}  # get_file_info + open_input_stream
    assert st.list_files(f"{bucket}/out") == [f"{bucket}/out/m.json", part]  # get_file_info
    with st.local_copy(part) as local:  # open_input_stream, rewritten from its first byte
        assert pq.read_table(local).equals(table)
    assert parts.footer(part).num_rows == 3  # open_input_file
    assert st.exists(part)
    st.delete(part)
    assert not st.exists(part)
    assert len(calls) >= 2 and len(waits) == len(calls)  # every injected failure was waited for and retried


@pytest.mark.slow
def test_a_10_s_stall_of_the_server_is_survived(s3, caplog):
    """A real stall: the S3 server process is stopped for 10 s (connections accepted, nothing
    answered) while a part is read and an object written; both get through once it answers.
    Two layers retry: the AWS SDK inside pyarrow (a request with no byte for 3 s is dropped and
    tried again, 3 tries) absorbs about 10 s; a longer stall reaches `curate.io.retry` (measured:
    a 25 s stall took 2 of its retries, STALL=25 runs it)."""
    bucket = s3.make_bucket("retry-stall")
    table = pa.table({"x": list(range(100))})
    part = st.write_parquet_atomic(table, f"{bucket}/out/part-a.parquet")
    stall = float(os.environ.get("STALL", "10"))
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="tubelet.io"), s3.stalled(stall):
        got = st.read_table(part)
        st.write_json_atomic({"k": 1}, f"{bucket}/out/m.json")
        waited = time.monotonic() - t0
    assert got.equals(table) and st.read_json(f"{bucket}/out/m.json") == {"k": 1}
    assert waited >= stall - 0.5, waited  # the calls did meet the stall, and waited it out
    retried = [r.getMessage() for r in caplog.records if " failed (" in r.getMessage()]
    print(
        f"stall of {stall:g} s: read + write took {waited:.1f} s, {len(retried)} retries by curate.io.retry"
    )


def test_a_missing_object_is_not_retried(s3, waits):
    bucket = s3.make_bucket("retry-missing")
    with pytest.raises(FileNotFoundError):
        st.read_json(f"{bucket}/nothing.json")
    with pytest.raises(OSError), st.local_copy(f"{bucket}/nothing.mp4"):
        pass
    assert waits == []


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("WARNING", "tubelet.io"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_run_cli_ends_a_full_disk_in_one_line(capsys):
    def job():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/clips/.part-a.tmp")

    assert run_cli(job) == 1
    line = _one_error_line(capsys)
    assert (
        line.startswith("error: disk full: ")
        and "No space left" in line
        and "rerun" in line
        and "resume" in line
    )


def test_run_cli_ends_an_unreachable_endpoint_in_one_line(capsys, waits, monkeypatch):
    def injected():
        raise EndpointConnectionError(endpoint_url="http://10.0.0.1:9000/b/k")

    assert run_cli(injected) == 1
    line = _one_error_line(capsys)
    assert line.startswith("error: storage or network unreachable: Could not connect") and "resume" in line

    # a real dead endpoint through the storage layer: pyarrow's error, retried, then the line
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    for k, v in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_EC2_METADATA_DISABLED": "true",
        retry.ATTEMPTS_ENV: "2",
    }.items():
        monkeypatch.setenv(k, v)
    assert run_cli(lambda: st.read_bytes("s3://dead-bucket/k.json")) == 1
    line = _one_error_line(capsys)
    assert (
        line.startswith("error: object storage unreachable after 2 attempts: ")
        and "NETWORK_CONNECTION" in line
    )
    assert len(waits) == 1


def test_run_cli_keeps_other_errors_and_refuses_bad_env(capsys, monkeypatch):
    def bug():
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        run_cli(bug)
    monkeypatch.setenv(retry.ATTEMPTS_ENV, "many")
    ran = []
    assert run_cli(lambda: ran.append(1)) == 2 and ran == []
    assert _one_error_line(capsys).startswith(
        f"error: {retry.ATTEMPTS_ENV} must be an integer >= 1, got 'many'"
    )


def test_a_transient_input_failure_ends_split_and_writes_no_row(tmp_path, monkeypatch, waits):
    from curate.shots.split import SplitConfig
    from jobs.runtime import split_parts as J

    out = str(tmp_path / "out")

    def stalled(uri):
        raise OSError(PYARROW_STALL)

    monkeypatch.setattr(J, "local_copy", stalled)
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        J.process_one("s3://b/raw/a.mp4", SplitConfig(), out)
    assert not (tmp_path / "out").exists()  # no error row, no marker: the rerun reads it again

    def missing(uri):
        raise FileNotFoundError(f"{uri} does not exist")

    monkeypatch.setattr(J, "local_copy", missing)
    info = J.process_one(str(tmp_path / "gone.mp4"), SplitConfig(), out)  # a missing input stays a data row
    assert info["status"] == "error" and info["failed_stage"] == "probe"
    assert st.list_files(st.join(out, "_done", "split"), recursive=True)
