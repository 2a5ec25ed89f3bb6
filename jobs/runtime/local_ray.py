"""Keep the Ray instance a job starts for itself private, and fail fast on a cluster that is not there.

- `loopback_only(True)`: every socket of the local instance (GCS, raylet, agents, workers,
  the driver) listens on 127.0.0.1. Ray's `_node_ip_address="127.0.0.1"` alone is not enough:
  Ray replaces a loopback node address with the machine's external one unless clusters are
  disabled (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, the switch Ray uses on macOS/Windows).
  The variable is read when `ray` is imported; the driver has imported it already, so the
  constant is set as well, and the child processes inherit the variable.
- `start_reaper()`: a small watchdog process that kills the local instance's processes when
  the driver dies, however it dies (kill -9 included). Without it the dashboard and runtime-env
  agents, which listen on a port, outlive a killed driver by a minute or more.
- `check_reachable(address)`: a TCP connect with a short timeout before `ray.init`, which
  would otherwise retry an unreachable address for minutes.

This module does not import ray at module level: `python -m jobs.runtime.local_ray --reap PID` runs
with psutil only.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys

import psutil

from curate.errors import UsageError

CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
REACH_TIMEOUT_S = 5.0
_REAPERS: dict[int, subprocess.Popen] = {}  # driver pid -> its watchdog (the pipe stays open while we live)


def loopback_only(on: bool) -> None:
    """on: the next `ray.init(address="local")` binds loopback only; off: Ray's own default
    (a driver connecting to a cluster must announce an address the cluster can reach)."""
    import ray._private.ray_constants as rc

    if on:
        os.environ[CLUSTER_SWITCH] = "0"  # read by the GCS, raylet, agents and workers at import
        rc.ENABLE_RAY_CLUSTER = False  # read by this (already imported) driver
    else:
        if os.environ.get(CLUSTER_SWITCH) == "0":
            os.environ.pop(CLUSTER_SWITCH)
        rc.ENABLE_RAY_CLUSTER = not rc.IS_WINDOWS_OR_OSX


def start_reaper() -> None:
    """Start (once per driver process) the watchdog that kills this driver's Ray processes when it dies."""
    me = os.getpid()
    if me in _REAPERS and _REAPERS[me].poll() is None:
        return
    # important: the watchdog learns of the driver's death from its stdin (the pipe closes when
    # the driver's last descriptor goes, on any exit); pipes are not inherited by Ray's children
    _REAPERS[me] = subprocess.Popen(
        [sys.executable, "-m", "jobs.runtime.local_ray", "--reap", str(me)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def _is_ray(p: psutil.Process) -> bool:
    try:
        name = p.name()
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return name.startswith("ray::") or name in ("raylet", "gcs_server") or "/ray/" in cmd


def reap(driver: int, tick_s: float = 0.5) -> None:
    """Watch `driver`'s Ray descendants until stdin closes (the driver is gone), then kill those
    still alive."""
    seen: dict[int, float] = {}  # pid -> create time (a reused pid is not ours)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], tick_s)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            break
        try:
            for p in psutil.Process(driver).children(recursive=True):
                if p.pid not in seen and _is_ray(p):
                    seen[p.pid] = p.create_time()
        except psutil.NoSuchProcess:
            break
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:
                p.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue


def check_reachable(address: str, source: str = "--address") -> None:
    """`host:port` or `ray://host:port` must accept a TCP connection within seconds (UsageError otherwise)."""
    a = address.strip()
    if a in ("auto", "local") or ("://" in a and not a.startswith("ray://")):
        return  # Ray resolves these itself (auto: the `ray start` cluster of this machine)
    a = a.removeprefix("ray://").split("/", 1)[0]
    host, sep, port = a.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(
            f"{source} must be HOST:PORT (or ray://HOST:PORT, auto), got {address!r}; "
            "pass the head's address, e.g. 127.0.0.1:6379"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as e:
        raise UsageError(
            f"{source} must be a reachable Ray cluster, got {address!r} "
            f"({e.strerror or type(e).__name__} within {REACH_TIMEOUT_S:g} s); start the head "
            "(ray start --head), check the host and port, or drop it to run locally"
        ) from e


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--reap":
        reap(int(sys.argv[2]))
