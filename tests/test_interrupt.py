"""Ctrl-C on a job: one line on stderr and exit 130, whichever step it interrupts (Ray running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from jobs.runtime.flags import INTERRUPTED

VIDEOS = os.environ.get("TUBELET_TEST_VIDEOS")


@pytest.mark.skipif(not VIDEOS, reason="TUBELET_TEST_VIDEOS is not set")
def test_sigint_to_a_running_job_is_one_line_and_exit_130(tmp_path):
    out = tmp_path / "out"
    # a terminal's Ctrl-C goes to the whole process group: the job, and Ray's processes it started
    p = subprocess.Popen(
        [sys.executable, "-m", "jobs.split", "--input", VIDEOS, "--output", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300 and not (out / "_done").exists() and p.poll() is None:
            time.sleep(0.2)
        assert p.poll() is None, p.stderr.read()  # still working: the first video is done, others are not
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130
    assert err.strip().splitlines() == [INTERRUPTED]  # no traceback, no Ray worker noise
