"""Bounded retries with jittered exponential backoff for object-storage reads and writes.

A stalled or briefly unreachable bucket (a timeout, a dropped connection, a 5xx, SlowDown or
throttling) is retried; a permanent answer (not found, access denied, a bad argument, a full
local disk) is raised at once. Once the attempts are spent the last error is raised as it
was, and `run_cli` turns it into one line (`infrastructure_failure`): the rerun resumes.

    TUBELET_IO_ATTEMPTS     tries per call, the first included (default 5)
    TUBELET_IO_BASE_DELAY   seconds before the 2nd try, doubled for each later one (default 0.5),
                            at most MAX_DELAY; each wait is drawn in [delay / 2, delay]

Only remote locations are retried (`curate.io.uri.is_remote`): a local path has nothing to wait for,
so its calls go straight through. Every retried call is whole: a read starts over, a write
uploads the whole object again (never a resumed half).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from curate.errors import UsageError, io_line

ATTEMPTS_ENV = "TUBELET_IO_ATTEMPTS"
BASE_DELAY_ENV = "TUBELET_IO_BASE_DELAY"
DEFAULT_ATTEMPTS = 5
DEFAULT_BASE_DELAY = 0.5
MAX_DELAY = 30.0  # seconds: one wait never exceeds this, however many attempts are allowed

log = logging.getLogger("tubelet.io")
T = TypeVar("T")
_sleep = time.sleep  # tests replace it (monkeypatch) to run instantly

# a cut or refused connection, a timeout, a busy or failing server, an NFS handle gone stale:
# worth another try on a remote location (EIO / EREMOTEIO / EBUSY are s3fs's 5xx / SlowDown)
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, n)
    for n in (
        "ETIMEDOUT",
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "EPIPE",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EAGAIN",
        "EBUSY",
        "EIO",
        "EREMOTEIO",
        "ESTALE",
        "EINTR",
    )
    if hasattr(errno, n)
)
# never retried: the answer would be the same (and a full disk only gets fuller)
DISK_FULL_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT") if hasattr(errno, n))
PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)

# pyarrow's S3 errors are plain OSErrors (no errno) whose text carries the AWS error type:
# "AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28, Timeout was reached",
# "AWS Error UNKNOWN (HTTP status 503) during ..."
_AWS_ERROR = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))?")
TRANSIENT_AWS = frozenset(
    {
        "NETWORK_CONNECTION",
        "SLOW_DOWN",
        "THROTTLING",
        "SERVICE_UNAVAILABLE",
        "INTERNAL_FAILURE",
        "REQUEST_TIMEOUT",
        "REQUEST_TIME_TOO_SKEWED",
    }
)
# botocore's ClientError codes (s3fs and boto3 readers)
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
    }
)
# the same failures when only the text says so (fsspec filesystems, curl)
_TRANSIENT_TEXT = re.compile(
    r"timed? ?out|timeout was reached|connection (reset|refused|aborted|closed)|"
    r"could not connect|broken pipe|temporarily unavailable|slow ?down",
    re.I,
)


@dataclass(frozen=True)
class Policy:
    attempts: int = DEFAULT_ATTEMPTS
    base_delay: float = DEFAULT_BASE_DELAY
    max_delay: float = MAX_DELAY

    def delays(self) -> Iterator[float]:
        """The waits between tries (attempts - 1 of them): delay doubles, jittered in [d/2, d], capped."""
        for i in range(self.attempts - 1):
            d = min(self.max_delay, self.base_delay * 2.0**i)
            yield d * (0.5 + 0.5 * random.random())  # jitter: workers that failed together retry apart


def policy() -> Policy:
    """The policy from TUBELET_IO_ATTEMPTS / TUBELET_IO_BASE_DELAY (read at each call: Ray workers
    inherit the driver's environment); a bad value is a UsageError naming the variable."""
    raw = os.environ.get(ATTEMPTS_ENV, "").strip()
    try:
        attempts = int(raw) if raw else DEFAULT_ATTEMPTS
    except ValueError:
        attempts = 0
    if attempts < 1:
        raise UsageError(
            f"{ATTEMPTS_ENV} must be an integer >= 1, got {raw!r}; set it to {DEFAULT_ATTEMPTS} (or unset it)"
        )
    raw = os.environ.get(BASE_DELAY_ENV, "").strip()
    try:
        base = float(raw) if raw else DEFAULT_BASE_DELAY
    except ValueError:
        base = -1.0
    if not (math.isfinite(base) and base >= 0):
        raise UsageError(
            f"{BASE_DELAY_ENV} must be a number of seconds >= 0, got {raw!r}; "
            f"set it to {DEFAULT_BASE_DELAY:g} (or unset it)"
        )
    return Policy(attempts, base)


def _aws_code(e: BaseException) -> tuple[str | None, int | None]:
    """(error code, HTTP status) of a botocore ClientError, else (None, None)."""
    resp = getattr(e, "response", None)
    if not isinstance(resp, dict):
        return None, None
    code = (resp.get("Error") or {}).get("Code")
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return (str(code) if code is not None else None), (int(status) if status else None)


def _transient_library_error(e: BaseException) -> bool:
    """botocore / aiohttp connection and timeout errors (looked up only when already imported)."""
    bexc = sys.modules.get("botocore.exceptions")
    if bexc is not None and isinstance(
        e,
        (
            bexc.ConnectionError,
            bexc.HTTPClientError,
            bexc.ReadTimeoutError,
            bexc.ConnectTimeoutError,
            bexc.ResponseStreamingError,
        ),
    ):
        return True
    aio = sys.modules.get("aiohttp")
    return aio is not None and isinstance(e, (aio.ClientConnectionError, aio.ClientPayloadError))


# missing or refused credentials, whatever the transport calls them: waiting does not fix them
# (Google's client reports a missing token as UNAVAILABLE, which reads as transient otherwise)
_PERMANENT_TEXT = re.compile(r"OAuth2 access token|UNAUTHENTICATED|PERMISSION_DENIED", re.I)


def _classify(e: BaseException) -> bool | None:
    """True: transient, False: permanent, None: this exception alone does not say."""
    if isinstance(e, PERMANENT_TYPES):
        return False
    if isinstance(e, OSError) and _PERMANENT_TEXT.search(str(e)):
        return False
    if disk_full(e):
        return False
    if isinstance(e, TimeoutError | ConnectionError) or _transient_library_error(e):
        return True
    code, status = _aws_code(e)
    if code is not None or status is not None:
        return code in TRANSIENT_CODES or (status is not None and (status >= 500 or status == 429))
    if isinstance(e, OSError):
        if e.errno is not None:
            return e.errno in TRANSIENT_ERRNOS
        m = _AWS_ERROR.search(str(e))
        if m:
            status = int(m.group(2)) if m.group(2) else 0
            return m.group(1) in TRANSIENT_AWS or status >= 500 or status == 429
        return bool(_TRANSIENT_TEXT.search(str(e)))
    return None


def _chain(e: BaseException) -> Iterator[BaseException]:
    """`e`, then what it was raised from or wraps (`__cause__`, `__context__`, Ray's `.cause`)."""
    seen: set[int] = set()
    todo = [e]
    while todo and len(seen) < 32:
        x = todo.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        for nxt in (getattr(x, "cause", None), x.__cause__, x.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def is_transient(e: BaseException) -> bool:
    """Worth retrying: a timeout, a lost connection, a 5xx / SlowDown / throttling answer.
    Anything not known to be transient (a bad argument, not found, denied, a full disk) is not."""
    verdict = _classify(e)
    if verdict is not None:
        return verdict
    # s3fs and fsspec re-raise the library's error as another type: the cause decides
    return any(_classify(x) is True for x in list(_chain(e))[1:])


def disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


def is_infrastructure(e: BaseException) -> bool:
    """A failure of the store or the disk rather than of the data read: a transient error (after
    the retries) or a full disk. Never an input's error row: the job ends and the rerun retries."""
    return disk_full(e) or is_transient(e)


def retrying(fn: Callable[..., T], *args: Any, what: str = "", **kwargs: Any) -> T:
    """`fn(*args, **kwargs)`, tried again after a transient error (see `Policy`); a permanent error
    is raised at once, the last transient one once the attempts are spent (tagged with their count)."""
    p = policy()
    delays = p.delays()
    for attempt in range(1, p.attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == p.attempts:
                with contextlib.suppress(AttributeError, TypeError):  # a type without __dict__
                    e.tubelet_io_attempts = attempt  # type: ignore[attr-defined]  # run_cli's line names them
                raise
            wait = next(delays)
            log.warning(
                "%s failed (%s), try %d of %d in %.1f s",
                what or getattr(fn, "__name__", "storage call"),
                io_line(e),
                attempt + 1,
                p.attempts,
                wait,
            )
            _sleep(wait)
    raise AssertionError("unreachable")


# --- infrastructure failures: what run_cli turns into one line ----------------------------------

RERUN = "rerun the same command to resume (finished parts are kept)"
_RAY_LOST = frozenset(
    {
        "LocalRayletDiedError",
        "NodeDiedError",
        "RaySystemError",
        "RpcError",
        "ObjectLostError",
        "OwnerDiedError",
        "ObjectReconstructionFailedError",
        "ObjectFetchTimedOutError",
    }
)
_RAY_WRAPPERS = frozenset({"RayTaskError", "UserCodeException", "RayDataUserCodeException"})


def _names(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def infrastructure_failure(exc: BaseException) -> str | None:
    """One line for a failure of the machinery rather than of the job's input or arguments: a full
    disk, object storage still unreachable after the retries, a lost Ray cluster; None otherwise."""
    # Ray's task wrapper subclasses its cause (and its text is a traceback): read the cause itself
    chain = [x for x in _chain(exc) if not _names(x) & _RAY_WRAPPERS]
    for x in chain:
        if disk_full(x) or "OutOfDiskError" in _names(x):
            return f"disk full: {io_line(x)}; free space (or pass another --output), then {RERUN}"
    for x in chain:
        if _names(x) & _RAY_LOST:
            return f"lost the Ray cluster ({type(x).__name__}: {io_line(x)}); {RERUN}"
    for x in chain:
        tries = getattr(x, "tubelet_io_attempts", None)
        if tries is not None:
            return (
                f"object storage unreachable after {tries} attempts: {io_line(x)}; "
                f"when it answers again, {RERUN}"
            )
    for x in chain:
        if is_transient(x):  # not through `retrying` (a reader of another library): the same outage
            return f"storage or network unreachable: {io_line(x)}; when it answers again, {RERUN}"
    return None
