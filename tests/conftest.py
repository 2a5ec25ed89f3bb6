"""Shared fixtures: the real test videos, generated videos, tiny scratch dirs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent


def _videos_dir() -> Path:
    env = os.environ.get("TUBELET_TEST_VIDEOS")
    return Path(env) if env else REPO.parent / "shared" / "data" / "videos"


@pytest.fixture(scope="session")
def real_videos() -> Path:
    """The real test videos (../shared/data/videos or $TUBELET_TEST_VIDEOS).

    Skips where absent; under CI (CI=true) their absence is a failure.
    """
    d = _videos_dir()
    if not (d / "shot_boundaries.json").is_file():
        msg = (
            f"real test videos not found at {d} (need shot_boundaries.json there); "
            "set TUBELET_TEST_VIDEOS to their folder"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def ground_truth(real_videos: Path) -> dict:
    gt = json.loads((real_videos / "shot_boundaries.json").read_text())
    return {k: v for k, v in gt.items() if not k.startswith("_")}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server process on 127.0.0.1 (see tests/s3server.py), for the whole session."""
    pytest.importorskip("moto")
    from tests.s3server import s3_server as start

    with start(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server with its AWS_* variables set in this process (and inherited by subprocesses)."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server


@pytest.fixture(scope="session")
def real_shape_models(tmp_path_factory) -> dict:
    """The `default` preset's real-shape models in one hub-layout weights folder (tests/real_shapes.py),
    built once per session and shared by the in-process and the job-level real-shape tests (~6 GB of
    random weights in a temporary folder; $TUBELET_REAL_SHAPES_MODELS keeps them there across runs)."""
    import time

    from tests import real_shapes

    keep = os.environ.get("TUBELET_REAL_SHAPES_MODELS")
    root = Path(keep) if keep else tmp_path_factory.mktemp("real-shapes")
    t = time.perf_counter()
    dirs = real_shapes.build_all(root)
    print(f"[real-shapes] models ready in {time.perf_counter() - t:.1f} s ({root})")
    return dirs


@pytest.fixture
def local_ray(monkeypatch, tmp_path_factory):
    """A job in this process starts its own fresh local Ray (no RAY_ADDRESS), with a private
    model cache that its workers inherit; shut down after the test."""
    monkeypatch.setenv("TUBELET_CACHE", str(tmp_path_factory.mktemp("tubelet-cache")))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    import ray

    ray.shutdown()
