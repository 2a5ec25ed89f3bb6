"""Quiet by default: no HF progress bars; --verbose keeps them (no Ray started)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import os, sys
import transformers.utils.logging as tl
from jobs.runtime.flags import quiet_logs
quiet_logs(verbose=sys.argv[1] == "1")
print(tl.is_progress_bar_enabled(), os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"))
"""


def _probe(verbose: bool) -> str:
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    p = subprocess.run(
        [sys.executable, "-c", PROBE, "1" if verbose else "0"], capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_quiet_turns_off_hf_bars_verbose_keeps_them():
    assert _probe(verbose=False) == "False 1"
    assert _probe(verbose=True) == "True None"
