"""A DiT run directory (config, checkpoints, loss log) kept in object storage.

The training loop (latents/dit, torch only) reads and writes a local run folder. When the run
lives at a URI (s3://bucket/runs/a), every worker trains in a worker-local staging folder:
`pull()` fetches config.json, loss.csv and the newest COMPLETE checkpoint (the one whose
state.json exists: state.json is uploaded last), and `push_checkpoint()` uploads a finished
checkpoint file by file, state.json last, then config.json and loss.csv. Objects are written
whole, so a crash mid-upload leaves the previous checkpoint as the newest complete one.
The staging folder is removed when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from curate.io import storage

CKPT_DIR = "checkpoints"  # latents.dit.checkpoint.CKPT_DIR (not imported: latents/dit stays torch-only)
STATE = "state.json"
RUN_FILES = ("config.json", "loss.csv", "loss.png")
_STEP = re.compile(r"^step-(\d{7})$")


def latest_remote_checkpoint(run: str) -> str | None:
    """The URI of the newest checkpoint folder of `run` that has its state.json, or None."""
    steps = []
    for uri in storage.list_files(storage.join(run, CKPT_DIR), STATE, recursive=True):
        folder = storage.parent(uri)
        if _STEP.match(storage.basename(folder)):
            steps.append(folder)
    return max(steps, key=storage.basename) if steps else None


def pull(run: str, local: str | Path) -> str | None:
    """Copy the run's config, loss log and newest complete checkpoint into `local`; returns the
    checkpoint name."""
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        uri = storage.join(run, name)
        if storage.exists(uri):
            (local / name).write_bytes(storage.read_bytes(uri))
    ckpt = latest_remote_checkpoint(run)
    if ckpt is None:
        return None
    name = storage.basename(ckpt)
    dest = local / CKPT_DIR / name
    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(storage.list_files(ckpt), key=lambda u: storage.basename(u) == STATE)  # state.json last
    for uri in files:
        with storage.local_copy(uri) as tmp:
            shutil.copyfile(tmp, dest / storage.basename(uri))
    return name


def push_checkpoint(local_ckpt: str | Path, run: str, local_run: str | Path) -> None:
    """Upload one finished local checkpoint folder (state.json last) and the run's small files."""
    local_ckpt = Path(local_ckpt)
    target = storage.join(run, CKPT_DIR, local_ckpt.name)
    files = sorted((p for p in local_ckpt.iterdir() if p.is_file()), key=lambda p: p.name == STATE)
    for p in files:  # important: state.json last: it marks the checkpoint complete
        storage.publish_copy(str(p), storage.join(target, p.name))
    push_files(run, local_run)


def push_files(run: str, local_run: str | Path) -> None:
    for name in RUN_FILES:
        p = Path(local_run) / name
        if p.is_file():
            storage.publish_copy(str(p), storage.join(run, name))


@contextlib.contextmanager
def staged_run(run: str) -> Iterator[str]:
    """A local folder to train in: `run` itself when local, else a pulled worker-local copy
    that is removed on exit (the object store keeps everything that was pushed)."""
    if not storage.is_remote(run):
        yield run
        return
    local = tempfile.mkdtemp(prefix="tubelet-run-")
    try:
        pull(run, local)
        yield local
    finally:
        shutil.rmtree(local, ignore_errors=True)


def is_remote(run: str | os.PathLike) -> bool:
    return storage.is_remote(run)
