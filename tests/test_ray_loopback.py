"""The Ray instance a job starts for itself listens on 127.0.0.1 only and dies with its driver.

Real jobs run as subprocesses; every listening socket of every process they start is listed
with psutil while they run.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.media import two_shot_video

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.ray


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)  # the job itself decides for the instance it starts
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def is_loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    if a.version == 6 and a.ipv4_mapped:  # "::ffff:127.0.0.1": an IPv4 socket on a dual-stack listener
        a = a.ipv4_mapped
    return a.is_loopback


def _is_ray(p: psutil.Process) -> bool:
    try:
        return (
            p.name().startswith("ray::")
            or p.name() in ("raylet", "gcs_server")
            or "/ray/" in " ".join(p.cmdline())
        )
    except psutil.Error:
        return False


class Watch:
    """Poll a job's process tree: its Ray processes and every socket they listen on."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.sockets: set[tuple[str, str, int]] = set()  # (process name, ip, port)
        self.ray: dict[int, float] = {}  # pid -> create time

    def poll(self) -> None:
        try:
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in tree:
            try:
                if _is_ray(p):
                    self.ray.setdefault(p.pid, p.create_time())
                for c in p.net_connections(kind="inet"):
                    if c.status == psutil.CONN_LISTEN:
                        self.sockets.add((p.name(), c.laddr.ip, c.laddr.port))
            except psutil.Error:
                continue

    def alive(self) -> list[int]:
        out = []
        for pid, created in self.ray.items():
            try:
                if psutil.Process(pid).create_time() == created:
                    out.append(pid)
            except psutil.Error:
                continue
        return out

    def wait_gone(self, limit_s: float) -> list[int]:
        deadline = time.monotonic() + limit_s
        while (left := self.alive()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left


def run_watched(args: list[str], cwd: Path, limit_s: float = 300) -> tuple[Watch, int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    w = Watch(proc)
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and time.monotonic() < deadline:
        w.poll()
        time.sleep(0.25)
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate()[0]
    return w, proc.returncode, out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("in")
    two_shot_video(d / "a.mp4", seconds=2.5)
    return d


def _only_loopback(job: str, w: Watch, rc: int, out: str) -> None:
    assert rc == 0, out[-3000:]
    off = sorted(s for s in w.sockets if not is_loopback(s[1]))
    print(f"{job}: {len(w.sockets)} listening sockets, {len(off)} off loopback, {len(w.ray)} Ray processes")
    assert w.sockets, "no listening socket seen: the watch did not see Ray running"
    assert not off, off
    assert not w.wait_gone(30), "Ray processes outlived the job"


def test_split_and_score_listen_on_loopback_only_and_leave_nothing(videos, tmp_path):
    out = tmp_path / "out"
    _only_loopback("split", *run_watched(["jobs.split", "--input", str(videos), "--output", str(out)], REPO))
    # score: its model actors (the smoke CLIP) are Ray workers too
    _only_loopback(
        "score",
        *run_watched(
            [
                "jobs.score",
                "--input",
                str(out / "clips"),
                "--output",
                str(out / "scored"),
                "--preset",
                "smoke",
            ],
            REPO,
        ),
    )


@pytest.mark.slow
def test_curate_listens_on_loopback_only_and_leaves_nothing(videos, tmp_path):
    """Every stage in one job: split, score, caption and encode actors, the report."""
    _only_loopback(
        "curate",
        *run_watched(
            ["jobs.curate", "--input", str(videos), "--output", str(tmp_path / "out"), "--preset", "smoke"],
            REPO,
            limit_s=600,
        ),
    )


@pytest.mark.slow
def test_agents_die_with_a_killed_driver(videos, tmp_path):
    """kill -9 of the driver mid-run: its GCS, raylet, workers and agents go too (Ray's own
    agents would linger a minute or more, listening)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.split", "--input", str(videos), "--output", str(tmp_path / "out")],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    w = Watch(proc)
    deadline = time.monotonic() + 120
    agents = 0
    while proc.poll() is None and time.monotonic() < deadline and agents < 2:
        w.poll()
        agents = sum(1 for pid in w.alive() if "Agent" in psutil.Process(pid).name())
        time.sleep(0.25)
    assert agents >= 2, "the job ended before its agents were seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not w.wait_gone(20), [psutil.Process(p).name() for p in w.alive()]
