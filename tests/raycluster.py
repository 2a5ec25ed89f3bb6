"""A private Ray head on 127.0.0.1 for `ray job submit` tests, stopped as a process group
(`ray stop` would kill every Ray instance on the machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")


def ray_env() -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # loopback only
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def ray_head(log: Path) -> Iterator[str]:
    """Yields the dashboard address of a head started with `ray start --head --block`.

    important: every port Ray would otherwise take at a fixed default (GCS 6379, dashboard 8265,
    client server 10001, dashboard agent 52365) is a free one, so two test runs on one machine
    each get their own head instead of submitting jobs into each other's."""
    gcs_port, port, client_port, agent_port = free_ports(4)
    with log.open("w") as out:
        head = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(gcs_port),
                "--num-cpus",
                "2",
                "--include-dashboard",
                "true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(port),
                "--ray-client-server-port",
                str(client_port),
                "--dashboard-agent-listen-port",
                str(agent_port),
                "--disable-usage-stats",
            ],
            env=ray_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_http(f"http://127.0.0.1:{port}/api/version", 120)
            yield f"http://127.0.0.1:{port}"
        finally:
            os.killpg(head.pid, signal.SIGTERM)
            try:
                head.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait()


def submit(address: str, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    import json

    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"excludes": [".venv", ".git", "demo-out", "bench-out", "*.mp4"]}),
        "--",
        sys.executable,
        *args,
    ]
    # important: the dashboard answers before the head's job agent has registered; a submit in
    # that window fails with "No available agent to submit job" and is safe to retry.
    deadline = time.time() + 90
    while True:
        r = subprocess.run(cmd, capture_output=True, text=True, env=ray_env(), timeout=timeout)
        if r.returncode == 0 or "No available agent" not in r.stdout + r.stderr or time.time() > deadline:
            return r
        time.sleep(2)
