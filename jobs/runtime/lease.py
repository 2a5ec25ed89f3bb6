"""One run per output: `OUT/_lease.json` names the run that holds an output folder.

Two runs on one --output destroy each other's results: cleanup (`decide()`, `finalize()`,
`merge_manifest`) deletes every part without a marker, including another run's work in flight.
So every job that writes into a folder claims it first, after its arguments are checked and
before Ray starts:

    with lease.hold(out, "jobs.curate", watch=lease.stage_folders(out)):
        ...

The claim is an exclusive create: on local disk a hard link of a finished temporary file (fails
if the lease exists, and never shows a half-written lease); on S3 a PUT with `If-None-Match: *`
(s3fs `mode="create"`), which S3 and moto refuse with 412 when the object exists. Other object
stores get a check-then-write (a race of two runs starting in the same instant is not caught).

A heartbeat thread rewrites the lease every HEARTBEAT_S seconds. A lease is stale, and taken
over with a line saying so, when its heartbeat is older than TUBELET_LEASE_STALE_S seconds
(default 120: a run killed on another node) or when it names this host and a process that no
longer runs (a run killed with SIGKILL here: the rerun takes over at once). Two runs taking
over the same stale lease in the same instant can both succeed (read, delete, create is not one
step); the heartbeat of the loser then sees the other run's lease and says so.

A held lease stops the job with exit 2 and one line naming the holder. `watch` names the leases
of related folders that must not be held either: a stage job (`--output OUT/scored`) watches
OUT (curate or split writing it), and split/curate watch the stage folders of OUT. The lease is
removed on a normal exit, an error and Ctrl-C (the `with` block unwinds); a killed run leaves
it for the stale rule above.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import psutil

from curate.errors import UsageError
from curate.io import layout, storage
from jobs.runtime.flags import fail

LEASE_FILE = "_lease.json"  # "_": skipped by every folder reader (pyarrow, Ray Data)
STALE_ENV = "TUBELET_LEASE_STALE_S"
STALE_S = 120.0
HEARTBEAT_S = 30.0
# stage folders of a run root that a stage job may hold (OUT/filtered: jobs.filter's usual output)
WATCHED = (layout.SCORED, "filtered", layout.CAPTIONS, layout.LATENTS, layout.REPORT)


def stale_s() -> float:
    try:
        value = float(os.environ.get(STALE_ENV, STALE_S))
    except ValueError:
        value = STALE_S
    return value if value > 0 else STALE_S


def lease_path(folder: str) -> str:
    return storage.join(folder, LEASE_FILE)


def stage_folders(out: str) -> list[str]:
    """The folders of run root `out` whose leases a run-root job (split, curate) must find free."""
    return [layout.folder(out, name) for name in WATCHED]


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    pid_started: float  # the process's start time: a reused pid is not the holder
    run_id: str
    job: str
    started: str  # ISO 8601 UTC
    heartbeat: str
    heartbeat_unix: float

    def describe(self) -> str:
        return f"{self.job} on host {self.host} pid {self.pid} since {self.started}"


def _now() -> tuple[str, float]:
    t = time.time()
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"), t


def _process_started(pid: int) -> float:
    """The start time of process `pid` (0: no such process, or a zombie: killed, not yet reaped)."""
    try:
        proc = psutil.Process(pid)
        return 0.0 if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def new_holder(job: str) -> Holder:
    iso, t = _now()
    pid = os.getpid()
    return Holder(
        host=socket.gethostname(),
        pid=pid,
        pid_started=_process_started(pid),
        run_id=uuid.uuid4().hex[:12],
        job=job,
        started=iso,
        heartbeat=iso,
        heartbeat_unix=t,
    )


def _encode(h: Holder) -> bytes:
    return (json.dumps(asdict(h), indent=1, sort_keys=True) + "\n").encode()


def read_holder(folder: str) -> Holder | None:
    """The lease of `folder` (None: free); an unreadable lease is a holder named "unknown"."""
    path = lease_path(folder)
    try:
        data = json.loads(storage.read_bytes(path))
        return Holder(**{k: data[k] for k in Holder.__dataclass_fields__})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        if not storage.exists(path):
            return None
        return Holder(
            host="unknown",
            pid=0,
            pid_started=0.0,
            run_id="",
            job="an unreadable lease",
            started="unknown",
            heartbeat="unknown",
            heartbeat_unix=time.time(),
        )


def why_stale(h: Holder) -> str | None:
    """Why `h` no longer holds its lease (None: it does)."""
    age = time.time() - h.heartbeat_unix
    if age > stale_s():
        return f"its heartbeat is {age:.0f} s old (stale after {stale_s():g} s)"
    if h.host == socket.gethostname() and h.pid > 0:
        started = _process_started(h.pid)
        if not started or (h.pid_started and abs(started - h.pid_started) > 1.0):
            return f"its process {h.pid} no longer runs on this host"
    return None


def _create(path: str, data: bytes) -> bool:
    """Write `data` at `path` only if nothing is there; False if something is."""
    if storage.is_remote(path):
        if storage.scheme(path) in ("s3", "s3a"):
            fs, key = storage.s3_filesystem(path)
            try:
                fs.pipe_file(key, data, mode="create")  # If-None-Match: *
            except FileExistsError:
                return False
            return True
        if storage.exists(path):  # no conditional write here: check, then write (see the module doc)
            return False
        storage.write_bytes_atomic(data, path)
        return True
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, storage.temp_name(LEASE_FILE))
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)  # atomic and exclusive: the lease appears whole or not at all
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: an exclusive create, then the content
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    finally:
        storage.discard(tmp)
    return True


def held_error(folder: str, h: Holder) -> UsageError:
    age = max(0.0, time.time() - h.heartbeat_unix)
    return fail(
        "--output must not be in use by another run",
        f"{folder} held by {h.describe()} (heartbeat {age:.0f} s ago)",
        f"wait for it to finish, pass another --output, or remove {lease_path(folder)} "
        "if you are sure no run holds it",
    )


class Lease:
    """This run's hold on `folder`; `release()` (or leaving `hold`) gives it back."""

    def __init__(self, folder: str, holder: Holder, heartbeat_s: float):
        self.folder, self.holder, self.heartbeat_s = folder, holder, heartbeat_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="tubelet-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                now = read_holder(self.folder)
                if now is None or now.run_id != self.holder.run_id:
                    taken = now.describe() if now else "nobody (it was removed)"
                    sys.stderr.write(
                        f"warning: the lease of {self.folder} is now held by {taken}: two runs may "
                        "be writing this output; stop one and rerun the other\n"
                    )
                    return
                iso, t = _now()
                self.holder = Holder(**{**asdict(self.holder), "heartbeat": iso, "heartbeat_unix": t})
                storage.write_bytes_atomic(_encode(self.holder), lease_path(self.folder))
            except (OSError, ValueError):  # a storage hiccup: the next beat tries again
                continue

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(OSError, ValueError):
            now = read_holder(self.folder)
            if now is not None and now.run_id == self.holder.run_id:  # never another run's lease
                storage.delete(lease_path(self.folder))


def claim(folder: str, job: str, *, watch: Sequence[str] = ()) -> Lease:
    """Hold `folder` for this run, or raise the exit-2 UsageError naming the holder."""
    for other in watch:
        h = read_holder(other)
        if h is not None and why_stale(h) is None:
            raise held_error(other, h)
    me = new_holder(job)
    path = lease_path(folder)
    for _ in range(3):  # create; else take a stale lease over and create again
        if _create(path, _encode(me)):
            return Lease(folder, me, heartbeat_s=min(HEARTBEAT_S, stale_s() / 4))
        h = read_holder(folder)
        if h is None:
            continue  # released meanwhile
        why = why_stale(h)
        if why is None:
            raise held_error(folder, h)
        sys.stderr.write(f"lease: taking over {path} from {h.describe()}: {why}\n")
        again = read_holder(folder)
        if again is not None and again.run_id == h.run_id:  # still the stale one, not a newer run's
            storage.delete(path)
    h = read_holder(folder)
    raise (
        held_error(folder, h)
        if h
        else fail("--output lease must be creatable", path, "check that the folder is writable and rerun")
    )


@contextlib.contextmanager
def hold(folder: str, job: str, *, watch: Sequence[str] = ()) -> Iterator[Lease]:
    """`claim` for the `with` block: released on exit, on an error and on Ctrl-C."""
    lease = claim(folder, job, watch=watch)
    try:
        # held: no other run writes here, so temporaries left in it are a killed run's
        gone = storage.sweep_temporaries(folder)
        if gone:
            sys.stderr.write(f"lease: removed {len(gone)} temporary file(s) a killed run left in {folder}\n")
        yield lease
    finally:
        lease.release()
